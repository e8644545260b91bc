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


def run_seq(lines: int):
    """Run `seq 1 lines` through the real runner in a fresh event loop: (seconds, execution).

    A line the process was slow to finish may be stored as two chunks (a partial flush), so
    the execution can have more chunks than lines, never fewer.
    """
    import asyncio
    import time

    from executions import services
    from executions.models import Action
    from executions.runner_service import RunnerService

    action = Action.objects.get(ref="core.local")

    async def run():
        service = RunnerService(concurrency=1)
        execution = await service.control_db(
            services.create_execution, action, {"cmd": f"seq 1 {lines}"}
        )
        claimed = await service.control_db(services.claim, execution.id, service.runner_id)
        await service.control_db(lambda: claimed.action)
        started = time.perf_counter()
        done = await service.execute(claimed, asyncio.Event())
        elapsed = time.perf_counter() - started
        await asyncio.get_running_loop().run_in_executor(None, service.close)
        if done is None or done.status != "succeeded" or done.last_seq < lines:
            raise SystemExit(f"seq run failed: {done and done.status}, {done and done.last_seq}")
        return elapsed, done

    return asyncio.run(run())
