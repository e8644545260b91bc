"""WebSocket handshakes: only this site's own origin (or a CSRF-trusted one) may connect.

The rule is Django's CSRF origin rule (a WebSocket carries the session cookie, as a POST
does): the Origin must equal `scheme://host[:port]` of the request, with a Host allowed by
ALLOWED_HOSTS, or be listed in CSRF_TRUSTED_ORIGINS (`https://*.example.com` for
subdomains). Another port or scheme on an allowed host is another origin, so it is refused.
"""

import pytest
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.routing import URLRouter
from django.urls import path

from rbac.middleware import TailgateAuthMiddleware
from tests.streaming_helpers import Socket

HOST = "127.0.0.1:8000"


class WhoAmI(AsyncJsonWebsocketConsumer):
    async def connect(self):
        await self.accept()
        user = self.scope["user"]
        await self.send_json({"user": user.get_username() if user.is_authenticated else None})


application = TailgateAuthMiddleware(URLRouter([path("ws/v1/stream", WhoAmI.as_asgi())]))


async def _connect(origins: list[str], host: str = HOST, scheme: str = "ws", extra=()):
    headers = [(b"host", host.encode())]
    headers += [(b"origin", origin.encode()) for origin in origins]
    headers += list(extra)
    communicator = Socket(application, "/ws/v1/stream", headers=headers)
    communicator.scope["scheme"] = scheme
    connected, _ = await communicator.connect()
    if connected:
        assert await communicator.receive_json_from() == {"user": None}
    await communicator.disconnect()
    return connected


BAD_ORIGINS = [
    pytest.param([], id="missing"),
    pytest.param(["null"], id="null"),
    pytest.param([""], id="empty"),
    pytest.param(["http://127.0.0.1.evil.com"], id="lookalike-suffix"),
    pytest.param(["http://127.0.0.1.evil.com:8000"], id="lookalike-suffix-port"),
    pytest.param(["http://evil-127.0.0.1"], id="lookalike-prefix"),
    pytest.param(["http://evil-127.0.0.1:8000"], id="lookalike-prefix-port"),
    pytest.param(["http://127.0.0.1:8000.evil.com"], id="port-lookalike"),
    pytest.param(["http://evil.com"], id="foreign"),
    pytest.param(["http://127.0.0.1:8001"], id="other-port"),
    pytest.param(["http://127.0.0.1"], id="default-port"),
    pytest.param(["https://127.0.0.1:8000"], id="other-scheme"),
    pytest.param(["ws://127.0.0.1:8000"], id="ws-scheme"),
    pytest.param(["ftp://127.0.0.1:8000"], id="ftp-scheme"),
    pytest.param(["file://"], id="file"),
    pytest.param(["http://localhost:8000"], id="other-allowed-host"),
    pytest.param(["http://user@127.0.0.1:8000"], id="userinfo"),
    pytest.param(["http://127.0.0.1:8000/"], id="trailing-slash"),
    pytest.param(["http://127.0.0.1:8000/path"], id="path"),
    pytest.param(["HTTP://127.0.0.1:8000"], id="uppercase-scheme"),
    pytest.param(["http://127.0.0.1:8000", "http://evil.com"], id="two-origins"),
    pytest.param(["http://127.0.0.1:8000", "http://127.0.0.1:8000"], id="repeated-origin"),
]


@pytest.mark.parametrize("origins", BAD_ORIGINS)
async def test_it_refuses_bad_origins(origins):
    assert not await _connect(origins)


async def test_it_refuses_a_host_not_in_allowed_hosts_even_same_origin():
    # A DNS-rebinding page: evil.com now resolves to us, and is same-origin with itself.
    assert not await _connect(["http://evil.com:8000"], host="evil.com:8000")


async def test_it_refuses_a_missing_host():
    communicator = Socket(
        application, "/ws/v1/stream", headers=[(b"origin", b"http://127.0.0.1:8000")]
    )
    connected, _ = await communicator.connect()
    assert not connected


GOOD = [
    pytest.param("http://127.0.0.1:8000", HOST, "ws", id="same-origin"),
    pytest.param("http://localhost:8000", "localhost:8000", "ws", id="localhost"),
    pytest.param("http://[::1]:8000", "[::1]:8000", "ws", id="ipv6"),
    pytest.param("http://127.0.0.1", "127.0.0.1", "ws", id="default-port"),
    pytest.param("https://127.0.0.1:8000", HOST, "wss", id="tls"),
]


@pytest.mark.parametrize(("origin", "host", "scheme"), GOOD)
async def test_it_accepts_the_sites_own_origin(origin, host, scheme):
    assert await _connect([origin], host=host, scheme=scheme)


async def test_it_accepts_csrf_trusted_origins_and_their_subdomains(settings):
    settings.CSRF_TRUSTED_ORIGINS = ["https://tailgate.example.com", "https://*.corp.example"]
    assert await _connect(["https://tailgate.example.com"])
    assert await _connect(["https://ops.corp.example"])
    assert await _connect(["https://a.b.corp.example"])
    assert await _connect(["https://corp.example"])  # Django's is_same_domain: the base too
    assert not await _connect(["http://tailgate.example.com"])
    assert not await _connect(["https://tailgate.example.com:8443"])
    assert not await _connect(["http://ops.corp.example"])
    assert not await _connect(["https://evilcorp.example"])
    assert not await _connect(["https://corp.example.evil.com"])
    assert not await _connect(["https://ops.corp.example:444"])


async def test_it_trusts_the_proxy_scheme_header_only_when_configured(settings):
    forwarded = [(b"x-forwarded-proto", b"https")]
    assert not await _connect(["https://127.0.0.1:8000"], extra=forwarded)
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert await _connect(["https://127.0.0.1:8000"], extra=forwarded)
    assert not await _connect(["http://127.0.0.1:8000"], extra=forwarded)


async def test_it_logs_a_refusal_with_the_origin_cut_short(caplog):
    assert not await _connect(["http://evil.com/" + "x" * 5000])
    refusal = next(r for r in caplog.records if r.name == "rbac.middleware")
    assert "evil.com" in refusal.getMessage()
    assert len(refusal.getMessage()) < 400
