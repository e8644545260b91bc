"""Shared set-up for benchmarks that run against PostgreSQL in-process.

A benchmark gets its own database (never the one DATABASE_URL names), created with psycopg
when missing and migrated with `call_command('migrate')`; Django is configured for it before
`django.setup()`, since settings read DATABASE_URL once at import.
"""

import os
import statistics
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test"


def database_url(name: str, base: str | None = None) -> str:
    """DATABASE_URL (or the default) with its database name replaced by `name`."""
    parts = urlsplit(base or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL)
    if parts.scheme not in ("postgres", "postgresql", "pgsql"):
        raise SystemExit(f"this benchmark needs PostgreSQL, DATABASE_URL is {parts.scheme}://…")
    return urlunsplit(parts._replace(path=f"/{name}"))


def ensure_database(url: str) -> None:
    """Create the database `url` names unless it exists (through the `postgres` database)."""
    import psycopg

    name = urlsplit(url).path.lstrip("/")
    admin = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def setup_django(url: str) -> None:
    """Point Django at `url`, start it, migrate, and register the shipped actions."""
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    with open(os.devnull, "w") as quiet:
        call_command("migrate", verbosity=0, stdout=quiet)
        call_command("register_actions", verbosity=0, stdout=quiet)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def figure(label: str, value: float, unit: str = "", width: int = 44) -> None:
    """One aligned result line, flushed (the benchmark's output is read as it runs)."""
    print(f"  {label:<{width}} {value:>14,.2f} {unit}".rstrip(), flush=True)
