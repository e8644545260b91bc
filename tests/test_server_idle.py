"""`manage.py serve`'s daphne for thousands of idle connections (project/server.py): what an
open WebSocket keeps, and the listen backlog and timeouts set for reconnect bursts.

The WebSocket runs in this process over a Twisted test transport, so the protocol object
the server keeps for an open socket can be looked at (a real server's socket is tested in
test_stream_server.py).
"""

import asyncio
import os
import struct

import daphne.server  # noqa: F401  (installs Twisted's asyncio reactor, as `serve` does)
from daphne.ws_protocol import WebSocketFactory
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from project.server import (
    HANDSHAKE_ONLY,
    LISTEN_BACKLOG,
    WEBSOCKET_HANDSHAKE_SECONDS,
    server_class,
)
from tests.streaming_helpers import DISCONNECT_SECONDS, RECEIVE_SECONDS, eventually

PEER = IPv4Address("TCP", "127.0.0.1", 50000)
UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def echo(scope, receive, send):
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": message["text"]})


class Channel:
    """daphne's HTTP channel as the upgrade leaves it: the transport's producer."""

    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def stopProducing(self) -> None: ...


class TCPLikeTransport(StringTransport):
    """A test transport that, as Twisted's TCP transports do, lets a producer be unregistered
    when none is (autobahn unregisters when it drops a connection)."""

    def unregisterProducer(self) -> None:
        if self.producer is not None:
            super().unregisterProducer()


def client_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + masked


def opened_socket():
    server = server_class()(application=echo, endpoints=["tcp:port=0:interface=127.0.0.1"])
    server.connections = {}  # what `run` makes
    factory = WebSocketFactory(server, server="daphne")
    factory.setProtocolOptions(allowNullOrigin=True, openHandshakeTimeout=30, autoPingTimeout=9)
    protocol = factory.buildProtocol(PEER)
    transport = TCPLikeTransport(peerAddress=PEER, hostAddress=IPv4Address("TCP", "127.0.0.1", 80))
    transport.registerProducer(Channel(), True)
    protocol._raw_query_string = b""
    protocol.makeConnection(transport)
    protocol.dataReceived(UPGRADE)
    return server, protocol, transport


async def test_it_keeps_no_handshake_state_on_an_open_websocket():
    server, protocol, transport = opened_socket()
    await eventually(lambda: protocol.state == protocol.STATE_OPEN, what="the socket to open")
    assert transport.value().startswith(b"HTTP/1.1 101 ")

    assert not set(HANDSHAKE_ONLY) & protocol.__dict__.keys()
    assert transport.producer is None  # nor the HTTP channel (and its request) behind it
    assert protocol.request.path == "/ws"  # what daphne still reads
    # The factory's options are read from it, not copied into each connection.
    assert (protocol.autoPingTimeout, protocol.openHandshakeTimeout) == (9, 30)
    assert "autoPingTimeout" not in protocol.__dict__

    transport.clear()
    protocol.dataReceived(client_frame(0x1, b"still there?"))
    await eventually(lambda: b"still there?" in transport.value(), what="the echo")

    protocol.dataReceived(client_frame(0x8, struct.pack("!H", 1000)))
    assert transport.disconnecting  # the server closes the TCP connection; then, as the
    protocol.connectionLost(Failure(ConnectionDone()))  # reactor would, it learns so
    (instance,) = [c["application_instance"] for c in server.connections.values()]
    await asyncio.wait_for(instance, DISCONNECT_SECONDS)


async def test_a_connection_may_still_set_an_option_of_its_own():
    _, protocol, _ = opened_socket()
    protocol.autoPingTimeout = 2
    assert protocol.autoPingTimeout == 2
    assert protocol.factory.autoPingTimeout == 9
    protocol.connectionLost(Failure(ConnectionDone()))
    await asyncio.wait_for(
        asyncio.gather(*(t for t in asyncio.all_tasks() if t is not asyncio.current_task())),
        RECEIVE_SECONDS,
    )


def test_it_listens_with_a_backlog_for_reconnect_bursts():
    server = server_class()(
        application=echo,
        endpoints=["tcp:port=8000:interface=127.0.0.1", "tcp:port=8001:backlog=7", "unix:/tmp/s"],
    )
    assert server.endpoints == [
        f"tcp:port=8000:interface=127.0.0.1:backlog={LISTEN_BACKLOG}",
        "tcp:port=8001:backlog=7",  # one it names itself is kept
        "unix:/tmp/s",
    ]
    assert server.websocket_handshake_timeout == WEBSOCKET_HANDSHAKE_SECONDS
