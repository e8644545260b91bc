"""One subscription per (web process, group): the hub that fans live messages out locally.

    streams ── follow(feed, groups) / unfollow(feed) ──▶ Hub   (synchronous bookkeeping)
    Hub ── group_add / group_discard (one channel per process) ──▶ channel layer
    channel layer ── receive (one loop per process) ──▶ Hub ── deliver ──▶ every local feed

However many viewers a process serves, the layer carries each message to it once, on one
channel, decoded once; the hub hands the same message object to each local feed's inbox (no
awaiting, so a slow stream never slows the others: its own bounded inbox overflows and it
reads the log instead). With STREAM_COALESCE_MIN_STREAMS streams or more in the process, the
hub wakes them on a tick (STREAM_COALESCE_SECONDS) instead of per message: each stream then
wakes and writes once per tick for all that came, which is what lets one process serve a
thousand viewers of a busy execution; a process with few streams keeps waking at once.
A stream that lets the hub write for it (streaming/direct.py) is not handed each message
at all then: the hub keeps the tick's messages once per group, and on the tick offers them
to each such stream, whose inbox gets only what it could not write.

Memberships are reconciled by one task: wanted groups (those some local feed follows) are
joined, the rest left after STREAM_GROUP_LINGER_SECONDS, every held one re-joined every
GROUP_RENEW_SECONDS. Groups expire on the layer after `group_expiry` (project settings), so
a process that dies leaves nothing behind for long. When the layer fails (Redis restarts and
forgets every membership) the hub re-joins everything as soon as it answers again, and tells
every local stream to read the log (`resync`), since messages may have been lost meanwhile.

The channel layer's messages do not say which group they came through, so the hub derives
the groups from the message itself (`message_groups`), and skips a message it already
dispatched through another group (batches go to the execution's and the tenant's group).
"""

import asyncio
import contextlib
import logging
import time
import weakref
from collections import OrderedDict, defaultdict
from collections.abc import Iterable

from channels.layers import get_channel_layer
from django.conf import settings

from executions import publish
from rbac.signals import ACCESS_GROUP, ACCESS_MESSAGE
from streaming.guard import Guard
from streaming.live import Control, LiveFeed, Message

log = logging.getLogger(__name__)

# Re-join held groups this often, well inside the layer's group_expiry (settings), so live
# memberships never lapse while those of a dead process do.
GROUP_RENEW_SECONDS = 60.0
# A new stream waits at most this long for its group to be joined; past it (the layer is
# failing, or the process is starved), it goes on from the database, and is told to resync
# once the group is joined (what was published meanwhile never reached this process).
JOIN_WAIT_SECONDS = 5.0
# A failing layer is retried this often.
LAYER_RETRY_SECONDS = 1.0
# Messages remembered to drop the second copy of one that came through two groups.
RECENT_MESSAGES = 4096
# Redis forgets every membership when it restarts, and the client may reconnect without an
# error reaching us: the hub asks Redis for its run id this often and re-joins on a change.
LAYER_PROBE_SECONDS = 2.0


def message_groups(message: Message) -> list[str]:
    """The groups a message was published to (see executions/publish.py and services)."""
    kind = message.get("type")
    if kind == "output.batch":
        groups = [publish.execution_group(message["execution_id"])]
        if message.get("tenant_id") is not None:
            groups.append(publish.tenant_output_group(message["tenant_id"]))
        return groups
    if kind == "execution.event":
        groups = [publish.tenant_events_group(message["tenant_id"])]
        execution_id = (message.get("payload") or {}).get("id")
        if execution_id:
            groups.append(publish.execution_group(execution_id))
        return groups
    return []


def _message_key(message: Message) -> tuple | None:
    kind = message.get("type")
    if kind == "output.batch":
        return ("o", message["execution_id"], message["first_seq"], message["last_seq"])
    if kind == "execution.event":
        return ("e", message.get("id"))
    return None


def _is_idle_timeout(exc: BaseException) -> bool:
    """A blocking receive that timed out on an idle channel: not a failure."""
    return type(exc).__name__ == "TimeoutError" and type(exc).__module__.startswith("redis")


