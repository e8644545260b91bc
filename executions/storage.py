"""Writing output batches: the one hot write path, in raw SQL because the ORM's per-object
cost (model instances, per-row parameter binding) is most of the time at 100,000 lines/s.
"""

import contextlib
from datetime import datetime

from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    connection,
    transaction,
)

from executions.models import Execution, OutputChunk
from executions.services import advance_last_seq

CHUNK_TABLE = OutputChunk._meta.db_table
_COLUMNS = "(execution_id, seq, output_type, data, timestamp)"
# COPY text format: backslash, newline, carriage return and tab must be escaped.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def copy_payload(execution_id: str, rows: list[tuple[int, str, str, datetime]]) -> str:
    """The rows as PostgreSQL COPY text (used by the writer and by the benchmark's ceiling)."""
    stamps: dict[datetime, str] = {}  # the lines of one read share one timestamp
    for *_, ts in rows:
        if ts not in stamps:
            stamps[ts] = ts.isoformat()
    return "".join(
        f"{execution_id}\t{seq}\t{kind}\t{data.translate(_COPY_ESCAPES)}\t{stamps[ts]}\n"
        for seq, kind, data, ts in rows
    )


def insert_chunks(execution_id: str, rows: list[tuple[int, str, str, datetime]]) -> None:
    """Insert rows in the current transaction: COPY on PostgreSQL, executemany elsewhere."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Django wraps execute() and the fetches, not psycopg's copy(): without the
            # wrapper a connection killed during COPY raised psycopg's own OperationalError,
            # which the writer did not know as transient, and the run failed.
            copy_sql = f"COPY {CHUNK_TABLE} {_COLUMNS} FROM STDIN"
            with connection.wrap_database_errors, cursor.copy(copy_sql) as copy:
                copy.write(copy_payload(execution_id, rows))
        else:
            adapt = connection.ops.adapt_datetimefield_value
            cursor.executemany(
                f"INSERT INTO {CHUNK_TABLE} {_COLUMNS} VALUES (%s, %s, %s, %s, %s)",
                [(execution_id, seq, kind, data, adapt(ts)) for seq, kind, data, ts in rows],
            )


def store_batch(
    execution_id: str, rows: list[tuple[int, str, str, datetime]], *, retry: bool = False
) -> None:
    """Store one batch and advance the execution's last_seq, in one transaction.

    `retry`: an earlier attempt failed, perhaps after its commit (the answer was lost with
    the connection); last_seq moves in the same transaction as the rows, so it says whether
    they are already there. A failed attempt closes this thread's connection, so the next
    one starts on a fresh connection rather than a broken one.
    """
    try:
        with transaction.atomic():
            if retry and _stored_up_to(execution_id) >= rows[-1][0]:
                return
            insert_chunks(execution_id, rows)
            advance_last_seq(execution_id, rows[-1][0], beat=True)
    except DatabaseError:
        with contextlib.suppress(DatabaseError):
            connection.close()
        raise


def _stored_up_to(execution_id: str) -> int:
    return Execution.objects.filter(pk=execution_id).values_list("last_seq", flat=True).get()


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying: the connection or the server, not the data.

    OperationalError covers a closed connection, a server restarting or refusing
    connections, and SQLite's "database is locked"; InterfaceError a connection already closed.
    A DataError or an IntegrityError would fail again the same way.
    """
    return isinstance(exc, (OperationalError, InterfaceError))
