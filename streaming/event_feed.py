"""The global event stream of one subscriber: lifecycle events from the durable log, output
live; both filtered by the caller's access before anything is sent.

    load the caller's scope ─▶ follow the events (and output) groups of the tenants it
      follows (through the process's hub) ─▶ start at the newest event, or resume after
      Last-Event-ID (`reset` when that is older than the log keeps) ─▶ forward live events
      the cursor has not seen
      ─▶ an access verdict from the guard (doorbell, or the periodic safety re-check):
         swap in the new scope and groups, or end; read the log past the cursor if the
         doorbell missed something
      ─▶ an overflowing inbox: `lagged` (output chunks skipped, counted after this
         subscriber's filters), then lifecycle events resume from the log

Event ids come from one sequence shared by all writers, so a transaction can commit after a
later id's: the cursor remembers the ids it has seen instead of only the highest one.
"""

import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

from executions import publish
from rbac.access import StreamScope, stream_scope, visible_among
from streaming import event_ids
from streaming.db import run_db
from streaming.filters import EventFilter
from streaming.frames import Frame, live_output_frames, output_frame
from streaming.live import Control, Kept, LiveFeed, Message, Overflow, shared
from streaming.output_cursor import AccessRevoked
from streaming.replay import (
    PAGE_ROWS,
    earliest_event_id,
    events_after_exist,
    execution_meta,
    latest_event_id,
    output_state,
    read_chunks,
    read_events,
    tenant_slugs,
)

log = logging.getLogger(__name__)

Send = Callable[[list[Frame]], Awaitable[None]]
Started = Callable[[], Awaitable[None]]

# Event ids remembered: one whose transaction commits after up to this many later ones still
# gets through, once.
REORDER_WINDOW = 1024
# Executions whose output position (last seq sent) a subscriber remembers, newest first.
OUTPUT_POSITIONS = 1000
# A live output batch that shows a hole is backfilled from the log up to this many chunks;
# a bigger hole is skipped and reported in `lagged` (the per-execution stream has them all).
OUTPUT_BACKFILL_MAX = 5000
# Executions whose (action_ref, parent) a subscriber remembers for filtering output.
META_CACHE = 1000


class EventCursor:
    """Which lifecycle event ids this subscriber has passed (sent or filtered out)."""

    __slots__ = ("_order", "_seen", "floor", "position")

    def __init__(self, after: int):
        self.floor = after  # every id up to here is settled
        self.position = after  # the highest id passed: the SSE `id:`
        # Made on the first event: an idle subscriber keeps neither.
        self._seen: set[int] | None = None
        self._order: deque[int] | None = None

    def admit(self, event_id: int) -> bool:
        """True the first time `event_id` (past the start) comes by."""
        if event_id <= self.floor or (self._seen is not None and event_id in self._seen):
            return False
        if self._seen is None or self._order is None:
            self._seen, self._order = set(), deque()
        self._seen.add(event_id)
        self._order.append(event_id)
        if len(self._order) > REORDER_WINDOW:
            oldest = self._order.popleft()
            self._seen.discard(oldest)
            self.floor = max(self.floor, oldest)
        self.position = max(self.position, event_id)
        return True


# What an idle subscriber's caches are until it remembers something: one shared empty
# mapping, not two OrderedDicts per stream.
NOTHING: Mapping[str, Any] = MappingProxyType({})


def _remember(cache: Mapping, key: str, value: Any, bound: int) -> OrderedDict:
    """`cache` with key → value (newest last, at most `bound`): NOTHING becomes a new dict."""
    if not isinstance(cache, OrderedDict):
        cache = OrderedDict()
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > bound:
        cache.popitem(last=False)
    return cache


# Distinct tenant tables kept shared (one per moment the tenants changed, in practice).
TENANT_MAPS = 16
_tenant_maps_kept: Kept[frozenset, tuple[dict[int, str], dict[str, int]]] = Kept(TENANT_MAPS)


def _tenant_maps(slugs: dict[int, str]) -> tuple[dict[int, str], dict[str, int]]:
    """(slug by tenant id, tenant id by slug), one pair for every stream that read the same
    tenants: thousands of idle streams hold one, not two dicts each. Read-only."""
    return _tenant_maps_kept.get(
        frozenset(slugs.items()), lambda: (slugs, {slug: pk for pk, slug in slugs.items()})
    )


class CredentialsGone(Exception):
    """The caller no longer authenticates (checked when the stream opens)."""


