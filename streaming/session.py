"""One stream session, three formats: what every stream does, written once.

    open ─▶ follow groups through the process hub (subscribe), and register with the access
            guard under the caller's principal ─▶ read state after subscribing
         ─▶ run the cursor (one execution's output) or the feed (every event the caller
            may see) ─▶ end: done, revoked (AccessRevoked, with the reason), or the client
            left (cancelled) ─▶ leave the groups and the guard (synchronously: a cancelled
            stream cannot leave a membership behind)

The formats are adapters that only say how frames are written and what starts a stream:
plain text and SSE (streaming/endpoints/output.py, events.py) and WebSocket subscriptions
(streaming/endpoints/websocket.py).
"""

from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from executions import publish
from rbac.access import NotVisible, access_execution
from streaming import output_cursor
from streaming.db import run_db
from streaming.direct import DirectSink
from streaming.event_feed import EventFeed
from streaming.family import FamilyCursor
from streaming.family_ids import Resume
from streaming.family_reads import root_row
from streaming.filters import EventFilter
from streaming.frames import Frame
from streaming.guard import Principal, Watcher
from streaming.hub import Hub
from streaming.live import LiveFeed, Message
from streaming.output_cursor import OutputCursor
from streaming.params import OutputWindow, execution_id_or_404, not_found
from streaming.replay import OutputState, output_state

Send = Callable[[list[Frame]], Awaitable[None]]
Keepalive = Callable[[], Awaitable[None]] | None


class StreamSession:
    """The streams of one connection's caller (one for SSE and text, many for a socket)."""

    __slots__ = ("api_key", "principal", "user")

    def __init__(self, scope, user) -> None:
        self.user = user
        self.api_key = scope.get("api_key")
        self.principal = Principal.of(scope, user)

    async def visible_execution_id(self, requested) -> str:
        """The id of the execution `requested` (an id or `last`) names; else a 404 Problem."""
        execution_id = execution_id_or_404(requested)
        try:
            execution = await run_db(access_execution, self.user, execution_id)
        except NotVisible:
            raise not_found(str(requested)) from None
        return execution.id

    def follow(
        self,
        groups: Iterable[str],
        *,
        execution_id: str | None = None,
        wants_scope: bool = False,
        accept: Callable[[Message], bool] | None = None,
    ) -> "Following":
        """Subscribe (entering returns once subscribed) and stay under the access guard's
        watch, until the block is left."""
        return Following(self, groups, Watcher(LiveFeed(accept), execution_id, wants_scope))

    async def output(
        self,
        execution_id: str,
        window: OutputWindow,
        send: output_cursor.Send,
        started: Callable[[OutputState], Awaitable[None]],
        keepalive: Keepalive = None,
        page_kind: str | None = None,
        sink: DirectSink | None = None,
    ) -> None:
        """One execution's output until `done`; AccessRevoked when the caller loses it.
        With `page_kind`, `send` also gets the log's pages whole; with `sink`, the hub may
        write live output for the stream (OutputCursor)."""
        group = publish.execution_group(execution_id)
        async with self.follow([group], execution_id=execution_id) as live:
            state = await run_db(output_state, execution_id)  # read after subscribing
            if state is None:
                raise not_found(execution_id)
            await started(state)
            await OutputCursor(state, window, live, send, keepalive, page_kind, sink).run()

    async def family_output(
        self,
        execution_id: str,
        resume: Resume | None,
        output_type: str | None,
        send: Send,
        started: Callable[[OutputState], Awaitable[None]],
        keepalive: Keepalive = None,
    ) -> None:
        """The output of an execution and all its descendants (streaming/family.py) until
        `done`; AccessRevoked when the caller loses the execution."""
        found = await run_db(root_row, execution_id)
        if found is None:
            raise not_found(execution_id)
        root, tenant_id = found
        cursor = FamilyCursor(root, resume, output_type, send, keepalive)
        groups = [publish.execution_group(root.id), publish.tenant_events_group(tenant_id)]
        async with self.follow(groups, execution_id=root.id, accept=cursor.accept) as live:
            await cursor.run(live, started)

    def events(
        self,
        flt: EventFilter,
        resume_after: int | None,
        send: Send,
        started: Callable[[], Awaitable[None]],
        keepalive: Keepalive = None,
    ) -> Coroutine[Any, Any, None]:
        """Every event the caller may see, until it leaves or loses access (AccessRevoked);
        CredentialsGone (before `started`) when it no longer authenticates. (The feed's own
        coroutine, to await: no frame of this method stays on a waiting stream's stack.)"""
        return EventFeed(self, flt, send, resume_after, keepalive).run(started)


class Following:
    """`StreamSession.follow`'s block: a class, not an @asynccontextmanager, whose async
    generator, frame and wrapper cost every open stream ~500 bytes."""

    __slots__ = ("_groups", "_hub", "_session", "watcher")

    def __init__(self, session: StreamSession, groups: Iterable[str], watcher: Watcher) -> None:
        self._session = session
        self._groups: Iterable[str] | None = groups
        self._hub: Hub | None = None
        self.watcher = watcher

    async def __aenter__(self) -> LiveFeed:
        hub = self._hub = Hub.current()
        session, live = self._session, self.watcher.feed
        try:
            hub.guard.watch(session.principal, session.user, session.api_key, self.watcher)
            assert self._groups is not None
            await live.open(self._groups)
        except BaseException:  # cancelled while subscribing, too: leave no membership
            self._leave()
            raise
        self._groups = None  # the feed holds them now
        return live

    async def __aexit__(self, *exc_info: object) -> None:
        self._leave()

    def _leave(self) -> None:
        """Synchronous: a cancelled stream cannot leave a membership behind."""
        if self._hub is not None:
            self._hub.guard.unwatch(self._session.principal, self.watcher)
        self.watcher.feed.leave()
