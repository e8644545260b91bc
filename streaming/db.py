"""Database reads for streams: a small, bounded pool of threads, so of connections.

An open stream holds no database connection while it waits; it borrows one of these threads
for each replay page, backfill or re-check. However many clients are connected, a web
process uses at most STREAM_DB_THREADS connections for streaming.
"""

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from channels.db import database_sync_to_async

from executions.runner_service import close_thread_connections

# Reads are short (one page of rows, or one row): a few threads keep up with many streams,
# and bound the connections streams take from PostgreSQL's max_connections.
STREAM_DB_THREADS = 4

_executor = ThreadPoolExecutor(STREAM_DB_THREADS, thread_name_prefix="tailgate-stream-db")


async def run_db(fn, *args: Any, **kwargs: Any) -> Any:
    """Run `fn` in the stream pool (old connections closed around the call, as Channels does)."""
    call = database_sync_to_async(fn, thread_sensitive=False, executor=_executor)
    return await call(*args, **kwargs)


def close_connections() -> None:
    """Close every pool thread's connection (tests call it before the test database goes)."""
    close_thread_connections(_executor, STREAM_DB_THREADS)
