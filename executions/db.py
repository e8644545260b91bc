"""Per-connection database set-up, and closing the connections of a pool's threads."""

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

from django.db import connections
from django.db.backends.signals import connection_created
from django.dispatch import receiver


@receiver(connection_created)
def _tune_sqlite(sender, connection, **kwargs) -> None:
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            # A larger page cache and in-memory temp tables keep ingest off the disk.
            cursor.execute("PRAGMA cache_size=-65536")
            cursor.execute("PRAGMA temp_store=MEMORY")


def close_thread_connections(executor: ThreadPoolExecutor, threads: int) -> None:
    """Close the database connection of every thread of `executor` (the runner's pools, the
    streams' pool).

    Connections are per thread; a barrier makes each of the `threads` tasks land on its own
    thread, so none is left open (PostgreSQL would refuse to drop a test database otherwise).
    """
    barrier = threading.Barrier(threads)

    def close() -> None:
        connections.close_all()
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=5)

    for future in [executor.submit(close) for _ in range(threads)]:
        future.result()
