"""Purge benchmark: does `purge_output` leave live ingest alone?

    .venv/bin/python bench/purge.py [--chunks 2000000] [--lines 100000] [--rounds 2] [--batch-size 10000]

Cluster mode, PostgreSQL only, in its own database `tailgate_bench` (created if missing;
DATABASE_URL names the server, default postgres://postgres@127.0.0.1:5432/test). Each round:

  1. seed `--chunks` output rows of executions that finished 30 days ago (INSERT … SELECT
     generate_series), then VACUUM ANALYZE, and run one ingest to warm up;
  2. start `manage.py purge_output --days 7` as its own process (as cron would) on a pty, so
     it reports each batch, and wait for its first batch;
  3. until the purge ends, measure pairs: ingest with the purge paused (SIGSTOP), then ingest
     with it running (SIGCONT). Ingest = one execution of `core.local` running
     `seq 1 --lines` through the real RunnerService in this process; rate = lines stored /
     run time. A pair counts only if the purge was still deleting when its second run ended.
     Pairing runs seconds apart keeps other load on the machine out of the ratio.
  4. purge rows/s = rows / (its pass time - paused time).

Prints medians over all rounds: purge rows/s, ingest alone, ingest during the purge, and
the ratio of the medians (target ≥ 0.80), with the median of the per-pair ratios.
"""

import argparse
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (
    ROOT,
    database_url,
    ensure_database,
    figure,
    median,
    run_seq,
    setup_django,
)

BENCH_DATABASE = "tailgate_bench"
SEEDED_AGE = timedelta(days=30)
SEEDED_LINES_PER_EXECUTION = 1000
TARGET_RATIO = 0.80
SUMMARY = re.compile(r"deleted ([\d,]+) output rows in ([\d,]+) batches.* in ([\d.]+) s,")


