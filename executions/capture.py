"""The capture pipeline: pipe bytes → text → masked text → chunks with a gapless seq.

    bytes ─ IncrementalDecoder ─ SecretMasker ─ LineSplitter ─▶ OutputSink (seq, batch)
                                                                  │ write batch (thread)
                                                                  ▼
                                                      DB commit, then publish the batch

Each output stream (stdout, stderr) has its own decoder, masker and splitter; the sink is
shared by the streams of one execution, so `seq` is the order in which lines were read.
"""

import asyncio
import codecs
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# Masking lives in executions/masking.py; SecretMasker and mask_text are re-exported here.
from executions.masking import SecretMasker, mask_text, secret_forms  # noqa: F401

# A partial line (a prompt, a progress bar) is flushed after this much silence on its stream
# (never while the readers are paused by backpressure: that silence is ours, not the
# process's) ...
PARTIAL_FLUSH_SECONDS = 0.1
# ... or once it is this old, so a progress bar redrawn with \r faster than that still shows.
PARTIAL_MAX_AGE_SECONDS = 1.0
# Lines are written in batches. A batch closes this long after its first line; 0 means a
# line is written at once when no write is in progress, and whatever arrives during a write
# forms the next batch: low latency when quiet (bench/latency.py), big batches under load ...
BATCH_WINDOW_SECONDS = 0.0
# ... and a batch holds at most this many lines or characters.
BATCH_MAX_LINES = 5000
BATCH_MAX_CHARS = 2 * 1024 * 1024
# Readers pause (and so the process blocks on its pipe) while this much waits to be written:
# memory stays bounded whatever the action prints (a pending line costs ~150 bytes on top of
# its text, so lines are bounded as well as characters).
PENDING_HIGH_WATER_CHARS = 8 * 1024 * 1024
PENDING_HIGH_WATER_LINES = 4 * BATCH_MAX_LINES
# A batch that fails to commit stays pending and is written again after this long, doubling
# up to the max: quick after a blip, one attempt every few seconds during a real outage.
WRITE_RETRY_FIRST_SECONDS = 0.1
WRITE_RETRY_MAX_SECONDS = 5.0
# How long the sink keeps retrying one batch unless told otherwise (RUNNER_DB_OUTAGE_SECONDS).
DEFAULT_OUTAGE_LIMIT_SECONDS = 300.0
# NUL cannot be stored in PostgreSQL text; every NUL an action writes is stored as this
# visible stand-in (U+2400 SYMBOL FOR NULL) in both modes, so SQLite and PostgreSQL agree.
# Invalid UTF-8 becomes U+FFFD as usual: the two stay distinguishable.
NUL_SUBSTITUTE = "\u2400"

log = logging.getLogger(__name__)


class OutputLost(Exception):
    """Output could not be stored (a permanent error, or the database away past the limit)."""


def cut_utf8(text: str, max_bytes: int) -> list[str]:
    """Cut `text` into pieces of at most `max_bytes` UTF-8 bytes, never inside a character."""
    if len(text) * 4 <= max_bytes:
        return [text]
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= max_bytes:
        return [text]
    pieces, start = [], 0
    while start < len(raw):
        end = min(start + max_bytes, len(raw))
        while end < len(raw) and (raw[end] & 0xC0) == 0x80:  # a continuation byte
            end -= 1
        pieces.append(raw[start:end].decode("utf-8", "surrogatepass"))
        start = end
    return pieces


class LineSplitter:
    """Splits text into lines (keeping their newline) and holds the unfinished last line."""

    def __init__(self, max_chunk_bytes: int):
        self.max_chunk_bytes = max_chunk_bytes
        self.partial = ""
        self.partial_since: float | None = None  # when the current partial line began
        self.last_data_at: float | None = None  # when text last arrived

    def feed(self, text: str, now: float) -> list[str]:
        if not text:
            return []
        self.last_data_at = now
        data = self.partial + text if self.partial else text
        end = data.rfind("\n")
        if end == -1:
            lines, self.partial = [], data
        else:
            parts = data[: end + 1].split("\n")
            lines = [p + "\n" for p in parts[:-1]]
            self.partial = data[end + 1 :]
        if self.partial:
            if self.partial_since is None or end != -1:
                self.partial_since = now
            if len(self.partial) * 4 > self.max_chunk_bytes:
                # An endless line: emit the full-size pieces now, keep the rest waiting.
                pieces = cut_utf8(self.partial, self.max_chunk_bytes)
                lines.extend(pieces[:-1])
                self.partial = pieces[-1]
        else:
            self.partial_since = None
        if any(len(line) * 4 > self.max_chunk_bytes for line in lines):
            lines = [piece for line in lines for piece in cut_utf8(line, self.max_chunk_bytes)]
        return lines

    def take_partial(self) -> str:
        partial, self.partial, self.partial_since = self.partial, "", None
        return partial


