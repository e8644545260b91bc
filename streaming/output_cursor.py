"""One client's cursor over one execution's output: subscribe, replay, follow, backfill.

    open the live feed (subscribe) ─▶ read the execution ─▶ replay its window from the log
      ─▶ forward live batches, dropping seq ≤ position; a batch starting past position + 1
         (the layer dropped one), a batch too big to carry its chunks, or an overflowing
         inbox ─▶ read the range from the log instead
      ─▶ finished and position ≥ last_seq ─▶ `done`

`position` is the highest seq covered: sent, or passed over because of the `type` filter.
The runner stores a batch before it publishes it, and records the final status only after
its last batch, so the log always holds what a message or a status announces.
"""

import time
from collections.abc import Awaitable, Callable
from typing import Any

from streaming.direct import DirectSink, batch_frames, continuing, encode_batches
from streaming.frames import Frame, done_frame, gap_frame
from streaming.live import IDLE_FOREVER as IDLE_FOREVER  # re-exported (streaming/family.py)
from streaming.live import Control, LiveFeed, Message, Overflow
from streaming.pages import ChunkPage
from streaming.params import OutputWindow
from streaming.replay import PAGE_ROWS, OutputState
from streaming.shared_reads import kept, prefetch_rows, shared_page, shared_rows, shared_state

# What a stream writes: Frames, and ChunkPages only to a sender that asked for `page_kind`
# (so `Any`: a WebSocket's sender, which takes Frames alone, is one too).
Send = Callable[[list[Any]], Awaitable[None]]
# Frames collected from the inbox before they are written, at most: one write for a burst,
# bounded memory for a stream that never finds its inbox empty.
FLUSH_FRAMES = 1000
# Pages of a replay read while one is written, for a stream without a type filter: the
# next ones' queries run in PostgreSQL while another thread encodes a page, so a replay is
# not one read after the other (50,000-line SSE replays, medians of 10 interleaved on the
# bench machine: one page ahead 208k lines/s, two 248k, three 255k). At most this many of
# the STREAM_DB_THREADS per stream; the pages wait in the process's bounded page cache
# (streaming/shared_reads.py), and one it would not keep is not read ahead.
READ_AHEAD_PAGES = 3


class AccessRevoked(Exception):
    """The caller may no longer see the execution (or it is gone): stop delivering.

    `str(exc)` says why, in words fit for the client; `status` is 404 when this stream's
    subject went out of sight, 401 when the caller no longer authenticates at all."""

    def __init__(self, reason: str, status: int = 404):
        super().__init__(reason)
        self.status = status


def replay_start(window: OutputWindow, last_seq: int) -> tuple[int, tuple[int, int, str] | None]:
    """The first seq to replay, and the range the window skips (from, to, reason), if any."""
    skipped_from, reason = None, ""
    if window.resume_after is not None:
        start = window.resume_after + 1
    elif window.from_seq < 0:
        start = max(1, last_seq + 1 + window.from_seq)
        if start > 1:
            skipped_from, reason = 1, "from"
    else:
        start = max(1, window.from_seq)
    limit = window.replay_limit
    if limit is not None and last_seq - start + 1 > limit:
        cut = last_seq - limit + 1
        skipped_from = start if skipped_from is None else skipped_from
        reason, start = "replay_limit", cut
    if skipped_from is None:
        return start, None
    return start, (skipped_from, start - 1, reason)


