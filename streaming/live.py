"""The doorbell side of every stream: a subscription to the process's hub, with a bounded inbox.

A stream follows groups (one execution's output, or a tenant's events) through `LiveFeed`.
The feed holds no channel of its own: the process-wide `Hub` (streaming/hub.py) is the one
member of each group on the layer and hands every message it receives to the inboxes of the
feeds that follow that group. An inbox is bounded, and what does not fit is summarised by
one `Overflow` marker, after which the stream catches up from the database instead.

Besides live messages an inbox carries control items (`Control`) that the hub or the access
guard post: a re-check's verdict, or "read the log, the layer may have lost something".
They bypass the bounds (at most one of each kind waits) and come out before messages.
"""

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

Message = dict[str, Any]

# A subscriber buffers at most this many live messages (one is a batch of about 20 ms of
# output, or one lifecycle event) ...
LIVE_BUFFER_MESSAGES = 200
# ... and at most this much chunk text. Past either bound it stops buffering and reads the
# database instead: the log has every chunk, so holding more would only cost memory. (The
# messages themselves are shared by every local subscriber: this bounds references, and the
# work a slow subscriber would have to do to catch up message by message.)
LIVE_BUFFER_CHARS = 1024 * 1024
# With no keep-alive to send, a waiting stream still wakes this often (it costs nothing).
IDLE_FOREVER = 3600.0
# Distinct values `shared` keeps one copy of (group sets, tenant sets: a handful per process);
# past it the oldest is forgotten, which only costs later streams a copy of their own.
SHARED_VALUES = 1024


class Kept[K: Hashable, V]:
    """At most `bound` values by key, made on first use; past the bound the oldest is
    forgotten (which only costs a later caller a value of its own)."""

    __slots__ = ("_bound", "_values")

    def __init__(self, bound: int) -> None:
        self._bound = bound
        self._values: dict[K, V] = {}

    def get(self, key: K, make: Callable[[], V]) -> V:
        value = self._values.get(key)
        if value is None:
            if len(self._values) >= self._bound:
                del self._values[next(iter(self._values))]
            value = self._values[key] = make()
        return value


_shared: Kept[Any, Any] = Kept(SHARED_VALUES)


def shared[H: Hashable](value: H) -> H:
    """One copy of equal immutable values (frozensets of groups, of tenant ids) for all the
    streams that hold one: ten thousand idle streams hold one set of their groups, not ten
    thousand equal ones (216 bytes each)."""
    return _shared.get(value, lambda: value)


class Overflow:
    """Stands in an inbox for the live messages it had no room for."""

    def __init__(self) -> None:
        self.messages = 0
        # execution id → (first, last) seq of the output batches dropped for it
        self.output_ranges: dict[str, tuple[int, int]] = {}
        # execution id → tenant id, for filtering what was dropped after the fact
        self.tenants: dict[str, int | None] = {}

    def absorb(self, message: Message) -> None:
        self.messages += 1
        if message.get("type") == "output.batch":
            execution_id = message["execution_id"]
            first, last = message["first_seq"], message["last_seq"]
            if execution_id in self.output_ranges:
                known_first, known_last = self.output_ranges[execution_id]
                first, last = min(first, known_first), max(last, known_last)
            self.output_ranges[execution_id] = (first, last)
            self.tenants[execution_id] = message.get("tenant_id")


@dataclass(frozen=True)
class Control:
    """An instruction for the stream, not a message: `kind` says what, `value` carries it.

    Kinds: `resync` (the layer may have dropped messages: read the log), `access` (the
    access guard's verdict for this stream's principal; `value` is an `AccessVerdict`).
    One Control is posted to every stream it concerns, so reads they would all make after
    it (the log past the same position) are made once (`shared_read`).
    """

    kind: str
    value: Any = None
    reads: dict[Hashable, "asyncio.Future[Any]"] = field(
        default_factory=dict, compare=False, repr=False
    )

    async def shared_read[T](self, key: Hashable, read: Callable[[], Awaitable[T]]) -> T:
        """`read()`'s answer; the first stream to ask with `key` reads for all the others
        (a re-check tells ten thousand idle streams at once: one query, not one each)."""
        future = self.reads.get(key)
        if future is None:
            future = self.reads[key] = asyncio.ensure_future(read())
            future.add_done_callback(_retrieved)
        # Shielded: one asker leaving must not cancel the read the others wait for.
        return await asyncio.shield(future)