class Hub:
    """The process's (more exactly: the event loop's) single member of every followed group."""

    _hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub]" = weakref.WeakKeyDictionary()

    @classmethod
    def current(cls) -> "Hub":
        """The hub of the running loop and the current channel layer (made on first use)."""
        loop = asyncio.get_running_loop()
        layer = get_channel_layer()
        hub = cls._hubs.get(loop)
        if hub is None or hub.layer is not layer:
            if hub is not None:
                hub.stop()
            hub = cls._hubs[loop] = cls(layer)
        return hub

    def __init__(self, layer) -> None:
        self.layer = layer
        self.channel: str | None = None
        self.followers: dict[str, set[LiveFeed]] = defaultdict(set)
        # The followers that let the hub write for them (streaming/direct.py), and the rest.
        self._direct: dict[str, set[LiveFeed]] = defaultdict(set)
        self._plain: dict[str, set[LiveFeed]] = defaultdict(set)
        # group → messages since the last tick, kept once for that group's direct followers
        self._pending: dict[str, list[Message]] = {}
        self._groups_of: dict[LiveFeed, frozenset[str]] = {}
        self._late: set[str] = set()  # groups whose streams stopped waiting for the join
        self._asleep: set[LiveFeed] = set()  # got messages, to be woken on the next tick
        self._tick: asyncio.TimerHandle | None = None
        self.joined: dict[str, float] = {}  # group → when it was (re-)joined
        self.unwanted_since: dict[str, float] = {}
        self._probed_at = 0.0
        self.guard = Guard()
        self.layer_failed = False
        self._run_id: str | None = None
        self._recent: OrderedDict[tuple, None] = OrderedDict()
        self._changed = asyncio.Event()
        self._membership = asyncio.Condition()
        self._tasks: list[asyncio.Task] = []

    # --- bookkeeping (synchronous: cancellation cannot interrupt it) -------------------------
    def follow(self, feed: LiveFeed, groups: Iterable[str]) -> None:
        self._drop(feed)
        self._groups_of[feed] = frozenset(groups)
        for group in self._groups_of[feed]:
            self.followers[group].add(feed)
            (self._plain if feed.direct is None else self._direct)[group].add(feed)
            self.unwanted_since.pop(group, None)
        self._ensure_started()
        self._changed.set()

    def direct_changed(self, feed: LiveFeed) -> None:
        """`feed.direct` was set: from the next message on, its messages wait for the tick."""
        for group in self._groups_of.get(feed, ()):
            self._plain[group].discard(feed)
            (self._plain if feed.direct is None else self._direct)[group].add(feed)

    def unfollow(self, feed: LiveFeed) -> None:
        self._drop(feed)
        self._changed.set()

    def _drop(self, feed: LiveFeed) -> None:
        self._asleep.discard(feed)
        for group in self._groups_of.pop(feed, ()):
            for kind in (self._direct, self._plain):
                if group in kind:
                    kind[group].discard(feed)
                    if not kind[group]:
                        del kind[group]
            feeds = self.followers.get(group)
            if feeds is None:
                continue
            feeds.discard(feed)
            if not feeds:
                del self.followers[group]
                self.unwanted_since[group] = time.monotonic()

    def feeds(self) -> set[LiveFeed]:
        return set(self._groups_of)

    async def wait_joined(self, groups: Iterable[str]) -> bool:
        """Wait until the layer has the hub in every group (False: gave up, layer failing)."""
        wanted = set(groups)
        try:
            async with asyncio.timeout(JOIN_WAIT_SECONDS), self._membership:
                await self._membership.wait_for(lambda: wanted <= self.joined.keys())
            return True
        except TimeoutError:
            log.warning("channel layer: joining %d group(s) is taking long", len(wanted))
            self._late |= wanted - self.joined.keys()
            return False

    # --- tasks ---------------------------------------------------------------------------
    def _ensure_started(self) -> None:
        if self._tasks and not any(task.done() for task in self._tasks):
            return
        self.stop()
        self._tasks = [
            asyncio.create_task(self._run_receiver(), name="hub receiver"),
            asyncio.create_task(self._run_membership(), name="hub membership"),
        ]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None

    async def _channel(self) -> str:
        if self.channel is None:
            self.channel = await self.layer.new_channel("tailgate-hub")
        return self.channel

    async def _run_membership(self) -> None:
        while True:
            # Cleared before the pass, so a stream that follows a group while the pass is
            # awaiting the layer makes the next pass come at once.
            self._changed.clear()
            try:
                await self._probe_layer()
                await self._reconcile()
                self.layer_failed = False
            except asyncio.CancelledError:
                raise
            except Exception:
                if not self.layer_failed:
                    log.warning("channel layer: group membership failed; retrying", exc_info=True)
                self.layer_failed = True
                await asyncio.sleep(LAYER_RETRY_SECONDS)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._next_wake()):
                    await self._changed.wait()

    def _next_wake(self) -> float:
        now = time.monotonic()
        deadlines = [at + GROUP_RENEW_SECONDS for at in self.joined.values()]
        deadlines += [
            at + settings.STREAM_GROUP_LINGER_SECONDS for at in self.unwanted_since.values()
        ]
        if hasattr(self.layer, "connection"):
            deadlines.append(now + LAYER_PROBE_SECONDS)
        return max(0.05, min(deadlines, default=now + GROUP_RENEW_SECONDS) - now)

    async def _probe_layer(self) -> None:
        """Notice a Redis restart (a new run id) even if no command failed across it."""
        if not hasattr(self.layer, "connection"):
            return  # the in-memory layer cannot forget
        if time.monotonic() - self._probed_at < LAYER_PROBE_SECONDS:
            return
        self._probed_at = time.monotonic()
        info = await self.layer.connection(0).info("server")
        run_id = info.get("run_id")
        if self._run_id is not None and run_id != self._run_id:
            self._recover()
        self._run_id = run_id

    async def _reconcile(self) -> None:
        channel = await self._channel()
        now = time.monotonic()
        wanted = set(self.followers) | {ACCESS_GROUP}
        for group in sorted(wanted):
            if now - self.joined.get(group, -GROUP_RENEW_SECONDS) >= GROUP_RENEW_SECONDS:
                await self.layer.group_add(group, channel)
                self.joined[group] = time.monotonic()
                async with self._membership:
                    self._membership.notify_all()
                if group in self._late:  # its streams gave up waiting: have them read the log
                    self._late.discard(group)
                    resync = Control("resync")  # one for all: they share its reads
                    for feed in self.followers.get(group, ()):
                        feed.inbox.control(resync)
        for group, since in list(self.unwanted_since.items()):
            if group in self.followers:  # followed again meanwhile: keep it
                self.unwanted_since.pop(group, None)
            elif now - since >= settings.STREAM_GROUP_LINGER_SECONDS:
                # Forget it first: a stream that follows it during the discard waits for the
                # next pass to join it again (it is then neither joined nor lingering).
                self.unwanted_since.pop(group, None)
                self.joined.pop(group, None)
                await self.layer.group_discard(group, channel)
                if group in self.followers:
                    self._changed.set()

    async def _run_receiver(self) -> None:
        channel = await self._retrying(self._channel)
        failed = False
        while True:
            try:
                message = await self.layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if _is_idle_timeout(exc):
                    continue
                if not failed:
                    log.warning("channel layer: receive failed (%s); retrying", exc)
                failed = True
                await asyncio.sleep(LAYER_RETRY_SECONDS)
                continue
            if failed:
                failed = False
                self._recover()
            self.dispatch(message)

    async def _retrying(self, fn):
        while True:
            try:
                return await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(LAYER_RETRY_SECONDS)

    def _recover(self) -> None:
        """The layer answers again: re-join everything, and have every stream read the log."""
        log.warning("channel layer: receiving again; re-joining groups and resyncing streams")
        self.joined.clear()
        self._changed.set()
        self.resync_all()
        self.guard.recheck_all()  # access doorbells may have been lost too

    def resync_all(self) -> None:
        resync = Control("resync")  # one for all: they share its reads
        for feed in self.feeds():
            feed.inbox.control(resync)

    # --- dispatch -------------------------------------------------------------------------
    def dispatch(self, message: Message) -> None:
        """Hand one message to every local feed of its groups (once, however it came)."""
        if message.get("type") == ACCESS_MESSAGE:
            self.guard.on_access_message(message)
            return
        key = _message_key(message)
        if key is not None:
            if key in self._recent:
                return
            self._recent[key] = None
            if len(self._recent) > RECENT_MESSAGES:
                self._recent.popitem(last=False)
        message["received_at"] = time.monotonic()  # what a read must start after to see it
        # Many local streams: wake them on the next tick rather than per message, so each
        # wakes (and writes) once per tick for whatever arrived meanwhile.
        coalesce = len(self._groups_of) >= settings.STREAM_COALESCE_MIN_STREAMS
        delivered: set[int] = set()
        for group in message_groups(message):
            if coalesce:
                feeds = self._plain.get(group, ())
                if group in self._direct:  # kept once; no per-stream work until the tick
                    self._pending.setdefault(group, []).append(message)
            else:
                feeds = self.followers.get(group, ())
            for feed in list(feeds):
                if id(feed) not in delivered:
                    delivered.add(id(feed))
                    if feed.deliver(message, wake=not coalesce) and coalesce:
                        self._asleep.add(feed)
        if (self._asleep or self._pending) and self._tick is None:
            loop = asyncio.get_running_loop()
            self._tick = loop.call_later(settings.STREAM_COALESCE_SECONDS, self._wake_all)

    def _wake_all(self) -> None:
        """The tick: offer each group's messages since the last one to its streams that let
        the hub write for them (streaming/direct.py); wake the others that got messages."""
        self._tick = None
        asleep, self._asleep = self._asleep, set()
        pending, self._pending = self._pending, {}
        shared: dict = {}  # this tick's encodings, shared by streams at the same position
        for group, messages in pending.items():
            for feed in list(self._direct.get(group, ())):
                self._write_direct(feed, messages, shared)
        for feed in asleep:
            feed.inbox.wake()

    def _write_direct(self, feed: LiveFeed, messages: list[Message], shared: dict) -> None:
        """What the stream does not write (it may write none) goes to its inbox, woken."""
        assert feed.direct is not None
        try:
            written = feed.direct(messages, shared)
        except Exception:  # its own task takes over (and meets the error, if it lasts)
            log.warning("direct write failed; waking the stream", exc_info=True)
            written = 0
        if written < len(messages):
            for message in messages[written:]:
                feed.deliver(message, wake=False)
            feed.inbox.wake()
