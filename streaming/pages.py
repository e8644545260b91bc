"""Replay's fast path: pages of the log read as raw rows and encoded in the database thread.

    SSE / plain-text cursor ─▶ shared_rows(..., kind) ─▶ in a stream-pool thread
      (streaming/db.py): read_rows, one raw SELECT of the columns that format needs (plain
      text: `seq` and `data` only, filtered by type in SQL) ─▶ the page's bytes in one loop
      ─▶ ChunkPage (bytes, rows, last seq), shared by every stream of the process that
      reads the same page ─▶ one write per page on the event loop

Per-row ORM results, payload dicts, `Frame` objects and one encoding call per frame cost
about four times what the database read itself costs (62k lines/s against a bare SELECT's
374k on the 2-core bench machine), so a replay to an SSE or plain-text client skips them.
The bytes are made where the rows are read: encoding on the event loop made the loop and
the reading thread take turns at the GIL for every page. PostgreSQL could write the events
itself (`to_json(data)`, `to_char` for the timestamp, `string_agg`), but on the 2-core bench
machine it did so at ~190k rows/s per backend, against ~375k for this raw read and loop
(2026-12-01). Live batches, WebSocket streams and family streams keep the frame path. The
SSE bytes are exactly what `sse.encode` writes for the same chunk (tests/test_replay_pages.py
compares them on hostile text).
"""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.db import connection

from executions.models import OutputChunk
from streaming import sse
from streaming.frames import OUTPUT_EVENT
from streaming.replay import OutputState

# Rows per replay page on the fast path. A page is written at once, so it bounds what a
# stalled client can hold beyond STREAM_SEND_BUFFER_BYTES (~300 KiB of SSE for 1,000 bench
# lines), and it amortises the query and the hop to the database thread.
FAST_PAGE_ROWS = 1000

# The format a page is read and encoded for (also the hub's name for the format's encoding,
# streaming/direct.py).
SSE, TEXT = "sse", "text"

_json_string = sse.json_string


# The timestamp as `datetime.isoformat()` writes it for an aware UTC time, from its text
# (building a datetime per row and formatting it again was half of replay's time; the text
# is what the driver receives anyway). PostgreSQL writes a UTC session's timestamptz as
# "2026-11-30 21:34:27.64019+00" (fraction without trailing zeros, none when zero); SQLite
# returns what Django stored, `str()` of the naive UTC datetime.
_STAMP_SQL = {"postgresql": '"timestamp"::text', "sqlite": 'CAST("timestamp" AS TEXT)'}
UTC_SUFFIX = "+00"


def _postgresql_stamp(text: str) -> str:
    if not text.endswith(UTC_SUFFIX):  # a session in another time zone: the slow way
        return _datetime_stamp(datetime.fromisoformat(text))
    clock = text[11:-3]
    seconds, dot, fraction = clock.partition(".")
    fraction = "." + fraction.ljust(6, "0") if dot else ""
    return f"{text[:10]}T{seconds}{fraction}+00:00"


def _sqlite_stamp(text: str) -> str:
    return text.replace(" ", "T", 1) + "+00:00"


def _datetime_stamp(stamp: datetime) -> str:
    # Another database: its driver's datetime (naive means UTC, as the ORM reads it).
    return (
        (stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC))
        .astimezone(UTC)
        .isoformat()
    )


_STAMP_TEXT: dict[str, Callable[[Any], str]] = {
    "postgresql": _postgresql_stamp,
    "sqlite": _sqlite_stamp,
}


def stamp_text() -> Callable[[Any], str]:
    """How this connection's timestamps (as `read_rows` reads them) become isoformat text."""
    return _STAMP_TEXT.get(connection.vendor, _datetime_stamp)


def _sql(kind: str, typed: bool) -> str:
    table = OutputChunk._meta.db_table
    stamp = _STAMP_SQL.get(connection.vendor, '"timestamp"')
    columns = "seq, data" if kind == TEXT else f"seq, output_type, data, {stamp}"
    where = "execution_id = %s AND seq > %s AND seq <= %s"
    if typed:
        where += " AND output_type = %s"
    return f"SELECT {columns} FROM {table} WHERE {where} ORDER BY seq LIMIT %s"


def read_rows(
    execution_id: str, after: int, upto: int, output_type: str | None, kind: str
) -> list[tuple[Any, ...]]:
    """One page of raw rows with `after < seq <= upto` (of one type, if given), in seq order:
    (seq, data) for TEXT; (seq, output_type, data, timestamp) for SSE, the timestamp as the
    database returns it (`stamp_text()` makes it isoformat's).

    A raw cursor rather than `values_list`: the ORM's per-row work is most of replay's cost.
    """
    params: list[Any] = [execution_id, after, upto]
    if output_type:
        params.append(output_type)
    params.append(FAST_PAGE_ROWS)
    with connection.cursor() as cursor:
        cursor.execute(_sql(kind, bool(output_type)), params)
        return cursor.fetchall()


def read_page(
    state: OutputState, after: int, upto: int, output_type: str | None, kind: str
) -> "ChunkPage":
    """One page (`read_rows`) with its bytes for `kind`'s format: run it in the stream pool."""
    rows = read_rows(state.execution_id, after, upto, output_type, kind)
    if not rows:
        return ChunkPage(b"", 0, after)
    if kind == TEXT:
        body = "".join([data for _, data in rows]).encode()
    else:
        body = encode_sse(state, rows, stamp_text())
    return ChunkPage(body, len(rows), rows[-1][0])


class ChunkPage:
    """One page of an execution's log, as one format writes it (shared by its streams)."""

    __slots__ = ("body", "full", "last_seq", "rows")

    def __init__(self, body: bytes, rows: int, last_seq: int) -> None:
        self.body = body
        self.rows = rows
        self.last_seq = last_seq
        # A full page may have more after it; a short one means nothing more up to its bound.
        self.full = rows >= FAST_PAGE_ROWS

    def __len__(self) -> int:
        return self.rows


def encode_sse(
    state: OutputState, rows: list[tuple[Any, ...]], stamp_text: Callable[[Any], str]
) -> bytes:
    """Every chunk as an `execution.output__create` event, byte for byte `sse.encode`'s.

    The fields in `sse._encode_chunk`'s order; what is the same on every row of the page is
    encoded once, and so is each distinct timestamp (a batch's chunks share one)."""
    quote = _json_string
    head = f"event: {OUTPUT_EVENT}\nid: "
    execution = quote(state.execution_id)
    tail = f',"action_ref":{quote(state.action_ref)},"runner_ref":{quote(state.runner_ref)}}}\n\n'
    middles: dict[str, str] = {}  # output type → the fields between `seq` and `data`
    ends: dict[Any, str] = {}  # timestamp → the fields after `data`
    parts: list[str] = []
    append = parts.append
    for seq, output_type, data, when in rows:
        middle = middles.get(output_type)
        if middle is None:
            middle = middles[output_type] = (
                f',"execution_id":{execution},"output_type":{quote(output_type)},"data":'
            )
        end = ends.get(when)
        if end is None:
            end = ends[when] = f',"timestamp":"{stamp_text(when)}"{tail}'
        append(f'{head}{seq}\ndata: {{"seq":{seq}{middle}{quote(data)}{end}')
    return "".join(parts).encode()
