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
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from executions.models.actions import MASK

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


class SecretMasker:
    """Replaces every secret (and its JSON-escaped form) with `********` in a text stream.

    Text that could be the start of a secret is held back until the next piece shows whether
    it is one, so a secret split across two reads is still masked. Feeding text in any pieces
    gives the same result as masking it whole.
    """

    def __init__(self, secrets: Iterable[str]):
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                forms.add(secret)
                forms.add(_json_escaped(secret))
        self._forms = sorted(forms, key=len, reverse=True)
        # Longest first: at one position a longer secret wins over a secret that prefixes it.
        self._pattern = re.compile("|".join(map(re.escape, self._forms))) if forms else None
        self._first_chars = {f[0] for f in self._forms}
        self._longest = max((len(f) for f in self._forms), default=0)
        self._held = ""

    def feed(self, text: str) -> str:
        if self._pattern is None:
            return text
        buf = self._held + text
        hold_from = self._hold_start(buf)
        out, pos = [], 0
        for match in self._pattern.finditer(buf):
            if match.start() >= hold_from:
                break
            out.append(buf[pos : match.start()])
            out.append(MASK)
            pos = match.end()
        keep_from = max(pos, hold_from)
        out.append(buf[pos:keep_from])
        self._held = buf[keep_from:]
        return "".join(out)

    def flush(self) -> str:
        """Everything held back, at the end of the stream (it is not a whole secret)."""
        held, self._held = self._held, ""
        if self._pattern is None:
            return held
        return self._pattern.sub(MASK, held)

    def _hold_start(self, buf: str) -> int:
        """Index of the longest suffix of `buf` that is a proper prefix of some secret."""
        for i in range(max(0, len(buf) - self._longest + 1), len(buf)):
            if buf[i] in self._first_chars:
                tail = buf[i:]
                if any(len(f) > len(tail) and f.startswith(tail) for f in self._forms):
                    return i
        return len(buf)


def _json_escaped(secret: str) -> str:
    import json

    return json.dumps(secret)[1:-1]


def mask_text(text: str, secrets: Iterable[str]) -> str:
    """Mask a whole text at once (the reference the streaming masker must agree with)."""
    masker = SecretMasker(secrets)
    return masker.feed(text) + masker.flush()


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
        self.output_type = output_type
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._masker = SecretMasker(secrets)
        self._splitter = LineSplitter(max_chunk_bytes)

    def feed(self, data: bytes, now: float) -> list[str]:
        text = self._decoder.decode(data)
        return self._splitter.feed(self._masker.feed(text), now)

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
        lines = self._splitter.feed(self._masker.feed(self._decoder.decode(b"", final=True)), now)
        lines += self._splitter.feed(self._masker.flush(), now)
        rest = self._splitter.take_partial()
        return lines + ([rest] if rest else [])


@dataclass
class Batch:
    execution_id: str
    first_seq: int
    # (seq, output_type, data, timestamp) in seq order
    rows: list[tuple[int, str, str, datetime]]

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
    batch starts, so batches land in seq order. Streams feed it with `feed`; `run` is the
    writer loop, ended by `close`.
    """

    def __init__(
        self,
        execution_id: str,
        write: WriteBatch,
        *,
        secrets: Iterable[str] = (),
        max_chunk_bytes: int = 1024 * 1024,
        first_seq: int = 1,
    ):
        self.execution_id = execution_id
        self._write = write
        self._secrets = list(secrets)
        self._max_chunk_bytes = max_chunk_bytes
        # Keyed by (output_type, prefix): each host of a remote run has its own line buffer.
        self._streams: dict[tuple[str, str], StreamCapture] = {}
        self._next_seq = first_seq
        self._pending: list[tuple[int, str, str, datetime]] = []
        self._pending_chars = 0
        self._pending_since: float | None = None
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closed = False
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
        now = time.monotonic()
        self._add((output_type, prefix), self.stream(output_type, prefix).feed(data, now), now)

    def add_text(self, output_type: str, text: str) -> None:
        """Add text that is not from a pipe (workflow progress, runner messages)."""
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
        """The writer loop: one batch at a time until closed and drained."""
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
        del self._pending[:BATCH_MAX_LINES]
        self._pending_chars -= sum(len(r[2]) for r in rows)
        self._pending_since = time.monotonic() if self._pending else None
        await self._write(Batch(self.execution_id, rows[0][0], rows))
        if not self._too_full() and not self._room.is_set():
            # The readers were held back: their silence restarts now, not at their last read.
            now = time.monotonic()
            for capture in self._streams.values():
                capture.resumed(now)
            self._room.set()

    def close_streams(self) -> None:
        """End of all input: flush every stream's remainder into the pending batch."""
        now = time.monotonic()
        for key, capture in self._streams.items():
            self._add(key, capture.close(now), now)
        self._closed = True
        self._wake.set()
