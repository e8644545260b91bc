"""daphne as `manage.py serve` runs it: flow control for streams, answers at the limits, and
thousands of idle connections per process.

- Every connection's ASGI scope gets a `FlowControl` (streaming/flow.py) under
  `scope["extensions"]["tailgate.flow"]`, so streams can wait for clients that read slowly.
- A connection's messages to the application wait in an `Inbound` rather than the
  asyncio.Queue daphne makes (four deques and an Event: ~3 KB of every idle stream); a
  stream may have them delivered to a callback instead of keeping a task waiting on them.
- Twisted's HTTP channel drops a connection without a word when a request line or header
  line is longer than it accepts, and answers a bare 400 when all headers together are
  too large. A client deserves to know: 414 (request line) and 431 (headers), with a
  problem+json body, then the connection closes.
- A WebSocket keeps only what an open socket needs (`SlimWebSocketProtocol`): autobahn
  copies ~30 options from its factory into every connection and keeps the whole opening
  handshake (request bytes, headers, response), and the upgraded HTTP channel and request
  stay registered on the transport; an idle socket cost ~10 KB more than an idle SSE stream
  (docs/benchmarks-fanout.md, idle).
- Connects come in bursts (a deploy, a network blip: every client reconnects within a
  second): the listen backlog, the open-file limit and the WebSocket handshake timeout are
  set for thousands of connections, not daphne's defaults.
"""

import asyncio
import json
import resource
from collections.abc import Callable
from functools import partial
from typing import Any

from daphne.ws_protocol import WebSocketProtocol
from twisted.web.http import HTTPChannel

from streaming.flow import FLOW_EXTENSION, FlowControl

# Connections the kernel queues for accepting: Twisted's default (50) drops the SYNs of a
# reconnect burst past that, and each dropped client waits 1-3 s to retry.
LISTEN_BACKLOG = 4096
# A WebSocket's opening handshake ends when the application accepts, after authenticating
# and taking a stream slot (database, Redis): in a burst of thousands of connects those wait
# their turn for seconds, and autobahn resets a handshake still open at daphne's 5 s (5,667
# of 10,000 in the idle benchmark). A client that never finishes its handshake is still
# dropped, just later.
WEBSOCKET_HANDSHAKE_SECONDS = 30
# The same bound for the application's accept (daphne's `websocket_connect_timeout`).
WEBSOCKET_CONNECT_SECONDS = 30
# Every scope says the same ASGI version: one dict for all connections, not one each.
ASGI_VERSION = {"version": "3.0"}


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


Listener = Callable[[Any], None]


class Inbound:
    """What daphne uses of a connection's asyncio.Queue (`put_nowait`, and `get` as the
    ASGI `receive`), holding nothing while nothing waits: a connection gets a request and
    a disconnect (a WebSocket, its client's messages), so a list does.

    `listen(callback)` hands every message, from those already waiting on, to `callback`
    instead (until `listen(None)`): a stream learns of `http.disconnect` without a task of
    its own waiting in `get` (a Task, its coroutines and a future: ~1 KB per stream)."""

    __slots__ = ("_getters", "_items", "_listener")

    def __init__(self) -> None:
        self._items: list[Any] | None = None
        self._getters: list[asyncio.Future[None]] | None = None
        self._listener: Listener | None = None

    def put_nowait(self, message: Any) -> None:
        if self._listener is not None:
            self._listener(message)
            return
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
                    if not self._getters:
                        self._getters = None
        message = self._items.pop(0)
        if not self._items:
            self._items = None
        return message

    def listen(self, listener: Listener | None) -> None:
        """Hand messages to `listener` from now on (those waiting first); None: queue them
        for `get` again."""
        self._listener = listener
        while listener is not None and self._items:
            listener(self._items.pop(0))
        if not self._items:
            self._items = None


def inbound_of(receive: Any) -> Inbound | None:
    """The Inbound behind an ASGI `receive`, if `manage.py serve` made it (else None)."""
    inbound = getattr(receive, "__self__", None)
    return inbound if isinstance(inbound, Inbound) else None