def _retrieved(future: "asyncio.Future[Any]") -> None:
    """Each asker meets a failed read's error; none may be left to "never retrieved"."""
    if not future.cancelled():
        future.exception()


def _chars(message: Message) -> int:
    """The chunk text a message carries, counted once per message (the hub hands the same
    message to every local stream; counting it per stream was a sixth of the CPU at 1,000
    viewers)."""
    size = message.get("_chars")
    if size is None:
        chunks = message.get("chunks") if message.get("type") == "output.batch" else None
        size = message["_chars"] = sum(len(chunk["data"]) for chunk in chunks) if chunks else 0
    return size


class KeepAlive:
    """Sends a keep-alive when nothing was written for STREAM_KEEPALIVE_SECONDS.

    The clock is the stream's last write (`wrote()`), not the last item it handled: an item
    that writes nothing (an access verdict, a filtered batch) must not put a keep-alive off.
    """

    __slots__ = ("_send", "last")

    def __init__(self, send: Callable[[], Awaitable[None]]) -> None:
        self._send = send
        self.last = time.monotonic()

    def wrote(self) -> None:
        self.last = time.monotonic()

    def due_in(self) -> float:
        return self.last + settings.STREAM_KEEPALIVE_SECONDS - time.monotonic()

    async def __call__(self) -> None:
        if self.due_in() <= 0:
            await self._send()
            self.wrote()


class Inbox:
    """Live messages waiting for one subscriber, in arrival order, bounded; controls first.

    Built for many idle subscribers: its queue exists only while something waits in it, and
    a waiting reader holds one future rather than an asyncio.Event (with its own deque).
    """

    __slots__ = (
        "_chars",
        "_controls",
        "_items",
        "_overflow",
        "_waiter",
        "max_chars",
        "max_messages",
    )

    def __init__(
        self, max_messages: int = LIVE_BUFFER_MESSAGES, max_chars: int = LIVE_BUFFER_CHARS
    ) -> None:
        self.max_messages = max_messages
        self.max_chars = max_chars
        self._items: deque[tuple[Message | Overflow, int]] | None = None
        self._chars = 0
        self._overflow: Overflow | None = None
        self._controls: dict[str, Control] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items or ()) + len(self._controls or ())

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def put(self, message: Message, *, wake: bool = True) -> None:
        if self._items is None:
            self._items = deque()
        if self._overflow is None:
            size = _chars(message)
            if len(self._items) < self.max_messages and self._chars + size <= self.max_chars:
                self._items.append((message, size))
                self._chars += size
                if wake:
                    self._wake()
                return
            self._overflow = Overflow()
            self._items.append((self._overflow, 0))
        self._overflow.absorb(message)
        if wake:
            self._wake()

    def wake(self) -> None:
        """Wake the reader if it waits (the hub's tick, for messages put without a wake)."""
        self._wake()

    def control(self, item: Control) -> None:
        """Post a control item; a newer one of the same kind replaces a waiting one."""
        if self._controls is None:
            self._controls = {}
        self._controls[item.kind] = item
        self._wake()

    def parked(self) -> bool:
        """Is its stream waiting in `get` for anything at all (and no control item waits)?
        Then the hub may take its messages and write for it (streaming/direct.py)."""
        return self._waiter is not None and not self._waiter.done() and not self._controls

    def peek(self) -> Message | Overflow | None:
        """The next message or Overflow marker, left in place (controls are not looked at)."""
        return self._items[0][0] if self._items else None

    def get_nowait(self) -> Message | Overflow | Control | None:
        if self._controls:
            kind = next(iter(self._controls))
            return self._controls.pop(kind)
        if not self._items:
            # Kept once made: a stream that got one message gets more (re-making the deque
            # per message was a tenth of the CPU at 1,000 viewers); idle ones never make it.
            return None
        item, size = self._items.popleft()
        self._chars -= size
        if item is self._overflow:
            self._overflow = None
        return item

    async def take(
        self, keepalive: Callable[[], Awaitable[None]] | None
    ) -> list[Message | Overflow | Control]:
        """Everything waiting (at least one item), in order; while nothing comes, `keepalive`
        is awaited every STREAM_KEEPALIVE_SECONDS (if given).

        It waits itself rather than through `get`: a waiting stream's stack is one frame
        shorter (thousands of streams wait here)."""
        while (item := self.get_nowait()) is None:
            waiter, timer = self._park(_idle(keepalive))
            try:
                await waiter
            finally:
                self._unpark(timer)
            if keepalive is not None and not self:  # nothing came: the keep-alive's time
                await keepalive()
        items = [item]
        while (item := self.get_nowait()) is not None:
            items.append(item)
        return items

    async def get(self, timeout: float) -> Message | Overflow | Control | None:
        """The next control, message or Overflow marker; None when `timeout` passes first."""
        if not self._items and not self._controls:
            waiter, timer = self._park(timeout)
            try:
                await waiter
            finally:
                self._unpark(timer)
        return self.get_nowait()  # None: the timeout came first

    def _park(self, timeout: float) -> "tuple[asyncio.Future[None], asyncio.TimerHandle]":
        # A bare timer rather than asyncio.timeout(): one object fewer per waiting stream.
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        return waiter, loop.call_later(max(timeout, 0), _expire, waiter)

    def _unpark(self, timer: asyncio.TimerHandle) -> None:
        timer.cancel()
        self._waiter = None


