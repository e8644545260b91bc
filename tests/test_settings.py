"""Settings in both modes, read in fresh processes (settings are read once, at import)."""

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

REPO = Path(__file__).resolve().parent.parent
MODE_VARIABLES = ("DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY", "ALLOWED_HOSTS")
PRINT_SETTINGS = """
import hashlib, json, django
django.setup()
from django.conf import settings
db = settings.DATABASES["default"]
print(json.dumps({
    "db_engine": db["ENGINE"], "db_name": str(db["NAME"]), "db_options": db.get("OPTIONS", {}),
    "conn_max_age": db.get("CONN_MAX_AGE"), "layer": settings.CHANNEL_LAYERS["default"],
    "debug": settings.DEBUG, "allowed_hosts": settings.ALLOWED_HOSTS,
    "secret_key_length": len(settings.SECRET_KEY),
    "secret_key_sha": hashlib.sha256(settings.SECRET_KEY.encode()).hexdigest(),
    "output_ttl_days": settings.OUTPUT_TTL_DAYS,
    "keepalive": settings.STREAM_KEEPALIVE_SECONDS,
    "stream_max": settings.STREAM_MAX_CONNECTIONS_PER_TENANT,
}, default=repr))
"""
# Waiting for a fresh interpreter to import Django and our settings.
SUBPROCESS_TIMEOUT_SECONDS = 60


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in MODE_VARIABLES}
    clean.pop("DEPLOY_SECURE", None)
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env={
            **clean,
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "TAILGATE_DATA_DIR": str(tmp_path),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_SECONDS,
    )


def _settings(tmp_path: Path, **env: str) -> dict:
    done = _run(["-c", PRINT_SETTINGS], tmp_path, **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_it_runs_embedded_without_configuration(tmp_path):
    resolved = _settings(tmp_path)

    assert resolved["db_engine"] == "django.db.backends.sqlite3"
    assert resolved["db_name"] == str(tmp_path / "tailgate.sqlite3")
    assert "journal_mode=WAL" in resolved["db_options"]["init_command"]
    assert resolved["db_options"]["transaction_mode"] == "IMMEDIATE"
    assert resolved["layer"]["BACKEND"] == "channels.layers.InMemoryChannelLayer"
    assert resolved["debug"] is False
    assert resolved["allowed_hosts"] == ["127.0.0.1", "localhost", "[::1]"]
    assert (resolved["output_ttl_days"], resolved["keepalive"], resolved["stream_max"]) == (
        7,
        15,
        10,
    )


def test_it_keeps_a_generated_secret_key_between_starts(tmp_path):
    first = _settings(tmp_path)
    key_file = tmp_path / "secret-key"

    assert first["secret_key_length"] >= 50
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert _settings(tmp_path)["secret_key_sha"] == first["secret_key_sha"]
    assert _settings(tmp_path, SECRET_KEY="x" * 60)["secret_key_sha"] != first["secret_key_sha"]


def test_it_runs_clustered_with_postgres_and_redis(tmp_path):
    resolved = _settings(
        tmp_path,
        DATABASE_URL="postgres://tailgate:pw@db.example:5432/tailgate",
        REDIS_URL="redis://redis.example:6379/2",
    )

    assert resolved["db_engine"] == "django.db.backends.postgresql"
    assert resolved["db_name"] == "tailgate"
    assert resolved["conn_max_age"] == 60
    layer = resolved["layer"]
    assert layer["BACKEND"] == "channels_redis.core.RedisChannelLayer"
    (host,) = layer["CONFIG"]["hosts"]
    assert host["address"] == "redis://redis.example:6379/2"
    # Above channels-redis's 5 s BZPOPMIN block, or an idle receive times out (settings.py).
    assert host["socket_timeout"] > 5
    assert host["retry"].startswith("<redis.asyncio.retry.Retry")
    assert layer["CONFIG"]["capacity"] == 1000
    assert layer["CONFIG"]["expiry"] == 60
    assert layer["CONFIG"]["group_expiry"] == 300
    assert not (tmp_path / "tailgate.sqlite3").exists()


def test_it_reads_its_settings_from_the_environment(tmp_path):
    resolved = _settings(
        tmp_path,
        DEBUG="1",
        ALLOWED_HOSTS="a.example,b.example",
        OUTPUT_TTL_DAYS="3",
        STREAM_KEEPALIVE_SECONDS="5",
        STREAM_MAX_CONNECTIONS_PER_TENANT="4",
    )

    assert resolved["debug"] is True
    assert resolved["allowed_hosts"] == ["a.example", "b.example"]
    assert (resolved["output_ttl_days"], resolved["keepalive"], resolved["stream_max"]) == (3, 5, 4)


def test_it_still_reads_the_milestone_one_names_of_the_stream_limits(tmp_path):
    assert _settings(tmp_path, SSE_MAX_CONNECTIONS_PER_TENANT="7")["stream_max"] == 7
    both = {"SSE_MAX_CONNECTIONS_PER_TENANT": "7", "STREAM_MAX_CONNECTIONS_PER_TENANT": "3"}
    assert _settings(tmp_path, **both)["stream_max"] == 3  # the new name wins


def test_it_passes_the_deployment_checks(tmp_path):
    done = _run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        tmp_path,
        DEPLOY_SECURE="1",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="tailgate.example.com",
        DEBUG="0",
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout
    assert "WARNINGS" not in done.stdout + done.stderr


def test_it_fails_the_deployment_checks_without_the_production_settings(tmp_path):
    # Proves the check above can fail: the embedded defaults are not a deployment.
    done = _run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], tmp_path)

    assert done.returncode != 0
    assert "security.W004" in done.stderr + done.stdout


def test_it_opens_the_embedded_database_in_wal_mode(tmp_path):
    done = _run(
        [
            "-c",
            "import django; django.setup(); from django.db import connection\n"
            "with connection.cursor() as c:\n"
            "    c.execute('PRAGMA journal_mode'); print(c.fetchone()[0])\n"
            "    c.execute('PRAGMA synchronous'); print(c.fetchone()[0])",
        ],
        tmp_path,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["wal", "1"]  # synchronous 1 = NORMAL


def test_it_runs_the_tests_on_wal_too(db):
    if connection.vendor != "sqlite":
        pytest.skip("the test database is PostgreSQL in cluster mode")
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"
