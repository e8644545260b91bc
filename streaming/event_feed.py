"""The global event stream of one subscriber: lifecycle events from the durable log, output
live; both filtered by the caller's access before anything is sent.

    load the caller's scope ─▶ join the events (and output) groups of the tenants it follows
      ─▶ start at the newest event, or resume after Last-Event-ID (`reset` when that is
         older than the log keeps) ─▶ forward live events the cursor has not seen
      ─▶ every STREAM_ACCESS_RECHECK_SECONDS: reload the scope (revocation), re-join groups,
         and read the log past the cursor if the doorbell missed something
      ─▶ an overflowing inbox: `lagged` (output chunks skipped, counted after this
         subscriber's filters), then lifecycle events resume from the log

Event ids come from one sequence shared by all writers, so a transaction can commit after a
later id's: the cursor remembers the ids it has seen instead of only the highest one.
"""

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings

from executions import publish
from rbac.access import StreamScope, stream_scope
from streaming.db import run_db
from streaming.filters import EventFilter
from streaming.frames import Frame, output_frame
from streaming.live import LiveFeed, Message, Overflow
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

    def __init__(self, after: int):
        self.floor = after  # every id up to here is settled
        self.position = after  # the highest id passed: the SSE `id:`
        self._seen: set[int] = set()
        self._order: deque[int] = deque()

    def admit(self, event_id: int) -> bool:
        """True the first time `event_id` (past the start) comes by."""
        if event_id <= self.floor or event_id in self._seen:
            return False
        self._seen.add(event_id)
        self._order.append(event_id)
        if len(self._order) > REORDER_WINDOW:
            oldest = self._order.popleft()
            self._seen.discard(oldest)
            self.floor = max(self.floor, oldest)
        self.position = max(self.position, event_id)
        return True