class StreamCapture:
    """One output stream of one execution: bytes in, finished chunks out."""

    def __init__(self, output_type: str, secrets: Iterable[str], max_chunk_bytes: int):
        """`secrets`: the texts to mask (masking.secret_forms of the secret values)."""
        self.output_type = output_type
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._masker = SecretMasker(secrets)
        self._splitter = LineSplitter(max_chunk_bytes)

    def feed(self, data: bytes, now: float) -> list[str]:
        return self._splitter.feed(self._masker.feed(self._decode(data)), now)

    def _decode(self, data: bytes, final: bool = False) -> str:
        return self._decoder.decode(data, final).replace("\0", NUL_SUBSTITUTE)

    def stale_partial(self, now: float) -> list[str]:
        """The unfinished line, after PARTIAL_FLUSH_SECONDS of silence or at its max age."""
        deadline = self.partial_deadline()
        if deadline is None or now < deadline:
            return []
        return [self._splitter.take_partial()]

    def resumed(self, now: float) -> None:
        if self._splitter.last_data_at is not None:
            self._splitter.last_data_at = now

    def partial_deadline(self) -> float | None:
        splitter = self._splitter
        if splitter.partial_since is None or splitter.last_data_at is None:
            return None
        return min(
            splitter.last_data_at + PARTIAL_FLUSH_SECONDS,
            splitter.partial_since + PARTIAL_MAX_AGE_SECONDS,
        )

    def close(self, now: float) -> list[str]:
        """End of stream: whatever is left, decoded, masked and flushed."""
        lines = self._splitter.feed(self._masker.feed(self._decode(b"", final=True)), now)
        lines += self._splitter.feed(self._masker.flush(), now)
        rest = self._splitter.take_partial()
        return lines + ([rest] if rest else [])


@dataclass
class Batch:
    execution_id: str
    first_seq: int
    # (seq, output_type, data, timestamp) in seq order
    rows: list[tuple[int, str, str, datetime]]
    # Writes of this batch tried so far: a retry may follow a commit whose answer was lost,
    # so from the second attempt on the writer checks whether the batch is already stored.
    attempts: int = 0

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.rows) - 1

    def chars(self) -> int:
        return sum(len(r[2]) for r in self.rows)

    def as_messages(self, action_ref: str, runner_ref: str) -> list[dict[str, Any]]:
        return [
            {
                "seq": seq,
                "execution_id": self.execution_id,
                "output_type": kind,
                "data": data,
                "timestamp": ts.isoformat(),
                "action_ref": action_ref,
                "runner_ref": runner_ref,
            }
            for seq, kind, data, ts in self.rows
        ]


WriteBatch = Callable[[Batch], Awaitable[None]]


