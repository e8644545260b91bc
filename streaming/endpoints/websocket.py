"""`/ws/v1/stream`: the events of both SSE streams over one WebSocket, as JSON messages.

Client → server:

    {"action": "subscribe", "execution": id|"last", "after_seq": n, "from": n,
     "replay_limit": n, "type": "stdout"}           (after_seq wins over from, as Last-Event-ID)
    {"action": "subscribe", "execution": id|"last", "include_children": true,
     "type": "stdout", "last_event_id": "<id of the last family event>"}
                                         (the execution and its descendants at every depth:
                                          docs/streaming-family.md)
    {"action": "unsubscribe", "execution": id}
    {"action": "subscribe_events", "events": "...", "tenant": ..., "action_ref": ...,
     "status": ..., "execution": ..., "parent": ..., "ancestor": ..., "last_event_id": n}
    {"action": "unsubscribe_events"}

Server → client: `{"event", "execution", "id", "data"}` with the SSE streams' events and
payloads (`"stream": "events"` on those of the event subscription), `subscribed`,
`unsubscribed`, and `error` (a problem body) for a request that failed; one bad request
never closes the socket. Each subscription is a stream of the connection's StreamSession
(streaming/session.py), so the guarantees are those of SSE. When the caller no longer
authenticates (logout, password change, deactivation, key revoked) every subscription gets
an `error` with status 401 and the socket closes with code 4401.
"""

import asyncio
import json
import logging
from collections.abc import Coroutine
from typing import Any

from executions.models import OutputType
from rbac.limits import TooManyStreams, acquire_stream_slot
from streaming.endpoints.base import caller, too_many
from streaming.endpoints.output import family_cursor, include_children
from streaming.event_feed import CredentialsGone
from streaming.family_ids import Resume
from streaming.filters import event_filter, load_descendants
from streaming.flow import ClientStalled, flow_of
from streaming.frames import Frame
from streaming.output_cursor import AccessRevoked
from streaming.params import (
    INT64_MAX,
    OutputWindow,
    Problem,
    Source,
    execution_id_or_404,
    output_window,
)
from streaming.replay import OutputState
from streaming.session import StreamSession

log = logging.getLogger(__name__)

# Each subscription holds a task, a hub subscription and an inbox: bound them per socket.
MAX_SUBSCRIPTIONS = 100
# Client messages are small requests; anything bigger is a mistake (or an attack).
MAX_MESSAGE_CHARS = 64 * 1024
EVENTS = "events"
# A family subscription's resume cursor (True: from the start); False: one execution.
Family = Resume | bool
ACTIONS = ("subscribe", "unsubscribe", "subscribe_events", "unsubscribe_events")


def as_json(frame: Frame, stream: str | None = None) -> str:
    """The frame as a WebSocket message (encoded once per process for shared live frames)."""
    cached = frame.encoded.get(("ws", stream))
    if cached is None:
        cached = frame.encoded[("ws", stream)] = _as_json(frame, stream)
    return cached


def _as_json(frame: Frame, stream: str | None) -> str:
    message: dict[str, Any] = {"event": frame.event}
    if frame.execution is not None:
        message["execution"] = frame.execution
    if frame.id is not None:
        message["id"] = frame.id
    message["data"] = frame.data
    if stream:
        message["stream"] = stream
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