class OutputCursor:
    """Runs one execution's stream until `done` (returns) or revocation (AccessRevoked).

    `live` must already be subscribed to the execution's group, and `state` read after that.
    Revocation and lost final statuses come as control items from the access guard; a
    `keepalive` (if given) is awaited whenever nothing was sent for STREAM_KEEPALIVE_SECONDS.
    Frames are collected while the inbox has more, then sent in one write. With a
    `page_kind` (streaming/pages.py: SSE or TEXT) the log is read and sent as ChunkPages,
    encoded a page at a time for that format. With a `sink`, the hub
    may write live batches for it while it waits (streaming/direct.py).
    """

    __slots__ = (
        "_out",
        "keepalive",
        "live",
        "page_kind",
        "position",
        "send",
        "sink",
        "state",
        "window",
    )

    def __init__(
        self,
        state: OutputState,
        window: OutputWindow,
        live: LiveFeed,
        send: Send,
        keepalive: Callable[[], Awaitable[None]] | None = None,
        page_kind: str | None = None,
        sink: DirectSink | None = None,
    ):
        self.state = state
        self.window = window
        self.live = live
        self.send = send
        self.keepalive = keepalive
        self.page_kind = page_kind
        self.sink = sink
        self.position = 0
        self._out: list[Frame | ChunkPage] = []

    async def run(self) -> None:
        await self._replay()
        if self.sink is not None:
            self.live.write_directly(self._deliver_direct)
        while not await self._finish_if_done():
            for item in await self.live.inbox.take(self.keepalive):
                await self._handle(item)
                if len(self._out) >= FLUSH_FRAMES:
                    await self._flush()  # a long burst still goes out in bounded writes
            await self._flush()

    async def _handle(self, item: Message | Overflow | Control) -> None:
        if isinstance(item, Control):
            await self._on_control(item)
        elif isinstance(item, Overflow):
            await self._refresh()
        elif item["type"] == "output.batch":
            await self._on_batch(item)
        elif item["type"] == "execution.event":
            # The status changed (maybe finished): its row now has the final last_seq.
            await self._refresh(not_before=item.get("received_at"))

    async def _on_control(self, control: Control) -> None:
        if control.kind == "access":
            verdict = control.value
            reason = verdict.revoked(self.state.execution_id)
            if reason is not None:
                await self._flush()
                raise AccessRevoked(reason, 404 if verdict.allowed else 401)
            await self._refresh(verdict.states.get(self.state.execution_id))
        else:  # resync: the layer may have lost messages
            await self._refresh()

    def _emit(self, frames: list[Frame]) -> None:
        self._out.extend(frames)

    async def _flush(self) -> None:
        if self._out:
            frames, self._out = self._out, []
            await self.send(frames)

    async def _replay(self) -> None:
        start, skipped = replay_start(self.window, self.state.last_seq)
        self.position = start - 1
        if skipped:
            self._emit([gap_frame(self.state.execution_id, *skipped)])
        await self._catch_up(self.state.last_seq)
        await self._flush()

    async def _catch_up(self, upto: int) -> None:
        """Send every chunk with position < seq <= upto from the log, a page at a time."""
        if self.state.output_purged_at is not None:
            return
        while self.position < upto:
            self.position = await self._send_page(upto)

    async def _send_page(self, upto: int) -> int:
        """Send the next page of the log up to `upto`; the position it covers."""
        wanted = self.window.output_type
        if self.page_kind is not None:
            page = await shared_rows(self.state, self.position, upto, wanted, self.page_kind)
            if page.full and kept(page):
                self._read_ahead(page, upto)
            if page:
                self._out.append(page)
            await self._flush()
            # A short page means nothing more up to `upto` (of this type, if filtered).
            return page.last_seq if page.full else upto
        frames = await shared_page(self.state, self.position, upto, wanted)
        self._emit(frames)
        await self._flush()  # a page at a time: memory stays bounded, the client sees it
        return frames[-1].data["seq"] if len(frames) == PAGE_ROWS else upto

    def _read_ahead(self, page: ChunkPage, upto: int) -> None:
        """Start reading the pages after `page` (up to `upto`) while it is written."""
        wanted, kind = self.window.output_type, self.page_kind
        assert kind is not None
        after = page.last_seq
        prefetch_rows(self.state, after, upto, wanted, kind)
        if wanted is not None:
            return  # where a filtered page ends is known only once it is read
        for _ in range(1, READ_AHEAD_PAGES):
            # Seqs are gapless, so a full unfiltered page spans as many seqs as it has rows
            # (were one missing, the page read here would not be the one asked for next:
            # wasted work, never a wrong page).
            after += len(page)
            if after >= upto:
                return
            prefetch_rows(self.state, after, upto, None, kind)

    async def _on_batch(self, message: Message) -> None:
        last = message["last_seq"]
        if last <= self.position:
            return  # already sent (replayed, or a duplicate)
        frames = batch_frames(message, self.position, self.window.output_type)
        if frames is None:
            await self._catch_up(last)  # too big to inline, or the layer lost a batch
            return
        self._emit(frames)
        self.position = last

    def _deliver_direct(self, messages: list[Message], shared: dict) -> int:
        """The hub's tick (streaming/direct.py): while this stream waits with an empty inbox
        and a client that reads, write the leading batches of `messages` that continue the
        position at once. Returns how many it took; the hub puts the rest in the inbox."""
        assert self.sink is not None
        inbox = self.live.inbox
        if not inbox.parked() or inbox.peek() is not None or not self.sink.flow.writable():
            return 0
        start = self.position
        taken, self.position = continuing(messages, start)
        if taken:
            wanted = self.window.output_type
            body = encode_batches(self.sink, messages[:taken], start, wanted, shared)
            if body:
                self.sink.flow.write_now(body)
                self.sink.clock.wrote()
        return taken

    async def _refresh(
        self, state: OutputState | None = None, not_before: float | None = None
    ) -> None:
        if state is None:
            if not_before is None:
                not_before = time.monotonic()
            state = await shared_state(self.state.execution_id, not_before)
        if state is None:
            await self._flush()
            raise AccessRevoked("The execution no longer exists.")
        self.state = state
        await self._catch_up(state.last_seq)

    async def _finish_if_done(self) -> bool:
        state = self.state
        if not state.finished:
            return False
        if self.position < state.last_seq:
            if state.output_purged_at is None:
                return False  # more to read: the next doorbell or re-check brings it
            self._emit([gap_frame(state.execution_id, self.position + 1, state.last_seq, "purged")])
            self.position = state.last_seq
        self._emit([done_frame(state.execution_id, state.done_data())])
        await self._flush()
        return True
