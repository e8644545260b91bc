"""`/ws/v1/stream`: the events of both SSE streams over one WebSocket, as JSON messages.

Client → server:

    {"action": "subscribe", "execution": id|"last", "after_seq": n, "from": n,
     "replay_limit": n, "type": "stdout"}           (after_seq wins over from, as Last-Event-ID)
    {"action": "unsubscribe", "execution": id}
    {"action": "subscribe_events", "events": "...", "tenant": ..., "action_ref": ...,
     "status": ..., "execution": ..., "parent": ..., "last_event_id": n}
    {"action": "unsubscribe_events"}

Server → client: `{"event", "execution", "id", "data"}` with the SSE streams' events and
payloads (`"stream": "events"` on those of the event subscription), `subscribed`,
`unsubscribed`, and `error` (a problem body) for a request that failed; one bad request
never closes the socket. Each subscription is its own OutputCursor or EventFeed, so the
guarantees are those of SSE.
"""

import asyncio
import json
import logging
from collections.abc import Coroutine
from typing import Any

from executions import publish
from rbac.access import NotVisible, access_execution, still_allowed
from rbac.limits import TooManyStreams, acquire_stream_slot
from streaming.consumers.base import caller, too_many
from streaming.db import run_db
from streaming.event_feed import EventFeed
from streaming.filters import event_filter
from streaming.frames import Frame
from streaming.live import LiveFeed
from streaming.output_cursor import AccessRevoked, OutputCursor
from streaming.params import (
    INT64_MAX,
    OutputWindow,
    Problem,
    Source,
    execution_id_or_404,
    not_found,
    output_window,
)
from streaming.replay import output_state

log = logging.getLogger(__name__)

# Each subscription holds a channel, a task and periodic access checks: bound them per socket.
MAX_SUBSCRIPTIONS = 100
# Client messages are small requests; anything bigger is a mistake (or an attack).
MAX_MESSAGE_CHARS = 64 * 1024
EVENTS = "events"
ACTIONS = ("subscribe", "unsubscribe", "subscribe_events", "unsubscribe_events")


def as_json(frame: Frame, stream: str | None = None) -> str:
    message: dict[str, Any] = {"event": frame.event}
    if frame.execution is not None:
        message["execution"] = frame.execution
    if frame.id is not None:
        message["id"] = frame.id
    message["data"] = frame.data
    if stream:
        message["stream"] = stream
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


class StreamSocketConsumer:
    def __init__(self, scope, receive, send):
        self.scope = scope
        self.receive = receive
        self._send = send
        self.user = None
        self.subscriptions: dict[str, asyncio.Task] = {}  # execution id (or EVENTS) → task
        self._tasks: set[asyncio.Task] = set()  # every task of this socket, to cancel at the end

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
            async with acquire_stream_slot(self.scope, self.user):
                await self._send({"type": "websocket.accept"})
                await self._converse()
        except Problem as problem:
            await self._refuse(problem)
        except TooManyStreams as exc:
            await self._refuse(too_many(exc))
        finally:
            tasks = list(self._tasks)
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
        for frame in frames:
            await self._send({"type": "websocket.send", "text": as_json(frame, stream)})

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
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._forget(key, done))
        return task

    def _forget(self, key: str | None, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if key is not None and self.subscriptions.get(key) is task:
            del self.subscriptions[key]

    async def _guard(self, work: Coroutine, execution: str | None) -> None:
        try:
            await work
        except Problem as problem:
            await self.error(problem, execution)
        except AccessRevoked:
            await self.error(
                Problem(404, "This subscription is no longer visible to you."), execution
            )
        except Exception:
            log.exception("WebSocket subscription failed")
            await self.error(
                Problem(500, "An unexpected error occurred; it has been logged."), execution
            )

    async def _subscribe(self, request: dict) -> None:
        source = Source(request, "message")
        after_seq = source.integer("after_seq", None, 0, INT64_MAX)
        window = output_window(source, after_seq)
        requested = request.get("execution")
        if requested is None:
            source.error("execution", "is required (an execution id or last)", None)
        source.check()
        execution_id = execution_id_or_404(requested)
        work = self._follow_output(str(requested), execution_id, window)
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

    # --- subscriptions ----------------------------------------------------------------------
    async def _follow_output(self, requested: str, execution_id: str, window: OutputWindow):
        try:
            execution = await run_db(access_execution, self.user, execution_id)
        except NotVisible:
            raise not_found(requested) from None
        if execution_id == "last":
            self._start(
                execution.id, self._run_output(requested, execution.id, window), execution.id
            )
            return
        await self._run_output(requested, execution.id, window)

    async def _run_output(self, requested: str, execution_id: str, window: OutputWindow):
        api_key = self.scope.get("api_key")

        def allowed() -> bool:
            return still_allowed(self.user, execution_id=execution_id, api_key=api_key)

        live = LiveFeed()
        await live.open([publish.execution_group(execution_id)])
        try:
            state = await run_db(output_state, execution_id)
            if state is None:
                raise not_found(requested)
            await self.emit([Frame("subscribed", {"requested": requested}, execution=execution_id)])
            await OutputCursor(state, window, live, self.emit, allowed).run()
        finally:
            await live.close()

    async def _follow_events(self, flt, resume_after: int | None) -> None:
        feed = EventFeed(self.user, self.scope.get("api_key"), flt, self.emit_events, resume_after)
        try:
            if not await feed.open():
                raise Problem(401, "Your credentials are no longer valid.")
            await self.emit([Frame("subscribed", {})], EVENTS)
            await feed.run()
        finally:
            await feed.close()