class EventFeed:
    """The global stream of one subscriber, run by `run()` within its stream session."""

    # Slots: thousands of idle subscribers per process (docs/benchmarks-fanout.md, idle).
    __slots__ = (
        "_reset",
        "cursor",
        "filter",
        "followed",
        "hidden",
        "keepalive",
        "live",
        "meta",
        "output_positions",
        "requested_after",
        "resume_after",
        "send",
        "session",
        "slugs",
        "tenant_ids",
        "visibility",
    )

    def __init__(
        self,
        session,
        flt: EventFilter,
        send: Send,
        resume_after: int | None,
        keepalive: Callable[[], Awaitable[None]] | None = None,
    ):
        self.session = session
        self.filter = flt
        self.send = send
        # The client's token (streaming/event_ids.py), and the event id it stands for
        # (past every id when it cannot be one: that is answered with a `reset`).
        self.requested_after = resume_after
        if resume_after is not None:
            decoded = event_ids.decode(resume_after)
            resume_after = event_ids.LIMIT if decoded is None else decoded
        self.resume_after = resume_after
        self.keepalive = keepalive
        self.live: LiveFeed | None = None
        self.visibility = StreamScope()
        self.slugs: dict[int, str] = {}
        self.tenant_ids: dict[str, int] = {}
        self.followed: frozenset[int] = frozenset()
        self.cursor = EventCursor(0)
        self.output_positions: Mapping[str, int] = NOTHING
        self.meta: Mapping[str, tuple[str, str | None]] = NOTHING
        # Executions of a granted tenant read from the database and found not visible.
        self.hidden: Mapping[str, bool] = NOTHING
        self._reset: Frame | None = None

    # --- scope ------------------------------------------------------------------------------
    def _read_scope(self) -> tuple[StreamScope, dict[int, str]] | None:
        """(scope, tenant slugs) read fresh; None: no longer authenticated. In the pool."""
        scope = stream_scope(self.session.user, api_key=self.session.api_key)
        return None if scope is None else (scope, tenant_slugs())

    def _apply_scope(self, scope: StreamScope, slugs: dict[int, str]) -> None:
        self.visibility = scope
        self.slugs, self.tenant_ids = _tenant_maps(slugs)
        self.hidden = NOTHING  # a new scope may show what the old one hid
        followed = frozenset(slugs) if scope.all_tenants else scope.followed_tenant_ids()
        if self.filter.tenants is not None:
            followed &= {pk for pk, slug in slugs.items() if slug in self.filter.tenants}
        self.followed = shared(frozenset(followed))

    def _groups(self) -> list[str]:
        groups = [publish.tenant_events_group(pk) for pk in self.followed]
        if self.filter.wants_output:
            groups += [publish.tenant_output_group(pk) for pk in self.followed]
        return groups

    def _log_tenants(self) -> frozenset[int] | None:
        """Tenants to read the log in; None: all of them (cheaper than a list of all)."""
        everything = self.visibility.all_tenants and self.filter.tenants is None
        return None if everything else self.followed

    async def _open_cursor(self) -> None:
        """Fix where the stream starts. Everything committed after this reaches it."""
        latest = await run_db(latest_event_id)
        if self.resume_after is None:
            self.cursor = EventCursor(latest)
            return
        earliest = await run_db(earliest_event_id)
        if self.resume_after > latest:  # from the future: forged, or another installation
            self._reset_to(earliest, start=latest)
            self.resume_after = None  # live from now on
            self.cursor = EventCursor(latest)
            return
        self.cursor = EventCursor(max(self.resume_after, earliest - 1))
        if self.resume_after + 1 < earliest:
            self._reset_to(earliest, start=earliest - 1)

    def _reset_to(self, earliest: int, *, start: int) -> None:
        data = {"last_event_id": self.requested_after, "earliest_id": event_ids.encode(earliest)}
        self._reset = Frame("reset", data, id=event_ids.encode(start))

    # --- the loop -------------------------------------------------------------------------
    async def run(self, started: Started) -> None:
        """Until the client leaves, or its access is revoked (AccessRevoked).

        CredentialsGone before `started` is called when the caller no longer authenticates.
        """
        loaded = await run_db(self._read_scope)
        if loaded is None:
            raise CredentialsGone()
        self._apply_scope(*loaded)
        async with self.session.follow(
            self._groups(), wants_scope=True, accept=self._accept
        ) as live:
            self.live = live
            await self._open_cursor()
            await started()
            await self._start()
            # The loop is here, not in a method of its own: one frame fewer on the stack of
            # each waiting stream.
            while True:
                for item in await live.inbox.take(self.keepalive):
                    await self._handle(item)

    async def _handle(self, item: Message | Overflow | Control) -> None:
        if isinstance(item, Control):
            await self._on_control(item)
        elif isinstance(item, Overflow):
            await self._on_overflow(item)
        elif item["type"] == "execution.event":
            await self._on_event(item)
        elif item["type"] == "output.batch":
            await self._on_output(item)

    async def _start(self) -> None:
        if self._reset is not None:
            await self.send([self._reset])
        if self.resume_after is not None:
            await self._catch_up(self.cursor.floor)

    async def _on_control(self, control: Control) -> None:
        if control.kind == "access":
            verdict = control.value
            reason = verdict.revoked()
            if reason is not None:
                raise AccessRevoked(reason, 401)
            if verdict.scope is not None:
                self._apply_scope(*verdict.scope)
                assert self.live is not None
                groups = self._groups()
                if frozenset(groups) != self.live.groups:
                    await self.live.set_groups(groups)
        # After a verdict or a resync: a lost doorbell leaves the log ahead of the cursor.
        # Every stream told at once asks the same of the log: one read answers them all.
        if self.filter.wants_lifecycle:
            position, tenants = self.cursor.position, self._log_tenants()
            ahead = await control.shared_read(
                ("events after", position, tenants),
                lambda: run_db(events_after_exist, position, tenants),
            )
            if ahead:
                await self._catch_up(position)

    # --- lifecycle events -------------------------------------------------------------------
    def _lifecycle_frame(self, tenant_id: int | None, event: str, payload: dict) -> Frame | None:
        execution_id = payload.get("id")
        if execution_id and payload.get("action_ref"):
            meta = (payload["action_ref"], payload.get("parent"))
            self.meta = _remember(self.meta, execution_id, meta, META_CACHE)
        if not self.visibility.allows(tenant_id, execution_id, payload.get("parent")):
            return None
        if not self.filter.matches_event(event, payload):
            return None
        position = event_ids.encode(self.cursor.position)
        return Frame(event, payload, id=position, execution=execution_id)

    async def _catch_up(self, after: int) -> None:
        """Send the log's events past `after`, a page at a time (those not yet seen)."""
        if not self.filter.wants_lifecycle:
            return
        while True:
            rows = await run_db(read_events, after, self._log_tenants())
            frames = []
            for row in rows:
                if self.cursor.admit(row.id):
                    frame = self._lifecycle_frame(row.tenant_id, row.event, row.payload)
                    if frame is not None:
                        frames.append(frame)
            if frames:
                await self.send(frames)
            if len(rows) < PAGE_ROWS:
                return
            after = rows[-1].id

    async def _on_event(self, message: Message) -> None:
        if not self.cursor.admit(message["id"]):
            return
        payload = message["payload"]
        tenant_id = self.tenant_ids.get(payload.get("tenant"))
        frame = self._lifecycle_frame(tenant_id, message["event"], payload)
        if frame is not None:
            await self.send([frame])

    # --- output ---------------------------------------------------------------------------
    def _accept(self, message: Message) -> bool:
        """The cheap part of the filter, in the hub's dispatch: what this caller may see and
        wants at all. (Action and parent filters may need a read: `_wants_output`.)"""
        if message.get("type") == "execution.event":
            # Learn a new workflow child here, before its first output reaches this filter.
            payload = message.get("payload") or {}
            self.visibility.allows(
                message.get("tenant_id"), payload.get("id"), payload.get("parent")
            )
        if message.get("type") != "output.batch":
            return True  # lifecycle: the cursor and filters decide, in order
        try:
            execution_id, tenant_id = message["execution_id"], message.get("tenant_id")
            if not self.filter.wants_output:
                return False
            if not self.visibility.allows(tenant_id, execution_id):
                return self._may_be_granted_child(tenant_id, execution_id)
            meta = self._known_meta(execution_id, message)
            if meta is None:
                return True  # needs a read: `_on_output` decides
            tenant = self.slugs.get(tenant_id) if tenant_id is not None else None
            return self.filter.matches_output(tenant, execution_id, *meta)
        except Exception:  # never let one odd message stop the dispatch
            log.warning("could not filter an output message", exc_info=True)
            return False

    def _may_be_granted_child(self, tenant_id: int | None, execution_id: str) -> bool:
        """Output of an execution not known to be visible, in a tenant followed for a grant on
        some of its executions: a new child of one of them whose `execution__create` has not
        come by yet (it travels in the events group, the output in the output group, and
        Redis does not order two groups). `_may_see` asks the database once."""
        return (
            tenant_id in self.visibility.granted_tenant_ids
            and tenant_id not in self.visibility.tenant_ids
            and execution_id not in self.hidden
        )

    async def _may_see(self, execution_id: str, tenant_id: int | None) -> bool:
        if self.visibility.allows(tenant_id, execution_id):
            return True
        if not self._may_be_granted_child(tenant_id, execution_id):
            return False
        wanted = frozenset({execution_id})
        user, api_key = self.session.user, self.session.api_key
        if await run_db(visible_among, user, wanted, api_key=api_key):
            self.visibility.learn(execution_id)
            return True
        self.hidden = _remember(self.hidden, execution_id, True, META_CACHE)
        return False

    async def _wants_output(
        self, execution_id: str, tenant_id: int | None, message: Message | None = None
    ) -> bool:
        """Visible and through the whole output filter (`lagged` counts only those)."""
        if not await self._may_see(execution_id, tenant_id):
            return False
        action_ref, parent = await self._meta(execution_id, message)
        tenant = self.slugs.get(tenant_id) if tenant_id is not None else None
        return self.filter.matches_output(tenant, execution_id, action_ref, parent)

    def _known_meta(
        self, execution_id: str, message: Message | None
    ) -> tuple[str | None, str | None] | None:
        """(action_ref, parent) as far as the filter needs them, if known without a read."""
        if execution_id in self.meta:
            return self.meta[execution_id]
        chunks = message.get("chunks") if message is not None else None
        if chunks and not self.filter.needs_parent:
            return chunks[0]["action_ref"], None
        if self.filter.actions is None and not self.filter.needs_parent:
            return None, None
        return None

    async def _meta(
        self, execution_id: str, message: Message | None
    ) -> tuple[str | None, str | None]:
        known = self._known_meta(execution_id, message)
        if known is not None:
            return known
        meta = await run_db(execution_meta, execution_id)
        if meta is None:
            return None, None
        self.meta = _remember(self.meta, execution_id, meta, META_CACHE)
        return meta

    async def _on_output(self, message: Message) -> None:
        execution_id = message["execution_id"]
        first, last, chunks = message["first_seq"], message["last_seq"], message["chunks"]
        position = self.output_positions.get(execution_id, first - 1)
        if last <= position:
            return
        if not await self._wants_output(execution_id, message.get("tenant_id"), message):
            return
        if chunks is None or first > position + 1:
            frames = [
                output_frame(chunk, with_id=False)
                for chunk in await self._backfill(execution_id, position, last)
            ]
        else:
            frames = live_output_frames(message, with_id=False)
            if first <= position:
                frames = [frame for frame in frames if frame.data["seq"] > position]
        if frames:
            await self.send(frames)
        self.output_positions = _remember(
            self.output_positions, execution_id, last, OUTPUT_POSITIONS
        )

    async def _backfill(self, execution_id: str, after: int, upto: int) -> list[dict]:
        if upto - after > OUTPUT_BACKFILL_MAX:
            skipped = upto - OUTPUT_BACKFILL_MAX - after
            await self.send([self._lagged(skipped, self.cursor.position)])
            after = upto - OUTPUT_BACKFILL_MAX

        def read() -> list[dict]:
            state = output_state(execution_id)
            chunks: list[dict] = []
            position = after
            while state is not None and position < upto:
                page = read_chunks(state, position, upto, None)
                chunks += page
                position = page[-1]["seq"] if len(page) == PAGE_ROWS else upto
            return chunks

        return await run_db(read)

    async def _on_overflow(self, overflow: Overflow) -> None:
        skipped = 0
        for execution_id, (first, last) in overflow.output_ranges.items():
            position = self.output_positions.get(execution_id, first - 1)
            tenant_id = overflow.tenants.get(execution_id)
            if last > position and await self._wants_output(execution_id, tenant_id):
                skipped += last - max(position, first - 1)
                self.output_positions = _remember(
                    self.output_positions, execution_id, last, OUTPUT_POSITIONS
                )
        resumed_after = self.cursor.floor
        await self.send([self._lagged(skipped, resumed_after)])
        await self._catch_up(resumed_after)

    def _lagged(self, skipped: int, resumed_after: int) -> Frame:
        return Frame(
            "lagged", {"skipped": skipped, "resumed_after": event_ids.encode(resumed_after)}
        )