def _remember(cache: OrderedDict, key: str, value: Any, bound: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > bound:
        cache.popitem(last=False)


class EventFeed:
    def __init__(self, user, api_key, flt: EventFilter, send: Send, resume_after: int | None):
        self.user = user
        self.api_key = api_key
        self.filter = flt
        self.send = send
        self.resume_after = resume_after
        self.live = LiveFeed(accept=self._accept)
        self.scope = StreamScope()
        self.slugs: dict[int, str] = {}
        self.tenant_ids: dict[str, int] = {}
        self.followed: frozenset[int] = frozenset()
        self.cursor = EventCursor(0)
        self.output_positions: OrderedDict[str, int] = OrderedDict()
        self.meta: OrderedDict[str, tuple[str, str | None]] = OrderedDict()
        self._reset: Frame | None = None

    # --- scope ------------------------------------------------------------------------------
    def _read_scope(self) -> tuple[StreamScope, dict[int, str], frozenset[int]] | None:
        """(scope, tenant slugs, followed tenant ids) read fresh; None: no longer authenticated.

        Runs in the stream pool; the loop swaps the result in (`_apply`).
        """
        scope = stream_scope(self.user, api_key=self.api_key)
        if scope is None:
            return None
        slugs = tenant_slugs()
        followed = scope.followed_tenant_ids()
        if self.filter.tenants is not None:
            followed &= {pk for pk, slug in slugs.items() if slug in self.filter.tenants}
        return scope, slugs, frozenset(followed)

    async def _load_scope(self) -> bool:
        loaded = await run_db(self._read_scope)
        if loaded is None:
            return False
        self.scope, self.slugs, self.followed = loaded
        self.tenant_ids = {slug: pk for pk, slug in self.slugs.items()}
        return True

    def _groups(self) -> list[str]:
        groups = [publish.tenant_events_group(pk) for pk in self.followed]
        if self.filter.wants_output:
            groups += [publish.tenant_output_group(pk) for pk in self.followed]
        return groups

    def _log_tenants(self) -> frozenset[int] | None:
        """Tenants to read the log in; None: all of them (cheaper than a list of all)."""
        everything = self.scope.all_tenants and self.filter.tenants is None
        return None if everything else self.followed

    async def open(self) -> bool:
        """Load the caller's scope, subscribe, and fix where the stream starts.

        False when the caller no longer authenticates. Everything committed after this
        returns reaches the subscriber.
        """
        if not await self._load_scope():
            return False
        await self.live.open(self._groups())
        if self.resume_after is None:
            self.cursor = EventCursor(await run_db(latest_event_id))
        else:
            earliest = await run_db(earliest_event_id)
            self.cursor = EventCursor(max(self.resume_after, earliest - 1))
            if self.resume_after + 1 < earliest:
                data = {"last_event_id": self.resume_after, "earliest_id": earliest}
                self._reset = Frame("reset", data, id=earliest - 1)
        return True

    async def close(self) -> None:
        await self.live.close()

    # --- the loop -------------------------------------------------------------------------
    async def run(self) -> None:
        """Until the client leaves, or its access is revoked (AccessRevoked)."""
        await self._start()
        refresh_at = time.monotonic() + settings.STREAM_ACCESS_RECHECK_SECONDS
        while True:
            if time.monotonic() >= refresh_at:
                await self._refresh()
                refresh_at = time.monotonic() + settings.STREAM_ACCESS_RECHECK_SECONDS
            item = await self.live.inbox.get(refresh_at - time.monotonic())
            if isinstance(item, Overflow):
                await self._on_overflow(item)
            elif item is not None and item["type"] == "execution.event":
                await self._on_event(item)
            elif item is not None and item["type"] == "output.batch":
                await self._on_output(item)

    async def _start(self) -> None:
        if self._reset is not None:
            await self.send([self._reset])
        if self.resume_after is not None:
            await self._catch_up(self.cursor.floor)

    async def _refresh(self) -> None:
        if not await self._load_scope():
            raise AccessRevoked("stream")
        await self.live.set_groups(self._groups())
        await self.live.renew()
        # An empty inbox may mean a lost doorbell: ask the log (an index probe) if it has more.
        if self.filter.wants_lifecycle and not self.live.inbox:
            position = self.cursor.position
            if await run_db(events_after_exist, position, self._log_tenants()):
                await self._catch_up(position)

    # --- lifecycle events -------------------------------------------------------------------
    def _lifecycle_frame(self, tenant_id: int | None, event: str, payload: dict) -> Frame | None:
        execution_id = payload.get("id")
        if execution_id and payload.get("action_ref"):
            _remember(
                self.meta, execution_id, (payload["action_ref"], payload.get("parent")), META_CACHE
            )
        if not self.scope.allows(tenant_id, execution_id, payload.get("parent")):
            return None
        if not self.filter.matches_event(event, payload):
            return None
        return Frame(event, payload, id=self.cursor.position, execution=execution_id)

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
    async def _accept(self, message: Message) -> bool:
        """Filter output in the pump, so `lagged` counts only what this subscriber wants."""
        if message.get("type") == "execution.event":
            # Learn a new workflow child here, before its first output reaches this filter.
            payload = message.get("payload") or {}
            self.scope.allows(message.get("tenant_id"), payload.get("id"), payload.get("parent"))
        if message.get("type") != "output.batch":
            return True  # lifecycle: the cursor and filters decide, in order
        try:
            execution_id, tenant_id = message["execution_id"], message.get("tenant_id")
            if not self.filter.wants_output or not self.scope.allows(tenant_id, execution_id):
                return False
            action_ref, parent = await self._meta(execution_id, message)
            tenant = self.slugs.get(tenant_id) if tenant_id is not None else None
            return self.filter.matches_output(tenant, execution_id, action_ref, parent)
        except Exception:  # never let one odd message stop the pump
            log.warning("could not filter an output message", exc_info=True)
            return False

    async def _meta(self, execution_id: str, message: Message) -> tuple[str | None, str | None]:
        if execution_id in self.meta:
            return self.meta[execution_id]
        chunks = message.get("chunks")
        if chunks and not self.filter.needs_parent:
            return chunks[0]["action_ref"], None
        if self.filter.actions is None and not self.filter.needs_parent:
            return None, None
        meta = await run_db(execution_meta, execution_id)
        if meta is None:
            return None, None
        _remember(self.meta, execution_id, meta, META_CACHE)
        return meta

    async def _on_output(self, message: Message) -> None:
        execution_id = message["execution_id"]
        first, last, chunks = message["first_seq"], message["last_seq"], message["chunks"]
        position = self.output_positions.get(execution_id, first - 1)
        if last <= position:
            return
        if chunks is None or first > position + 1:
            chunks = await self._backfill(execution_id, position, last)
        else:
            chunks = [chunk for chunk in chunks if chunk["seq"] > position]
        if chunks:
            await self.send([output_frame(chunk, with_id=False) for chunk in chunks])
        _remember(self.output_positions, execution_id, last, OUTPUT_POSITIONS)

    async def _backfill(self, execution_id: str, after: int, upto: int) -> list[dict]:
        if upto - after > OUTPUT_BACKFILL_MAX:
            skipped = upto - OUTPUT_BACKFILL_MAX - after
            await self.send(
                [Frame("lagged", {"skipped": skipped, "resumed_after": self.cursor.position})]
            )
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
            if last > position:
                skipped += last - max(position, first - 1)
                _remember(self.output_positions, execution_id, last, OUTPUT_POSITIONS)
        resumed_after = self.cursor.floor
        await self.send([Frame("lagged", {"skipped": skipped, "resumed_after": resumed_after})])
        await self._catch_up(resumed_after)
