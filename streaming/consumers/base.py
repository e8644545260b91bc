"""What every HTTP stream does around its own logic: gate, then stream until the client goes.

    request ─▶ 405 / 401 / 422 / 404 / 429 as application/problem+json, before any byte
            ─▶ 200 and the stream, until it ends or `http.disconnect` arrives; then every
               task is cancelled and the live feed and connection slot are released.

A plain ASGI app rather than Channels' AsyncHttpConsumer: that class handles one message at
a time, so a streaming handler would never see the client's `http.disconnect`.
"""

import asyncio
import json
import logging
from typing import Any

from rbac.limits import TooManyStreams, acquire_stream_slot
from streaming.params import Problem

log = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = b"application/problem+json"


def caller(scope):
    """The authenticated, active user of this connection; else a 401 Problem."""
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

    def __init__(self, scope, receive, send):
        self.scope = scope
        self.receive = receive
        self._send = send
        self.started = False

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
            prepared = await self.prepare(user)
            async with acquire_stream_slot(self.scope, user):
                await self._stream_until_disconnect(prepared)
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
        self.started = True

    async def write(self, body: bytes) -> None:
        if body:
            await self._send({"type": "http.response.body", "body": body, "more_body": True})

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
        streaming = asyncio.create_task(self.stream(prepared), name=f"stream {self.scope['path']}")
        gone = asyncio.create_task(self._disconnected())
        try:
            await asyncio.wait({streaming, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (streaming, gone):
                task.cancel()
            await asyncio.gather(streaming, gone, return_exceptions=True)
        if gone.done() and not gone.cancelled():
            self.started = False  # the client is gone: nothing more to send
        elif not streaming.cancelled():
            streaming.result()  # re-raise what ended the stream, if anything did

    async def _disconnected(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
