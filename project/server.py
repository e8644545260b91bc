"""daphne as `manage.py serve` runs it: flow control for streams, and answers at the limits.

- Every connection's ASGI scope gets a `FlowControl` (streaming/flow.py) under
  `scope["extensions"]["tailgate.flow"]`, so streams can wait for clients that read slowly.
- A connection's messages to the application wait in an `Inbound` rather than the
  asyncio.Queue daphne makes (four deques and an Event: ~3 KB of every idle stream).
- Twisted's HTTP channel drops a connection without a word when a request line or header
  line is longer than it accepts, and answers a bare 400 when all headers together are
  too large. A client deserves to know: 414 (request line) and 431 (headers), with a
  problem+json body, then the connection closes.
"""

import asyncio
import json
from functools import partial
from typing import Any

from twisted.web.http import HTTPChannel

from streaming.flow import FLOW_EXTENSION, FlowControl


def _problem(status: int, title: str, detail: str) -> bytes:
    body = json.dumps(
        {"type": "about:blank", "title": title, "status": status, "detail": detail}
    ).encode()
    head = (
        f"HTTP/1.1 {status} {title}\r\n"
        "Content-Type: application/problem+json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head + body


URI_TOO_LONG = _problem(
    414, "URI Too Long", "The request line is too long; send parameters in a body instead."
)
HEADERS_TOO_LARGE = _problem(
    431, "Request Header Fields Too Large", "A header, or all headers together, are too large."
)


class LimitedHTTPChannel(HTTPChannel):
    """Twisted's channel, answering requests over its size limits instead of dropping them."""

    def _waiting_for_request_line(self) -> bool:
        return bool(getattr(self, "_HTTPChannel__first_line", 0))

    def lineLengthExceeded(self, line):
        answer = URI_TOO_LONG if self._waiting_for_request_line() else HEADERS_TOO_LARGE
        self.transport.write(answer)
        self.loseConnection()

    def _respondToBadRequestAndDisconnect(self):
        if self._receivedHeaderSize > self.totalHeadersSize:
            self.transport.write(HEADERS_TOO_LARGE)
            self.loseConnection()
            return
        super()._respondToBadRequestAndDisconnect()


class Inbound:
    """What daphne uses of a connection's asyncio.Queue (`put_nowait`, and `get` as the
    ASGI `receive`), holding nothing while nothing waits: a connection gets a request and
    a disconnect (a WebSocket, its client's messages), so a list does."""

    __slots__ = ("_getters", "_items")

    def __init__(self) -> None:
        self._items: list[Any] | None = None
        self._getters: list[asyncio.Future[None]] | None = None

    def put_nowait(self, message: Any) -> None:
        if self._items is None:
            self._items = []
        self._items.append(message)
        getters, self._getters = self._getters, None
        for getter in getters or ():
            if not getter.done():
                getter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            finally:
                if self._getters is not None and getter in self._getters:
                    self._getters.remove(getter)
        return self._items.pop(0)


def server_class():
    """daphne's Server with all of the above."""
    from daphne.http_protocol import HTTPFactory
    from daphne.server import Server

    # daphne makes its factory inside `Server.run`; the channel class is its class attribute.
    HTTPFactory.protocol = LimitedHTTPChannel

    class TailgateServer(Server):
        def create_application(self, protocol, scope):
            # daphne 4.2's own method, but for the queue it makes inside (hence not a call to
            # super): an Inbound; and the scope extended in place (daphne builds it per
            # connection), not copied.
            assert "application_instance" not in self.connections[protocol]
            inbound = Inbound()
            scope.setdefault("asgi", {"version": "3.0"})
            extensions = {**scope.get("extensions", {}), FLOW_EXTENSION: FlowControl(protocol)}
            scope["extensions"] = extensions
            instance = self.application(
                scope=scope, receive=inbound.get, send=partial(self.handle_reply, protocol)
            )
            if protocol not in self.connections:
                return None
            self.connections[protocol]["application_instance"] = asyncio.ensure_future(
                instance, loop=asyncio.get_event_loop()
            )
            return inbound

    return TailgateServer