class StreamSocketEndpoint:
    # Slots: thousands of idle sockets per process.
    __slots__ = (
        "_pending",
        "_send",
        "closed",
        "flow",
        "receive",
        "scope",
        "session",
        "subscriptions",
        "user",
    )

    def __init__(self, scope, receive, send):
        self.scope = scope
        self.receive = receive
        self._send = send
        self.user = None
        self.session: StreamSession | None = None
        self.flow = flow_of(scope)
        self.closed = False
        self.subscriptions: dict[str, asyncio.Task] = {}  # execution id (or EVENTS) → task
        # Subscriptions whose key is not known yet (`last` being resolved); made when needed.
        self._pending: set[asyncio.Task] | None = None

    @classmethod
    def as_asgi(cls):
        async def app(scope, receive, send):
            await cls(scope, receive, send).serve()

        return app

    async def serve(self) -> None:
        if (await self.receive())["type"] != "websocket.connect":
            return
        try:
            self.user = caller(self.scope)
            self.session = StreamSession(self.scope, self.user)
            async with acquire_stream_slot(self.scope, self.user):
                await self._send({"type": "websocket.accept"})
                await self._converse()
        except Problem as problem:
            await self._refuse(problem)
        except TooManyStreams as exc:
            await self._refuse(too_many(exc))
        finally:
            tasks = [*self.subscriptions.values(), *(self._pending or ())]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _refuse(self, problem: Problem) -> None:
        """Say why in an `error` event, then close with 4000 + the HTTP status."""
        await self._send({"type": "websocket.accept"})
        await self.error(problem)
        await self._send({"type": "websocket.close", "code": 4000 + problem.status})

    async def _converse(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message["type"] == "websocket.receive":
                try:
                    await self._handle(message.get("text"))
                except Problem as problem:
                    await self.error(problem)

    # --- sending ----------------------------------------------------------------------------
    async def emit(self, frames: list[Frame], stream: str | None = None) -> None:
        if self.closed:
            return
        for frame in frames:
            await self._send({"type": "websocket.send", "text": as_json(frame, stream)})
        if self.flow is not None:
            await self.flow.drain()

    async def emit_events(self, frames: list[Frame]) -> None:
        await self.emit(frames, EVENTS)

    async def error(self, problem: Problem, execution: str | None = None, **extra) -> None:
        data = {**problem.body(self.scope.get("path", "")), **extra}
        await self.emit([Frame("error", data, execution=execution)])

    # --- requests ---------------------------------------------------------------------------
    async def _handle(self, text: str | None) -> None:
        if text is None or len(text) > MAX_MESSAGE_CHARS:
            raise Problem(
                400, f"Send JSON text messages of at most {MAX_MESSAGE_CHARS} characters."
            )
        try:
            request = json.loads(text)
        except ValueError:
            raise Problem(400, "The message is not JSON.") from None
        if not isinstance(request, dict) or request.get("action") not in ACTIONS:
            value = request.get("action") if isinstance(request, dict) else request
            error = {
                "location": "message.action",
                "message": f"must be one of {', '.join(ACTIONS)}",
                "value": value,
            }
            raise Problem(422, "Unknown request.", errors=[error])
        await getattr(self, f"_{request['action']}")(request)

    def _start(self, key: str, work: Coroutine, execution: str | None = None) -> None:
        if key in self.subscriptions:
            work.close()
            detail = "Already subscribed to events." if key == EVENTS else "Already subscribed."
            raise Problem(409, detail + " Unsubscribe first.")
        if len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            work.close()
            raise Problem(429, f"At most {MAX_SUBSCRIPTIONS} subscriptions per socket.")
        self.subscriptions[key] = self._spawn(work, execution, key)

    def _spawn(self, work: Coroutine, execution: str | None, key: str | None) -> asyncio.Task:
        task = asyncio.create_task(self._guard(work, execution), name=f"ws {key or execution}")
        if key is None:
            if self._pending is None:
                self._pending = set()
            self._pending.add(task)
        task.add_done_callback(lambda done: self._forget(key, done))
        return task

    def _forget(self, key: str | None, task: asyncio.Task) -> None:
        if key is None and self._pending is not None:
            self._pending.discard(task)
            if not self._pending:
                self._pending = None
        if key is not None and self.subscriptions.get(key) is task:
            del self.subscriptions[key]

    async def _guard(self, work: Coroutine, execution: str | None) -> None:
        try:
            try:
                await work
            except CredentialsGone:
                raise AccessRevoked("Your credentials are no longer valid.", 401) from None
        except Problem as problem:
            await self.error(problem, execution)
        except AccessRevoked as exc:
            await self.error(Problem(exc.status, str(exc)), execution)
            if exc.status == 401:
                await self._close(4401)
        except ClientStalled:
            log.warning(
                "WebSocket %s: the client stopped reading; disconnecting", self.scope["path"]
            )
            if self.flow is not None:
                self.flow.abort()
        except Exception:
            log.exception("WebSocket subscription failed")
            await self.error(
                Problem(500, "An unexpected error occurred; it has been logged."), execution
            )

    async def _subscribe(self, request: dict) -> None:
        source = Source(request, "message")
        family: Family = False
        if include_children(source):
            window = OutputWindow(output_type=source.choice("type", OutputType.values))
            raw = source.get("last_event_id")
            family = family_cursor(source, raw, "message.last_event_id") or True
            for name in ("after_seq", "from", "replay_limit"):
                if source.get(name) is not None:
                    source.error(name, "does not apply with include_children", request[name])
        else:
            after_seq = source.integer("after_seq", None, 0, INT64_MAX)
            window = output_window(source, after_seq)
        requested = request.get("execution")
        if requested is None:
            source.error("execution", "is required (an execution id or last)", None)
        source.check()
        execution_id = execution_id_or_404(requested)
        work = self._follow_output(str(requested), execution_id, window, family)
        if execution_id == "last":  # its key is known once resolved
            self._spawn(work, str(requested), None)
        else:
            self._start(execution_id, work, execution_id)

    async def _unsubscribe(self, request: dict) -> None:
        requested = request.get("execution")
        key = requested.upper() if isinstance(requested, str) else str(requested)
        await self._stop(key)
        await self.emit([Frame("unsubscribed", {}, execution=key)])

    async def _stop(self, key: str) -> None:
        task = self.subscriptions.pop(key, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _subscribe_events(self, request: dict) -> None:
        # `action` names the request here, so the action filter is spelled `action_ref`.
        values = {key: value for key, value in request.items() if key != "action"}
        if "action_ref" in values:
            values["action"] = values.pop("action_ref")
        source = Source(values, "message")
        flt = event_filter(source)
        resume_after = source.integer("last_event_id", None, 0, INT64_MAX)
        source.check()
        self._start(EVENTS, self._follow_events(flt, resume_after))

    async def _unsubscribe_events(self, request: dict) -> None:
        await self._stop(EVENTS)
        await self.emit([Frame("unsubscribed", {})], EVENTS)

    async def _close(self, code: int) -> None:
        """Close the socket (once); subscriptions end as the client's disconnect arrives."""
        if not self.closed:
            self.closed = True
            await self._send({"type": "websocket.close", "code": code})

    # --- subscriptions ----------------------------------------------------------------------
    async def _follow_output(
        self, requested: str, execution_id: str, window: OutputWindow, family: Family = False
    ):
        assert self.session is not None
        if self.closed:
            raise AccessRevoked("This connection is closing.", 401)
        resolved = await self.session.visible_execution_id(requested)
        if execution_id == "last":  # its key is known once resolved
            work = self._run_output(requested, resolved, window, family)
            self._start(resolved, work, resolved)
            return
        await self._run_output(requested, resolved, window, family)

    async def _run_output(
        self, requested: str, execution_id: str, window: OutputWindow, family: Family = False
    ):
        assert self.session is not None

        async def subscribed(state: OutputState) -> None:
            data: dict[str, Any] = {"requested": requested}
            if family is not False:
                data["include_children"] = True
            await self.emit([Frame("subscribed", data, execution=execution_id)])

        if family is False:
            await self.session.output(execution_id, window, self.emit, subscribed)
            return
        resume = family if isinstance(family, Resume) else None
        await self.session.family_output(
            execution_id, resume, window.output_type, self.emit, subscribed
        )

    def _follow_events(self, flt, resume_after: int | None) -> Coroutine[Any, Any, None]:
        """The event feed's coroutine itself (CredentialsGone is `_guard`'s): a waiting
        subscription's stack is `_guard`, the feed, its inbox."""
        assert self.session is not None

        async def subscribed() -> None:
            await load_descendants(flt)  # subscribed, nothing read yet: none is missed
            await self.emit([Frame("subscribed", {})], EVENTS)

        return self.session.events(flt, resume_after, self.emit_events, subscribed)
