"""Ingest benchmark: how fast one execution's output reaches the database.

    .venv/bin/python bench/ingest.py [--lines 1000000] [--naive-lines 20000] [--modes cluster,embedded]

For each mode, in a fresh process (settings are read at start):
  pipeline  one execution running `seq 1 N` through the real runner (capture, masking,
            batching, COPY/executemany, publish after commit): lines stored per second;
  ceiling   the same N rows written raw into the same table in one COPY (PostgreSQL) or one
            executemany (SQLite), no pipeline: the most the database takes;
  naive     one INSERT + commit + group_send per line (StackStorm's design), on fewer lines;
and the runner process's peak RSS after the pipeline run. Cluster mode uses its own
database `tailgate_bench_ingest` (created if missing) and Redis; embedded mode a temporary
SQLite file and the in-memory layer.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import database_url, ensure_database, run_seq  # noqa: E402

BENCH_DB = "tailgate_bench_ingest"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def measure(mode: str, lines: int, naive_lines: int) -> dict:
    """Runs inside the child process, with the mode's environment already set."""
    import asyncio
    import resource

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("register_actions", verbosity=0, stdout=open(os.devnull, "w"))  # noqa: SIM115
    from datetime import UTC, datetime

    from asgiref.sync import sync_to_async
    from django.db import connection, transaction

    from executions import publish, services, storage
    from executions.models import Action, Execution, OutputChunk

    action = Action.objects.get(ref="core.local")
    # The bench database is ours alone: start each run from empty tables.
    Execution.objects.all().delete()

    elapsed, _done = run_seq(lines)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # Ceiling: the same rows, written raw in one statement.
    ceiling_execution = services.create_execution(action, {"cmd": "true"})
    stamp = datetime.now(UTC)
    rows = [(i, "stdout", f"{i}\n", stamp) for i in range(1, lines + 1)]
    started = time.perf_counter()
    with transaction.atomic():
        storage.insert_chunks(ceiling_execution.id, rows)
    ceiling_elapsed = time.perf_counter() - started
    del rows

    # Naive: one INSERT + commit + group_send per line, each awaited in turn, on one event
    # loop with one layer connection (what a straightforward async runner would do).
    naive_execution = services.create_execution(action, {"cmd": "true"})
    group = publish.execution_group(naive_execution.id)

    def insert_one(i: int) -> str:
        with transaction.atomic():
            return OutputChunk.objects.create(
                execution=naive_execution,
                seq=i,
                output_type="stdout",
                data=f"{i}\n",
                timestamp=datetime.now(UTC),
            ).data

    async def run_naive() -> float:
        insert = sync_to_async(insert_one, thread_sensitive=True)
        started = time.perf_counter()
        for i in range(1, naive_lines + 1):
            data = await insert(i)
            await publish.agroup_send(
                group,
                {
                    "type": "output.batch",
                    "execution_id": naive_execution.id,
                    "first_seq": i,
                    "last_seq": i,
                    "chunks": [{"seq": i, "data": data}],
                },
            )
        return time.perf_counter() - started

    naive_elapsed = asyncio.run(_in_loop(run_naive))

    Execution.objects.filter(
        pk__in=[ceiling_execution.id, naive_execution.id]
    ).delete()  # keep the bench database small between runs
    return {
        "mode": mode,
        "vendor": connection.vendor,
        "lines": lines,
        "pipeline_seconds": elapsed,
        "pipeline_lines_per_s": lines / elapsed,
        "ceiling_lines_per_s": lines / ceiling_elapsed,
        "naive_lines": naive_lines,
        "naive_lines_per_s": naive_lines / naive_elapsed,
        "peak_rss_mb": peak_rss_mb,
    }


async def _in_loop(factory):
    return await factory()


def run_mode(mode: str, lines: int, naive_lines: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    scratch = tempfile.mkdtemp(prefix="tailgate-bench-")
    env["TAILGATE_DATA_DIR"] = scratch
    if mode == "cluster":
        env["DATABASE_URL"] = database_url(BENCH_DB)
        ensure_database(env["DATABASE_URL"])
        env["REDIS_URL"] = REDIS_URL
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--lines",
            str(lines),
            "--naive-lines",
            str(naive_lines),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--naive-lines", type=int, default=20_000)
    parser.add_argument("--modes", default="cluster,embedded")
    parser.add_argument("--runs", type=int, default=1, help="repeat and report medians")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.lines, args.naive_lines)))
        return
    import statistics

    for mode in args.modes.split(","):
        runs = [run_mode(mode, args.lines, args.naive_lines) for _ in range(args.runs)]

        def med(key, runs=runs):
            return statistics.median(r[key] for r in runs)

        pipeline, ceiling, naive = (
            med("pipeline_lines_per_s"),
            med("ceiling_lines_per_s"),
            med("naive_lines_per_s"),
        )
        print(
            f"== ingest, {mode} mode ({runs[0]['vendor']}), {args.lines:,} lines, "
            f"median of {len(runs)} run(s)"
        )
        print(
            f"  pipeline (runner → DB, published)   {pipeline:12,.0f} lines/s"
            f"   ({med('pipeline_seconds'):.2f} s)"
        )
        print(f"  ceiling  (raw write, same rows)     {ceiling:12,.0f} lines/s")
        print(
            f"  naive    (INSERT+commit+send/line)  {naive:12,.0f} lines/s"
            f"   ({args.naive_lines:,} lines)"
        )
        print(f"  pipeline / ceiling                  {pipeline / ceiling:12.2f}")
        print(f"  pipeline / naive                    {pipeline / naive:12.1f} x")
        print(f"  runner peak RSS                     {med('peak_rss_mb'):12.0f} MB")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
