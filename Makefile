# Two commands do all the set-up: `make run` and `make test`. Both build .venv themselves.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.12 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8000

.PHONY: run test bench lint migrate check clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 12), f"Python 3.12 needed, found {sys.version.split()[0]}"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

migrate: $(STAMP)
	$(BIN)/python manage.py migrate --noinput

run: $(STAMP)
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py register_actions
	$(BIN)/python manage.py demo_user
	$(BIN)/python manage.py serve --port $(PORT)

# The suite runs in embedded mode always, then again in cluster mode when DATABASE_URL and
# REDIS_URL are set (REQUIRE_SERVICES=1: missing services fail the run instead of skipping).
test: $(STAMP)
	env -u DATABASE_URL -u REDIS_URL $(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@echo "== embedded mode: SQLite + in-memory channel layer"
	env -u DATABASE_URL -u REDIS_URL -u REQUIRE_SERVICES $(BIN)/python -m pytest $(PYTEST_ARGS)
	@if [ -n "$$DATABASE_URL" ] && [ -n "$$REDIS_URL" ]; then \
	  echo "== cluster mode: PostgreSQL + Redis"; \
	  $(BIN)/python -m pytest $(PYTEST_ARGS); \
	elif [ "$$REQUIRE_SERVICES" = 1 ]; then \
	  echo "REQUIRE_SERVICES=1 but DATABASE_URL / REDIS_URL are not set"; exit 1; \
	else \
	  echo "== cluster mode not run: set DATABASE_URL and REDIS_URL to run it"; \
	fi

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/purge.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) *.egg-info