def _expire(waiter: "asyncio.Future[None]") -> None:
    if not waiter.done():
        waiter.set_result(None)


def _idle(keepalive: Callable[[], Awaitable[None]] | None) -> float:
    """How long a stream may wait for its next item before its keep-alive is due."""
    if keepalive is None:
        return IDLE_FOREVER
    due_in = getattr(keepalive, "due_in", None)
    return max(0.0, due_in()) if due_in is not None else settings.STREAM_KEEPALIVE_SECONDS


class LiveFeed:
    """One stream's subscription: the groups it follows; accepted messages go to `inbox`.

    `accept` (sync, cheap: it runs in the hub's dispatch) may drop messages early.
    Following and leaving are synchronous bookkeeping in the hub, so a cancelled stream can
    never leave a membership behind; the hub joins and leaves the layer's groups itself.
    """

    __slots__ = ("_accept", "_hub", "direct", "groups", "inbox")

    def __init__(self, accept: Callable[[Message], bool] | None = None) -> None:
        self.inbox = Inbox()
        # Set (`write_directly`) by a stream that lets the hub write for it while it waits
        # (streaming/direct.py): called on the tick with the tick's messages of its group and
        # the tick's shared encodings; returns how many of them it wrote (or dropped).
        self.direct: Callable[[list[Message], dict], int] | None = None
        self._accept = accept
        self._hub: Any = None
        self.groups: frozenset[str] = frozenset()

    async def open(self, groups: Iterable[str]) -> None:
        """Follow the groups (subscribe); returns once the hub is a member (or gave up
        waiting for a failing layer). Call before reading the log."""
        from streaming.hub import Hub

        self._hub = Hub.current()
        await self.set_groups(groups)

    async def set_groups(self, groups: Iterable[str]) -> None:
        assert self._hub is not None, "open() first"
        self.groups = shared(frozenset(groups))
        self._hub.follow(self, self.groups)
        await self._hub.wait_joined(self.groups)

    async def close(self) -> None:
        """Leave every group (synchronously: safe under cancellation)."""
        self.leave()

    def write_directly(self, direct: Callable[[list[Message], dict], int]) -> None:
        self.direct = direct
        if self._hub is not None:
            self._hub.direct_changed(self)

    def leave(self) -> None:
        if self._hub is not None:
            self._hub.unfollow(self)
        self.groups = frozenset()

    def deliver(self, message: Message, *, wake: bool = True) -> bool:
        """Called by the hub for each message of a followed group (no awaiting here).
        True when the message went into the inbox; `wake=False` leaves the stream asleep
        (the hub wakes it on its next tick)."""
        if self._accept is None or self._accept(message):
            self.inbox.put(message, wake=wake)
            return True
        return False
