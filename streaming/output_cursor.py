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

from django.conf import settings

from streaming.db import run_db
from streaming.frames import Frame, done_frame, gap_frame, output_frame
from streaming.live import LiveFeed, Message, Overflow
from streaming.params import OutputWindow
from streaming.replay import PAGE_ROWS, OutputState, output_state, read_chunks

Send = Callable[[list[Frame]], Awaitable[None]]


class AccessRevoked(Exception):
    """The caller may no longer see the execution (or it is gone): stop delivering."""


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
    `allowed` (sync, run in the stream pool) re-checks the caller's access.
    """

    def __init__(
        self,
        state: OutputState,
        window: OutputWindow,
        live: LiveFeed,
        send: Send,
        allowed: Callable[[], bool],
    ):
        self.state = state
        self.window = window
        self.live = live
        self.send = send
        self.allowed = allowed
        self.position = 0

    async def run(self) -> None:
        await self._replay()
        recheck_at = time.monotonic() + settings.STREAM_ACCESS_RECHECK_SECONDS
        while not await self._finish_if_done():
            if time.monotonic() >= recheck_at:
                await self._recheck()
                recheck_at = time.monotonic() + settings.STREAM_ACCESS_RECHECK_SECONDS
            item = await self.live.inbox.get(recheck_at - time.monotonic())
            if isinstance(item, Overflow):
                await self._refresh()
            elif item is not None and item["type"] == "output.batch":
                await self._on_batch(item)
            elif item is not None and item["type"] == "execution.event":
                # The status changed (maybe finished): its row now has the final last_seq.
                await self._refresh()

    async def _replay(self) -> None:
        start, skipped = replay_start(self.window, self.state.last_seq)
        self.position = start - 1
        if skipped:
            await self.send([gap_frame(self.state.execution_id, *skipped)])
        await self._catch_up(self.state.last_seq)

    async def _catch_up(self, upto: int) -> None:
        """Send every chunk with position < seq <= upto from the log, a page at a time."""
        if self.state.output_purged_at is not None:
            return
        while self.position < upto:
            chunks = await run_db(
                read_chunks, self.state, self.position, upto, self.window.output_type
            )
            if chunks:
                await self.send([output_frame(chunk) for chunk in chunks])
            # A short page means nothing more up to `upto` (of this type, if filtered).
            self.position = chunks[-1]["seq"] if len(chunks) == PAGE_ROWS else upto

    async def _on_batch(self, message: Message) -> None:
        first, last, chunks = message["first_seq"], message["last_seq"], message["chunks"]
        if last <= self.position:
            return  # already sent (replayed, or a duplicate)
        if chunks is None or first > self.position + 1:
            await self._catch_up(last)  # too big to inline, or the layer lost a batch
            return
        wanted = self.window.output_type
        fresh = [
            output_frame(chunk)
            for chunk in chunks
            if chunk["seq"] > self.position and (wanted is None or chunk["output_type"] == wanted)
        ]
        if fresh:
            await self.send(fresh)
        self.position = last

    async def _refresh(self, state: OutputState | None = None) -> None:
        if state is None:
            state = await run_db(output_state, self.state.execution_id)
        if state is None:
            raise AccessRevoked(self.state.execution_id)
        self.state = state
        await self._catch_up(state.last_seq)

    async def _recheck(self) -> None:
        """Revocation, and a safety net: a lost final doorbell still ends the stream."""

        def check() -> OutputState | None:
            return output_state(self.state.execution_id) if self.allowed() else None

        state = await run_db(check)
        if state is None:
            raise AccessRevoked(self.state.execution_id)
        await self.live.renew()
        await self._refresh(state)

    async def _finish_if_done(self) -> bool:
        state = self.state
        if not state.finished:
            return False
        if self.position < state.last_seq:
            if state.output_purged_at is None:
                return False  # more to read: the next doorbell or re-check brings it
            gap = gap_frame(state.execution_id, self.position + 1, state.last_seq, "purged")
            await self.send([gap])
            self.position = state.last_seq
        await self.send([done_frame(state.execution_id, state.done_data())])
        return True
