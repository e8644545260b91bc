"""Replay's fast path: pages of the log read as raw rows and encoded a page at a time.

    SSE / plain-text cursor ─▶ shared_page(..., kind) ─▶ read_rows: one raw SELECT of the
      columns that format needs (plain text: `seq` and `data` only, filtered by type in SQL)
      ─▶ ChunkPage ─▶ .sse() or .text(): the page's bytes in one loop, made once and shared
         by every stream of the process that reads the same page ─▶ one write per page

Per-row ORM results, payload dicts, `Frame` objects and one encoding call per frame cost
about four times what the database read itself costs (62k lines/s against a bare SELECT's
374k on the 2-core bench machine), so a replay to an SSE or plain-text client skips them.
Live batches, WebSocket streams and family streams keep the frame path. The SSE bytes are exactly what `sse.encode` writes for the same chunk
(tests/test_replay_pages.py compares them on hostile text).
"""

from datetime import UTC, datetime
from typing import Any

from django.db import connection

from executions.models import OutputChunk
from streaming import sse
from streaming.frames import OUTPUT_EVENT
from streaming.replay import OutputState

# Rows per replay page on the fast path. A page is written at once, so it bounds what a
# stalled client can hold beyond STREAM_SEND_BUFFER_BYTES (~230 KiB of SSE for 1,000 bench
# lines), and it amortises the query and the hop to the database thread.
FAST_PAGE_ROWS = 1000

# What a page is read for: every column (SSE, and frames for the other formats), or the
# text alone (plain text).
FULL, TEXT = "full", "text"

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


_STAMP_TEXT = {"postgresql": _postgresql_stamp, "sqlite": _sqlite_stamp}


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
    (seq, data) for TEXT, (seq, output_type, data, timestamp as isoformat text) for FULL.

    A raw cursor rather than `values_list`: the ORM's per-row work is most of replay's cost.
    """
    params: list[Any] = [execution_id, after, upto]
    if output_type:
        params.append(output_type)
    params.append(FAST_PAGE_ROWS)
    with connection.cursor() as cursor:
        cursor.execute(_sql(kind, bool(output_type)), params)
        rows = cursor.fetchall()
    if kind == TEXT:
        return rows
    stamp = _STAMP_TEXT.get(connection.vendor, _datetime_stamp)
    return [(seq, output_type, data, stamp(when)) for seq, output_type, data, when in rows]


class ChunkPage:
    """One page of an execution's log, with its encodings made on first use (and shared)."""

    __slots__ = ("_sse", "_text", "full", "kind", "rows", "state")

    def __init__(self, state: OutputState, rows: list[tuple[Any, ...]], kind: str) -> None:
        self.state = state
        self.rows = rows
        self.kind = kind
        # A full page may have more after it; a short one means nothing more up to its bound.
        self.full = len(rows) >= FAST_PAGE_ROWS
        self._sse: bytes | None = None
        self._text: bytes | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def last_seq(self) -> int:
        return self.rows[-1][0]

    def chars(self) -> int:
        """The chunk text it holds (what the page cache bounds)."""
        column = 1 if self.kind == TEXT else 2
        return sum(len(row[column]) for row in self.rows)

    def text(self) -> bytes:
        """The chunks' text, as plain text writes it."""
        if self._text is None:
            column = 1 if self.kind == TEXT else 2
            self._text = "".join([row[column] for row in self.rows]).encode()
        return self._text

    def sse(self) -> bytes:
        """Every chunk as an `execution.output__create` event, byte for byte `sse.encode`'s."""
        if self._sse is None:
            self._sse = _encode_sse(self.state, self.rows)
        return self._sse


def _encode_sse(state: OutputState, rows: list[tuple[Any, ...]]) -> bytes:
    """The fields in `sse._encode_chunk`'s order; what is the same on every row of the page
    is encoded once."""
    quote = _json_string
    execution = quote(state.execution_id)
    tail = f',"action_ref":{quote(state.action_ref)},"runner_ref":{quote(state.runner_ref)}}}\n\n'
    types: dict[str, str] = {}
    parts = []
    for seq, output_type, data, stamp in rows:
        kind = types.get(output_type)
        if kind is None:
            kind = types[output_type] = quote(output_type)
        parts.append(
            f'event: {OUTPUT_EVENT}\nid: {seq}\ndata: {{"seq":{seq},"execution_id":{execution},'
            f'"output_type":{kind},"data":{quote(data)},'
            f'"timestamp":"{stamp}"{tail}'
        )
    return "".join(parts).encode()