class _FromFactory:
    """An autobahn protocol option read from the factory, unless the connection sets its own.

    autobahn copies every option its factory holds into each new connection's `__dict__`
    (`_connectionMade`: "if not hasattr(self, option): setattr(...)"), ~30 entries that
    are the same for all; with this descriptor `hasattr` is true and nothing is copied."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, protocol: Any, owner: Any = None) -> Any:
        if protocol is None:
            return self
        try:
            return protocol.__dict__[self.name]
        except KeyError:
            return getattr(protocol.factory, self.name)

    def __set__(self, protocol: Any, value: Any) -> None:
        protocol.__dict__[self.name] = value


class _OpenedRequest:
    """What daphne reads of the opening handshake's request once the socket is open."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


class _SendQueue(list):
    """autobahn's queue of chopped or synchronous writes, which daphne never makes: an empty
    list (56 bytes) where autobahn keeps an empty deque (760 bytes) per connection."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


# Handshake state autobahn and daphne keep on an open socket and never read again.
HANDSHAKE_ONLY = (
    "application_deferred",
    "clean_headers",  # the scope holds the same list
    "http_headers",
    "http_request_data",
    "http_request_host",
    "http_request_params",
    "http_request_path",
    "http_request_uri",
    "http_response_data",
    "http_status_line",
    "websocket_extensions",
    "websocket_origin",
    "websocket_protocols",
)


class SlimWebSocketProtocol(WebSocketProtocol):
    """daphne's WebSocket protocol without what an open, idle socket does not need."""

    def _connectionMade(self) -> None:
        super()._connectionMade()
        self.send_queue = _SendQueue()

    def onOpen(self) -> None:
        super().onOpen()
        self._forget_handshake()

    def _forget_handshake(self) -> None:
        state = self.__dict__
        for name in HANDSHAKE_ONLY:
            state.pop(name, None)
        state["request"] = _OpenedRequest(self.request.path)
        # A dict does not shrink when keys go: a copy is sized for what is left.
        self.__dict__ = dict(state)
        # The HTTP channel that read the upgrade request stays the transport's producer,
        # holding itself, the request and its headers for the socket's life; nothing
        # of the socket needs it (backpressure is streaming/flow.py's, by the buffer).
        transport = self.transport
        if transport is not None and getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()


for _option in SlimWebSocketProtocol.CONFIG_ATTRS:
    if not hasattr(WebSocketProtocol, _option):
        setattr(SlimWebSocketProtocol, _option, _FromFactory(_option))


def _with_backlog(endpoint: str) -> str:
    """A TCP endpoint description with LISTEN_BACKLOG, unless it names its own."""
    if endpoint.startswith("tcp:") and "backlog=" not in endpoint:
        return f"{endpoint}:backlog={LISTEN_BACKLOG}"
    return endpoint


def raise_open_file_limit() -> None:
    """Every stream holds a socket: allow as many open files as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def server_class():
    """daphne's Server with all of the above."""
    from daphne.http_protocol import HTTPFactory
    from daphne.server import Server
    from daphne.ws_protocol import WebSocketFactory

    # daphne makes its factories inside `Server.run`; the protocol classes are their class
    # attributes.
    HTTPFactory.protocol = LimitedHTTPChannel
    WebSocketFactory.protocol = SlimWebSocketProtocol

    class TailgateServer(Server):
        def __init__(self, *args, endpoints=None, **kwargs):
            kwargs.setdefault("websocket_handshake_timeout", WEBSOCKET_HANDSHAKE_SECONDS)
            kwargs.setdefault("websocket_connect_timeout", WEBSOCKET_CONNECT_SECONDS)
            endpoints = [_with_backlog(str(endpoint)) for endpoint in endpoints or []]
            super().__init__(*args, endpoints=endpoints, **kwargs)

        def run(self):
            raise_open_file_limit()
            super().run()

        def create_application(self, protocol, scope):
            # daphne 4.2's own method, but for the queue it makes inside (hence not a call to
            # super): an Inbound; and the scope extended in place (daphne builds it per
            # connection), not copied.
            assert "application_instance" not in self.connections[protocol]
            inbound = Inbound()
            scope.setdefault("asgi", ASGI_VERSION)
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
