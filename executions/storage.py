"""Writing output batches: the one hot write path, in raw SQL because the ORM's per-object
cost (model instances, per-row parameter binding) is most of the time at 100,000 lines/s.
"""

from datetime import datetime

from django.db import connection, transaction

from executions.models import OutputChunk
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
            with cursor.copy(f"COPY {CHUNK_TABLE} {_COLUMNS} FROM STDIN") as copy:
                copy.write(copy_payload(execution_id, rows))
        else:
            adapt = connection.ops.adapt_datetimefield_value
            cursor.executemany(
                f"INSERT INTO {CHUNK_TABLE} {_COLUMNS} VALUES (%s, %s, %s, %s, %s)",
                [(execution_id, seq, kind, data, adapt(ts)) for seq, kind, data, ts in rows],
            )


def store_batch(execution_id: str, rows: list[tuple[int, str, str, datetime]]) -> None:
    """Store one batch and advance the execution's last_seq, in one transaction."""
    with transaction.atomic():
        insert_chunks(execution_id, rows)
        advance_last_seq(execution_id, rows[-1][0])
