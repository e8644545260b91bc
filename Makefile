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

# Checks first (migrations, ruff, mypy). The suite runs in embedded mode always, and in cluster
# mode too when DATABASE_URL and REDIS_URL are set (REQUIRE_SERVICES=1: missing services fail the
# run instead of skipping), both passes side by side (.ci/passes; SERIAL=1 for one after the
# other). docs/testing.md says why.
test: $(STAMP)
	env -u DATABASE_URL -u REDIS_URL $(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	.ci/passes

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/purge.py
	$(BIN)/python bench/fanout.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) *.egg-info

# Fault tests alone (private PostgreSQL and Redis restarted, connections and runners killed);
# they need cluster mode (DATABASE_URL and REDIS_URL). `make test` runs them too.
.PHONY: test-faults
test-faults: $(STAMP)
	@if [ -z "$$DATABASE_URL" ] || [ -z "$$REDIS_URL" ]; then \
	  echo "make test-faults needs DATABASE_URL and REDIS_URL (cluster mode)"; exit 1; \
	fi
	$(BIN)/python -m pytest -m faults $(PYTEST_ARGS)

# The long soak (cluster mode): 100 hostile executions, 100 clients dropping and resuming for
# SOAK_SECONDS (the suite's own soak is 45 s).
SOAK_SECONDS ?= 300
.PHONY: soak
soak: $(STAMP)
	@if [ -z "$$DATABASE_URL" ] || [ -z "$$REDIS_URL" ]; then \
	  echo "make soak needs DATABASE_URL and REDIS_URL (cluster mode)"; exit 1; \
	fi
	TAILGATE_SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/python -m pytest $(PYTEST_ARGS) \
	  "tests/test_faults_streams.py::test_it_keeps_every_reconnecting_client_exact_through_a_soak"
