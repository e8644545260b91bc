"""Database reads for streams: a small, bounded pool of threads, so of connections.

An open stream holds no database connection while it waits; it borrows one of these threads
for each replay page, backfill or re-check. However many clients are connected, a web
process uses at most STREAM_DB_THREADS connections for streaming; when all are busy, reads
queue for a thread (load waits, it never fails).

Each thread keeps its connection (CONN_MAX_AGE) and, unlike `database_sync_to_async`, does
not re-validate it before every read: with CONN_HEALTH_CHECKS that costs one more query per
read, the hot path of thousands of streams. A connection that failed is closed instead (the
next read on that thread reconnects), and one past its age is replaced between reads.
"""

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.db import DatabaseError, connection

from executions.db import close_thread_connections

# Reads are short (one page of rows, or one row): a few threads keep up with many streams,
# and bound the connections streams take from PostgreSQL's max_connections.
STREAM_DB_THREADS = 4

_executor = ThreadPoolExecutor(STREAM_DB_THREADS, thread_name_prefix="tailgate-stream-db")


def _call(fn, *args: Any, **kwargs: Any) -> Any:
    if connection.close_at is not None and time.monotonic() >= connection.close_at:
        connection.close()  # past CONN_MAX_AGE: the next query opens a fresh one
    try:
        return fn(*args, **kwargs)
    except DatabaseError:
        connection.close()  # it may be broken (the server restarted): reconnect next time
        raise


async def run_db(fn, *args: Any, **kwargs: Any) -> Any:
    """Run `fn` in the stream pool."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor, functools.partial(_call, fn, *args, **kwargs))


def close_connections() -> None:
    """Close every pool thread's connection (tests call it before the test database goes)."""
    close_thread_connections(_executor, STREAM_DB_THREADS)