class OutputSink:
    """Gives chunks their seq and writes them in batches, one batch at a time, in order.

    `write` stores a batch (and publishes it after commit); it is awaited before the next
    batch starts, so batches land in seq order. A batch leaves the pending list only once
    `write` returned: a failed write is retried (backoff) while pending output keeps the
    readers paused at the high-water mark, until `outage_limit` seconds of failures, or at
    once for an error `retryable` refuses. Then `run` raises OutputLost, `failure` says why,
    and whatever is fed afterwards is dropped (the execution is ending). Streams feed it with
    `feed`; `run` is the writer loop, ended by `close_streams`.
    """

    def __init__(
        self,
        execution_id: str,
        write: WriteBatch,
        *,
        secrets: Iterable[Any] = (),
        max_chunk_bytes: int = 1024 * 1024,
        first_seq: int = 1,
        outage_limit: float = DEFAULT_OUTAGE_LIMIT_SECONDS,
        retryable: Callable[[Exception], bool] = lambda exc: True,
    ):
        self.execution_id = execution_id
        self._write = write
        self._secrets = secret_forms(secrets)  # secret values (any JSON type) as texts
        self._max_chunk_bytes = max_chunk_bytes
        self._outage_limit = outage_limit
        self._retryable = retryable
        # Keyed by (output_type, prefix): each host of a remote run has its own line buffer.
        self._streams: dict[tuple[str, str], StreamCapture] = {}
        self._next_seq = first_seq
        self.stored_seq = first_seq - 1  # the last seq known committed
        self._pending: list[tuple[int, str, str, datetime]] = []
        self._pending_chars = 0
        self._pending_since: float | None = None
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closed = False
        self.failure: str | None = None
        self.bytes_fed = 0

    @property
    def has_room(self) -> bool:
        """False while readers are held back until pending output is written."""
        return self._room.is_set()

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    def stream(self, output_type: str, prefix: str = "") -> StreamCapture:
        key = (output_type, prefix)
        if key not in self._streams:
            self._streams[key] = StreamCapture(output_type, self._secrets, self._max_chunk_bytes)
        return self._streams[key]

    async def feed(self, output_type: str, data: bytes, prefix: str = "") -> None:
        """Take bytes read from one stream; waits while too much is pending (backpressure)."""
        await self._room.wait()
        self.bytes_fed += len(data)
        if self.failure is not None:
            return  # nothing can be stored any more: drain the pipe so the action can end
        now = time.monotonic()
        self._add((output_type, prefix), self.stream(output_type, prefix).feed(data, now), now)

    def add_text(self, output_type: str, text: str) -> None:
        """Add text that is not from a pipe (workflow progress, runner messages)."""
        if self.failure is not None:
            return
        now = time.monotonic()
        self._add((output_type, ""), self.stream(output_type).feed(text.encode(), now), now)

    def _add(self, key: tuple[str, str], pieces: list[str], now: float) -> None:
        if not pieces:
            if self._streams[key].partial_deadline() is not None:
                self._wake.set()
            return
        output_type, prefix = key
        stamp = datetime.now(UTC)
        seq = self._next_seq
        for piece in pieces:
            if prefix:
                piece = prefix + piece
            self._pending.append((seq, output_type, piece, stamp))
            self._pending_chars += len(piece)
            seq += 1
        self._next_seq = seq
        if self._pending_since is None:
            self._pending_since = now
        if self._too_full():
            self._room.clear()
        self._wake.set()

    def _too_full(self) -> bool:
        return (
            self._pending_chars >= PENDING_HIGH_WATER_CHARS
            or len(self._pending) >= PENDING_HIGH_WATER_LINES
        )

    def _next_deadline(self) -> float | None:
        paused = not self._room.is_set()
        partials = [] if paused else [s.partial_deadline() for s in self._streams.values()]
        deadlines = [d for d in partials if d is not None]
        if self._pending_since is not None:
            full = len(self._pending) >= BATCH_MAX_LINES or self._pending_chars >= BATCH_MAX_CHARS
            deadlines.append(
                self._pending_since if full else self._pending_since + BATCH_WINDOW_SECONDS
            )
        return min(deadlines) if deadlines else None

    async def run(self) -> None:
        """The writer loop: one batch at a time until closed and drained.

        Raises OutputLost when output could not be stored (see the class docstring).
        """
        try:
            await self._loop()
        except OutputLost as exc:
            self._give_up(str(exc))
            raise

    async def _loop(self) -> None:
        while True:
            deadline = self._next_deadline()
            if deadline is None:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = deadline - time.monotonic()
            if delay > 0 and not self._closed:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                    continue
                except TimeoutError:
                    pass
            # Let readers take what the pipes already hold before judging a line silent.
            for _ in range(2):
                await asyncio.sleep(0)
            now = time.monotonic()
            if self._room.is_set():
                for key, capture in self._streams.items():
                    self._add(key, capture.stale_partial(now), now)
            await self._flush()

    async def _flush(self) -> None:
        if not self._pending:
            self._pending_since = None
            return
        rows = self._pending[:BATCH_MAX_LINES]
        await self._write_until_stored(Batch(self.execution_id, rows[0][0], rows))
        del self._pending[: len(rows)]  # only now: a failed write keeps its rows
        self.stored_seq = rows[-1][0]
        self._pending_chars -= sum(len(r[2]) for r in rows)
        self._pending_since = time.monotonic() if self._pending else None
        if not self._too_full() and not self._room.is_set():
            # The readers were held back: their silence restarts now, not at their last read.
            now = time.monotonic()
            for capture in self._streams.values():
                capture.resumed(now)
            self._room.set()

    async def _write_until_stored(self, batch: Batch) -> None:
        delay = WRITE_RETRY_FIRST_SECONDS
        failing_since: float | None = None
        while True:
            try:
                await self._write(batch)
            except Exception as exc:
                failing_since = self._write_failed(batch, exc, failing_since)
                await asyncio.sleep(delay)
                delay = min(delay * 2, WRITE_RETRY_MAX_SECONDS)
            else:
                if failing_since is not None:
                    log.info("execution %s: output stored again", self.execution_id)
                return
            finally:
                batch.attempts += 1

    def _write_failed(self, batch: Batch, exc: Exception, since: float | None) -> float:
        """Log the first failure of a batch; raise OutputLost when retrying is pointless."""
        now = time.monotonic()
        if not self._retryable(exc):
            raise OutputLost(f"output could not be stored: {exc}") from exc
        if since is None:
            log.warning(
                "execution %s: writing output seq %d-%d failed (%r); retrying for up to %.0f s",
                self.execution_id,
                batch.first_seq,
                batch.last_seq,
                exc,
                self._outage_limit,
            )
            return now
        if now - since >= self._outage_limit:
            raise OutputLost(
                f"the database was unavailable for more than {self._outage_limit:.0f} s: "
                f"output after seq {self.stored_seq} could not be stored"
            ) from exc
        return since

    def _give_up(self, reason: str) -> None:
        self.failure = reason
        self._pending.clear()
        self._pending_chars = 0
        self._pending_since = None
        self._room.set()  # release blocked readers: what they read from now on is dropped

    def close_streams(self) -> None:
        """End of all input: flush every stream's remainder into the pending batch."""
        now = time.monotonic()
        if self.failure is None:
            for key, capture in self._streams.items():
                self._add(key, capture.close(now), now)
        self._closed = True
        self._wake.set()