def seed(chunks: int) -> None:
    """Empty the bench tables, then insert `chunks` rows of old finished executions."""
    from django.db import connection
    from django.utils import timezone

    from executions.models import Execution, ExecutionStatus, OutputChunk, Tenant

    tables = [OutputChunk._meta.db_table, Execution._meta.db_table]
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)} CASCADE")
    finished = timezone.now() - SEEDED_AGE
    executions = Execution.objects.bulk_create(
        Execution(
            action_ref="core.local",
            runner_type="local-shell-cmd",
            tenant=Tenant.default(),
            status=ExecutionStatus.SUCCEEDED,
            started_at=finished,
            finished_at=finished,
            last_seq=SEEDED_LINES_PER_EXECUTION,
        )
        for _ in range(chunks // SEEDED_LINES_PER_EXECUTION)
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"""INSERT INTO {tables[0]} (execution_id, seq, output_type, data, timestamp)
                SELECT e.id, s, 'stdout', 'seeded output line ' || s || E' of a past run\\n', %s
                FROM unnest(%s::text[]) AS e(id), generate_series(1, %s) AS s""",
            # Sorted: rows arrive in (execution, seq) order, the unique index's order.
            [finished, sorted(e.id for e in executions), SEEDED_LINES_PER_EXECUTION],
        )
        for table in tables:
            cursor.execute(f"VACUUM ANALYZE {table}")


def ingest(lines: int) -> float:
    """Run `seq 1 lines` through the runner; lines stored per second."""
    elapsed, _done = run_seq(lines)
    return lines / elapsed


class Purge:
    """`manage.py purge_output` in its own process, on a pty so it reports every batch."""

    def __init__(self, url: str, batch_size: int, pause_ratio: float):
        controller, terminal = pty.openpty()
        env = {**os.environ, "DATABASE_URL": url}
        command = ["manage.py", "purge_output", "--days", "7", "--batch-size", str(batch_size)]
        command += ["--pause-ratio", str(pause_ratio)]
        self.process = subprocess.Popen(
            [sys.executable, *command],
            cwd=ROOT,
            env=env,
            stdout=terminal,
            stderr=terminal,
        )
        os.close(terminal)
        self.lines: list[str] = []
        self.first_batch = threading.Event()
        self.reader = threading.Thread(target=self._read, args=(controller,), daemon=True)
        self.reader.start()

    def _read(self, controller: int) -> None:
        pending = b""
        while True:
            try:
                data = os.read(controller, 65536)
            except OSError:  # the pty closes when the process ends
                break
            if not data:
                break
            pending += data
            *whole, pending = pending.split(b"\n")
            for line in whole:
                self.lines.append(line.decode().strip())
                if "batch" in line.decode():
                    self.first_batch.set()
        os.close(controller)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def result(self) -> tuple[int, int, float]:
        """Rows, batches and seconds from the summary line."""
        self.process.wait()
        self.reader.join(timeout=10)
        for line in reversed(self.lines):
            if match := SUMMARY.search(line):
                rows, batches, seconds = match.groups()
                return int(rows.replace(",", "")), int(batches.replace(",", "")), float(seconds)
        raise SystemExit("purge_output printed no summary:\n" + "\n".join(self.lines[-20:]))


def round_(url: str, args) -> dict[str, list[float]]:
    """Seed, then pair ingest runs while the purge is paused (SIGSTOP) and running."""
    found: dict[str, list[float]] = {"alone": [], "during": [], "purge": []}
    started = time.perf_counter()
    seed(args.chunks)
    print(f"round: seeded {args.chunks:,} rows in {time.perf_counter() - started:.1f} s")
    ingest(args.lines)  # warm-up: the first run after seeding is slow (cold caches, autovacuum)
    purge = Purge(url, args.batch_size, args.pause_ratio)
    if not purge.first_batch.wait(timeout=60):
        raise SystemExit("purge_output did not start deleting:\n" + "\n".join(purge.lines))
    paused = 0.0
    while purge.running:
        stopped_at = time.perf_counter()
        purge.process.send_signal(signal.SIGSTOP)
        alone = ingest(args.lines)
        purge.process.send_signal(signal.SIGCONT)
        paused += time.perf_counter() - stopped_at
        during = ingest(args.lines)
        # Counted only if the purge was deleting from start to end of the run.
        counted = purge.running
        if counted:
            found["alone"].append(alone)
            found["during"].append(during)
        print(
            f"  ingest alone {alone:>9,.0f} lines/s, during purge {during:>9,.0f} lines/s"
            f"{'' if counted else ' (purge ended mid-run: not counted)'}",
            flush=True,
        )
    rows, batches, seconds = purge.result()
    rate = rows / (seconds - paused)
    found["purge"].append(rate)
    print(f"  purge {rows:,} rows in {batches} batches, {rate:,.0f} rows/s (pauses excluded)")
    if rows != args.chunks:
        raise SystemExit(f"purge deleted {rows:,} rows, {args.chunks:,} were seeded")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=2_000_000)
    # 100,000 lines take 2-3 s: several pairs fit in one purge of 2,000,000 rows.
    parser.add_argument("--lines", type=int, default=100_000, help="lines per ingest run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--pause-ratio", type=float, default=1.0)
    args = parser.parse_args()

    url = database_url(BENCH_DATABASE)
    ensure_database(url)
    setup_django(url)
    from django.conf import settings

    layer = "Redis" if settings.REDIS_URL else "in-memory"
    print(f"purge benchmark: database {BENCH_DATABASE}, channel layer {layer}")
    began = time.perf_counter()
    found: dict[str, list[float]] = {"alone": [], "during": [], "purge": []}
    for _ in range(args.rounds):
        for key, values in round_(url, args).items():
            found[key].extend(values)
    if not found["during"]:
        raise SystemExit("no ingest run fitted inside a purge: raise --chunks or lower --lines")

    alone, during = median(found["alone"]), median(found["during"])
    ratio = during / alone
    pairs = median([d / a for a, d in zip(found["alone"], found["during"], strict=True)])
    print(
        f"== purge {args.chunks:,} rows (batch {args.batch_size:,}) while ingesting "
        f"`seq 1 {args.lines}`: medians of {len(found['purge'])} purges, "
        f"{len(found['during'])} ingest pairs "
        f"({time.perf_counter() - began:.0f} s in all)"
    )
    figure("purge", median(found["purge"]), "rows/s")
    figure("ingest alone", alone, "lines/s")
    figure("ingest during purge", during, "lines/s")
    figure(f"ratio (target >= {TARGET_RATIO:.2f})", ratio, "OK" if ratio >= TARGET_RATIO else "LOW")
    figure("median of per-pair ratios", pairs)


if __name__ == "__main__":
    main()
