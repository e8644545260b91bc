"""Backpressure: a stream never has more than STREAM_SEND_BUFFER_BYTES written but not taken.

daphne's ASGI `send` hands the bytes to Twisted at once and returns: nothing tells the
application that a client stopped reading, and Twisted buffers without bound. `manage.py
serve` therefore runs daphne as `project/server.py` sets it up, which puts a `FlowControl` for each
connection in the ASGI scope (`scope["extensions"]["tailgate.flow"]`, the place ASGI keeps
for server extensions). A stream awaits `drain()` after each write:

    buffered > STREAM_SEND_BUFFER_BYTES ─▶ wait until it falls under half of that
      (the stream reads neither the log nor its inbox meanwhile: the inbox overflows, and
      the stream resumes from the log at its position once the client reads again)
    still over after STREAM_STALL_SECONDS ─▶ ClientStalled: the connection is aborted

The buffer measured is the transport's user-space buffer (Twisted's FileDescriptor), what
grows in the web process's memory; the kernel's socket buffer comes on top and is not ours.
Without the extension (another ASGI server, tests' communicators), `flow_of` returns None and
streams write as before. Over TLS the transport is wrapped and not measured (no backpressure):
terminate TLS in front of Tailgate, as the operations guide says.

Waiting polls the buffer (every FLOW_POLL_MIN_SECONDS, backing off to FLOW_POLL_MAX_SECONDS)
instead of registering a Twisted producer: daphne's HTTP channel already is the transport's
producer, and a WebSocket's transport keeps that registration after the upgrade, so a
producer of ours would not be called reliably; a poll only runs for streams that are paused.
"""

import asyncio
import time
from typing import Any

from django.conf import settings
from twisted.internet import tcp

FLOW_EXTENSION = "tailgate.flow"
# A client that reads fast empties the buffer within milliseconds: a first wait of 10 ms
# (the earlier value) cost a replay to a fast client a third of its rate.
FLOW_POLL_MIN_SECONDS = 0.001
FLOW_POLL_MAX_SECONDS = 0.2


class ClientStalled(Exception):
    """The client has not read for STREAM_STALL_SECONDS: give up on it."""


class FlowControl:
    """How much a connection's transport holds, and a way to wait until it drains."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    def _transport(self) -> Any:
        return getattr(self._protocol, "transport", None)

    def buffered(self) -> int:
        transport = self._transport()
        if transport is None or not hasattr(transport, "_tempDataLen"):
            return 0
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen

    def writable(self) -> bool:
        """Connected, and under STREAM_SEND_BUFFER_BYTES: a write now keeps the bound."""
        transport = self._transport()
        if transport is None or getattr(transport, "disconnecting", False):
            return False
        return self.buffered() <= settings.STREAM_SEND_BUFFER_BYTES

    def write_now(self, body: bytes) -> None:
        """Write a response body part at once: the hub's direct path, which has no task to
        await an ASGI `send` in (streaming/direct.py).

        When the transport holds nothing, the chunk goes to the socket here (what Twisted's
        `Request.write` would frame and buffer): Twisted would register the socket with the
        loop's selector, wait a turn for it to be writable, send and unregister it, which
        was half of the web process's CPU at 1,000 viewers (docs/benchmarks-fanout.md).
        Whatever the socket does not take, and every other case, goes through daphne
        (`handle_reply`, which ignores a closed connection)."""
        request, transport = self._protocol, self._transport()
        if transport is not None and self.buffered() == 0 and _plain_chunked(request, transport):
            data = b"%x\r\n%b\r\n" % (len(body), body)  # an HTTP/1.1 chunk, as Twisted's
            request.sentLength += len(body)
            try:
                sent = transport.socket.send(data)
            except OSError:  # would block, or broken: Twisted's buffer and error handling
                sent = 0
            if sent < len(data):
                transport.write(data[sent:])
            return
        request.handle_reply({"type": "http.response.body", "body": body, "more_body": True})

    def abort(self) -> None:
        transport = self._transport()
        if transport is not None:
            transport.abortConnection()

    async def drain(self) -> None:
        """Return once the buffer is small enough to write more; ClientStalled if it stays
        full past STREAM_STALL_SECONDS."""
        limit = settings.STREAM_SEND_BUFFER_BYTES
        if self.buffered() <= limit:
            return
        deadline = time.monotonic() + settings.STREAM_STALL_SECONDS
        pause = FLOW_POLL_MIN_SECONDS
        while self.buffered() > limit // 2:
            if self._transport() is None:
                return  # gone: the disconnect reaches the stream through `receive`
            if time.monotonic() >= deadline:
                raise ClientStalled()
            await asyncio.sleep(pause)
            pause = min(pause * 2, FLOW_POLL_MAX_SECONDS)


def _plain_chunked(request: Any, transport: Any) -> bool:
    """A plain TCP transport (not TLS) under a chunked HTTP/1.1 response that is under way."""
    return bool(
        isinstance(transport, tcp.Connection)
        and transport.connected
        and not transport.disconnecting
        and getattr(request, "chunked", False)
        and getattr(request, "startedWriting", False)
        and not request.finished
        and not request._disconnected
        and request.channel is not None
    )


def flow_of(scope) -> FlowControl | None:
    return scope.get("extensions", {}).get(FLOW_EXTENSION)
