"""The doorbell side of every stream: a channel on the layer, pumped into a bounded inbox.

Each subscription (one execution's output, or one event feed) has its own channel, joined
to the groups it follows. A pump task moves what arrives into the subscription's `Inbox`
at once, so the layer's own (lossy) buffer stays empty; the inbox is bounded, and what does
not fit is summarised by one `Overflow` marker, after which the subscriber catches up from
the database instead of from messages.
"""

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from channels.layers import get_channel_layer

log = logging.getLogger(__name__)

# A subscriber buffers at most this many live messages (one is a batch of about 20 ms of
# output, or one lifecycle event) ...
LIVE_BUFFER_MESSAGES = 200
# ... and at most this much chunk text. Past either bound it stops buffering and reads the
# database instead: the log has every chunk, so holding more would only cost memory.
LIVE_BUFFER_CHARS = 1024 * 1024
# channels-redis forgets a group membership after `group_expiry` (a day): long streams re-join.
GROUP_RENEW_SECONDS = 3600
# A failing layer (Redis down) is retried this often; streams go on from the database.
LAYER_RETRY_SECONDS = 1.0

Message = dict[str, Any]


class Overflow:
    """Stands in an inbox for the live messages it had no room for."""

    def __init__(self) -> None:
        self.messages = 0
        # execution id → (first, last) seq of the output batches dropped for it
        self.output_ranges: dict[str, tuple[int, int]] = {}

    def absorb(self, message: Message) -> None:
        self.messages += 1
        if message.get("type") == "output.batch":
            execution_id = message["execution_id"]
            first, last = message["first_seq"], message["last_seq"]
            if execution_id in self.output_ranges:
                known_first, known_last = self.output_ranges[execution_id]
                first, last = min(first, known_first), max(last, known_last)
            self.output_ranges[execution_id] = (first, last)


def _chars(message: Message) -> int:
    chunks = message.get("chunks") if message.get("type") == "output.batch" else None
    return sum(len(chunk["data"]) for chunk in chunks) if chunks else 0


class Inbox:
    """Live messages waiting for one subscriber, in arrival order, bounded."""

    def __init__(
        self, max_messages: int = LIVE_BUFFER_MESSAGES, max_chars: int = LIVE_BUFFER_CHARS
    ) -> None:
        self.max_messages = max_messages
        self.max_chars = max_chars
        self._items: deque[tuple[Message | Overflow, int]] = deque()
        self._chars = 0
        self._overflow: Overflow | None = None
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, message: Message) -> None:
        if self._overflow is None:
            size = _chars(message)
            if len(self._items) < self.max_messages and self._chars + size <= self.max_chars:
                self._items.append((message, size))
                self._chars += size
                self._ready.set()
                return
            self._overflow = Overflow()
            self._items.append((self._overflow, 0))
        self._overflow.absorb(message)
        self._ready.set()

    async def get(self, timeout: float) -> Message | Overflow | None:
        """The next message (or Overflow marker); None when `timeout` passes first."""
        if not self._items:
            self._ready.clear()
            try:
                async with asyncio.timeout(max(timeout, 0)):
                    await self._ready.wait()
            except TimeoutError:
                return None
        item, size = self._items.popleft()
        self._chars -= size
        if item is self._overflow:
            self._overflow = None
        return item


class LiveFeed:
    """One channel on the layer, joined to `groups`; accepted messages go to `inbox`."""

    def __init__(self, accept: Callable[[Message], Awaitable[bool]] | None = None) -> None:
        self.inbox = Inbox()
        self._accept = accept
        self._layer = get_channel_layer()
        self._channel: str | None = None
        self._groups: set[str] = set()
        self._joined_at = 0.0
        self._pump: asyncio.Task | None = None

    @property
    def channel(self) -> str | None:
        return self._channel

    async def open(self, groups: Iterable[str]) -> None:
        """Join the groups (subscribe) and start pumping; call before reading the log."""
        self._channel = await self._layer.new_channel()
        await self.set_groups(groups)
        self._pump = asyncio.create_task(self._run(), name=f"live feed {self._channel}")

    async def set_groups(self, groups: Iterable[str]) -> None:
        assert self._channel is not None
        wanted = set(groups)
        for group in sorted(wanted - self._groups):
            await self._layer.group_add(group, self._channel)
        for group in sorted(self._groups - wanted):
            await self._layer.group_discard(group, self._channel)
        self._groups = wanted
        self._joined_at = time.monotonic()

    async def renew(self) -> None:
        """Re-join the groups once a membership could be near its expiry."""
        if time.monotonic() - self._joined_at >= GROUP_RENEW_SECONDS:
            groups, self._groups = self._groups, set()
            await self.set_groups(groups)

    async def close(self) -> None:
        """Stop the pump and leave every group (at once, so resources go within 2 s)."""
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
        if self._channel is not None:
            for group in self._groups:
                with contextlib.suppress(Exception):  # a lapsed membership expires anyway
                    await self._layer.group_discard(group, self._channel)
        self._groups = set()

    async def _run(self) -> None:
        while True:
            try:
                message = await self._layer.receive(self._channel)
            except asyncio.CancelledError:
                raise
            except Exception:  # the layer is a doorbell: streams go on from the database
                log.warning("channel layer receive failed", exc_info=True)
                await asyncio.sleep(LAYER_RETRY_SECONDS)
                continue
            if self._accept is None or await self._accept(message):
                self.inbox.put(message)
