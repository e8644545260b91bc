"""What every HTTP stream does around its own logic: gate, then stream until the client goes.

    request ─▶ 405 / 401 / 422 / 404 / 429 as application/problem+json, before any byte
            ─▶ 200 and the stream, until it ends or `http.disconnect` arrives; then every
               task is cancelled and the live feed and connection slot are released.

Every write waits while the client has more than STREAM_SEND_BUFFER_BYTES unread
(streaming/flow.py); a client that reads nothing for STREAM_STALL_SECONDS is cut off.

A plain ASGI app rather than Channels' AsyncHttpConsumer: that class handles one message at
a time, so a streaming handler would never see the client's `http.disconnect`.
"""

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from project.server import inbound_of
from rbac.limits import TooManyStreams, acquire_stream_slot
from streaming.flow import ClientStalled, flow_of
from streaming.live import KeepAlive
from streaming.params import Problem
from streaming.session import StreamSession

log = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = b"application/problem+json"


def caller(scope):
    """The authenticated, active user of this connection; else a 401 Problem (400 for a
    Host this site does not serve, as the REST API answers)."""
    if scope.get("bad_host"):
        raise Problem(400, scope["auth_error"])
    user = scope.get("user")
    if user is None or not user.is_authenticated or not user.is_active:
        detail = scope.get("auth_error") or "Log in, or send an API key (Authorization: Bearer)."
        raise Problem(401, detail, headers=[(b"www-authenticate", b"Bearer")])
    return user


def too_many(exc: TooManyStreams) -> Problem:
    return Problem(
        429,
        exc.problem()["detail"],
        headers=[(b"retry-after", str(exc.retry_after).encode())],
    )


class StreamEndpoint:
    """Base of the HTTP streams. Subclasses implement `prepare` and `stream`."""

    # Slots: thousands of idle streams per process; subclasses declare theirs too.
    __slots__ = ("_send", "flow", "keepalive_clock", "receive", "scope", "session", "started")

    def __init__(self, scope, receive, send):
        self.scope = scope
        self.receive = receive
        self._send = send
        self.started = False
        self.flow = flow_of(scope)
        self.keepalive_clock = KeepAlive(self.keepalive)

    @classmethod
    def as_asgi(cls):
        async def app(scope, receive, send):
            await cls(scope, receive, send).serve()

        app.__name__ = cls.__name__
        return app

    async def prepare(self, user) -> Any:
        """Check the request; raise Problem. Whatever it returns goes to `stream`."""
        raise NotImplementedError

    async def stream(self, prepared: Any) -> None:
        """Call `start` with the headers, then `write` until the stream is complete."""
        raise NotImplementedError

    async def serve(self) -> None:
        if not await self._request_received():
            return
        try:
            if self.scope["method"] != "GET":
                raise Problem(405, "Streams are read with GET.", headers=[(b"allow", b"GET")])
            user = caller(self.scope)
            self.session = StreamSession(self.scope, user)
            prepared = await self.prepare(user)
            async with acquire_stream_slot(self.scope, user):
                await self._stream_until_disconnect(prepared)
        except ClientStalled:
            log.warning("stream %s: the client stopped reading; disconnecting", self.scope["path"])
            if self.flow is not None:
                self.flow.abort()
            return
        except TooManyStreams as exc:
            await self._answer(too_many(exc))
        except Problem as problem:
            await self._answer(problem)
        except Exception:
            log.exception("stream %s failed", self.scope.get("path"))
            await self._answer(Problem(500, "An unexpected error occurred; it has been logged."))
        else:
            await self._end()

    async def start(self, headers: list[tuple[bytes, bytes]]) -> None:
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})
        # daphne writes the status and headers with the first body message: an empty one
        # sends them now, so a client sees 200 before the execution prints anything.
        await self._send({"type": "http.response.body", "body": b"", "more_body": True})
        self.started = True

    async def keepalive(self) -> None:
        """Write a keep-alive (formats that have one override this)."""

    async def write(self, body: bytes) -> None:
        if body:
            self.keepalive_clock.wrote()
            await self._send({"type": "http.response.body", "body": body, "more_body": True})
            if self.flow is not None:
                await self.flow.drain()

    async def _end(self) -> None:
        if self.started:
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _answer(self, problem: Problem) -> None:
        if self.started:  # too late for a status: end the stream, the client reconnects
            await self._end()
            return
        body = json.dumps(problem.body(self.scope.get("path", ""))).encode()
        headers = [(b"content-type", PROBLEM_CONTENT_TYPE), *problem.headers]
        await self._send(
            {"type": "http.response.start", "status": problem.status, "headers": headers}
        )
        await self._send({"type": "http.response.body", "body": body})

    async def _request_received(self) -> bool:
        """Drain the request body; False when the client left first."""
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                return False
            if message["type"] == "http.request" and not message.get("more_body"):
                return True

    async def _stream_until_disconnect(self, prepared: Any) -> None:
        """Stream in this task until done, or until `http.disconnect` cancels it.

        Under `manage.py serve` the connection's Inbound hands the disconnect to a callback,
        so an idle stream is one task (thousands wait in one process); elsewhere (other
        servers, tests' communicators) a second task waits in `receive`.
        """
        streaming = asyncio.current_task()
        assert streaming is not None
        left = False

        def client_left() -> None:
            nonlocal left
            if not left:
                left = True
                streaming.cancel("the client left")

        inbound = inbound_of(self.receive)
        try:
            if inbound is not None:
                inbound.listen(lambda message: _on_disconnect(message, client_left))
                await self.stream(prepared)
            else:
                await self._stream_watching_receive(prepared, client_left)
        except asyncio.CancelledError:
            if not left:
                raise  # cancelled from outside (the server is stopping)
        finally:
            if inbound is not None:
                inbound.listen(None)
        if left:  # the client is gone: nothing more to send, and our own cancel is spent
            while streaming.cancelling():
                streaming.uncancel()
            self.started = False

    async def _stream_watching_receive(
        self, prepared: Any, client_left: Callable[[], None]
    ) -> None:
        def gone_done(gone: asyncio.Task) -> None:
            if not gone.cancelled() and gone.exception() is None:
                client_left()

        gone = asyncio.ensure_future(self._disconnected())
        gone.add_done_callback(gone_done)
        try:
            await self.stream(prepared)
        finally:
            gone.remove_done_callback(gone_done)
            if not gone.done():
                gone.cancel()
                await asyncio.gather(gone, return_exceptions=True)

    async def _disconnected(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass


def _on_disconnect(message: dict, client_left: Callable[[], None]) -> None:
    if message.get("type") == "http.disconnect":
        client_left()
