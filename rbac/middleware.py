"""One Channels middleware for every stream: who is calling, and may a WebSocket connect here.

It sets, for HTTP (SSE, plain-text output) and WebSocket scopes alike:

- `scope["user"]`: the User, or AnonymousUser;
- `scope["api_key"]`: the ApiKey that authenticated the call, or None;
- `scope["auth_error"]`: why presented credentials were refused (safe to show), or None;
- `scope["bad_host"]`: set when the `Host` is not in ALLOWED_HOSTS (streams answer 400).

Credentials, in order: an API key (`Authorization: Bearer …` or `X-API-Key: …`; a presented
key that does not authenticate leaves the caller anonymous, it never falls back to the
cookie), else the Django session cookie.

WebSocket handshakes are refused (HTTP 403) unless the `Origin` is this site's own origin or
listed in CSRF_TRUSTED_ORIGINS: the rule Django applies to unsafe requests, because a
WebSocket carries the session cookie like a POST does. A request whose `Host` is not in
ALLOWED_HOSTS authenticates nobody (DNS-rebinding pages must not borrow a session).
"""

import logging
from importlib import import_module
from urllib.parse import urlsplit

from channels.auth import get_user
from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.core.handlers.asgi import ASGIHandler
from django.http.cookie import parse_cookie
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

from rbac.access import bind_api_key
from rbac.authentication import BadCredentials, authenticate_key

log = logging.getLogger(__name__)

# Refused origins are logged truncated to this many characters (the header is attacker text).
MAX_LOGGED_ORIGIN = 200
DEBUG_HOSTS = [".localhost", "127.0.0.1", "[::1]"]

deny_websocket = WebsocketDenier.as_asgi()


def _header_values(scope, name: bytes) -> list[str]:
    return [value.decode("latin1") for key, value in scope.get("headers", ()) if key == name]


def _single_header(scope, name: bytes) -> str | None:
    """The header's value; None when absent. Repeated headers raise: they are ambiguous."""
    values = _header_values(scope, name)
    if len(values) > 1:
        raise BadCredentials(f"More than one {name.decode()} header.")
    return values[0] if values else None


def _allowed_hosts() -> list[str]:
    if settings.DEBUG and not settings.ALLOWED_HOSTS:
        return DEBUG_HOSTS
    return list(settings.ALLOWED_HOSTS)


def request_host(scope) -> str | None:
    """The `Host` the client addressed, if ALLOWED_HOSTS allows it (as Django's get_host)."""
    hosts = _header_values(scope, b"host")
    if settings.USE_X_FORWARDED_HOST:
        hosts = _header_values(scope, b"x-forwarded-host") or hosts
    if len(hosts) != 1:
        return None
    host = hosts[0].strip()
    domain, _port = split_domain_port(host)
    return host if domain and validate_host(domain, _allowed_hosts()) else None


def _is_secure(scope) -> bool:
    if scope.get("scheme") in ("https", "wss"):
        return True
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if not proxy_header:
        return False
    meta_name, expected = proxy_header
    header = meta_name.removeprefix("HTTP_").lower().replace("_", "-").encode()
    values = _header_values(scope, header)
    return bool(values) and values[0].split(",")[0].strip() == expected


def origin_allowed(scope) -> bool:
    """May a WebSocket handshake with this scope's `Origin` connect? (Missing: no.)"""
    origins = _header_values(scope, b"origin")
    if len(origins) != 1:
        return False
    origin = origins[0]
    host = request_host(scope)
    if host is None:
        return False
    own_origin = f"{'https' if _is_secure(scope) else 'http'}://{host}"
    if origin == own_origin or origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    if parsed.path or parsed.query or parsed.fragment or "@" in parsed.netloc:
        return False
    # CSRF_TRUSTED_ORIGINS may name subdomains: `https://*.example.com`.
    return any(
        trusted.scheme == parsed.scheme
        and trusted.netloc.startswith("*")
        and is_same_domain(parsed.netloc, trusted.netloc[1:])
        for trusted in map(urlsplit, settings.CSRF_TRUSTED_ORIGINS)
    )


def _session_store(scope):
    # HTTP/2 may send the cookies in several headers.
    cookies = parse_cookie("; ".join(_header_values(scope, b"cookie")))
    session_key = cookies.get(settings.SESSION_COOKIE_NAME)
    engine = import_module(settings.SESSION_ENGINE)
    return engine.SessionStore(session_key)


async def authenticate_scope(scope) -> None:
    """Fill `user`, `api_key` and `auth_error` in `scope` (see the module docstring)."""
    scope["user"], scope["api_key"], scope["auth_error"] = AnonymousUser(), None, None
    if request_host(scope) is None:
        scope["auth_error"] = "This host name is not served here."
        scope["bad_host"] = True  # answered 400, as Django answers a disallowed Host
        return
    try:
        authorization = _single_header(scope, b"authorization")
        x_api_key = _single_header(scope, b"x-api-key")
        key = await database_sync_to_async(authenticate_key)(authorization, x_api_key)
    except BadCredentials as exc:
        scope["auth_error"] = str(exc)
        return
    if key is not None:
        bind_api_key(key.user, key)
        scope["user"], scope["api_key"] = key.user, key
        return
    scope["session"] = _session_store(scope)
    scope["user"] = await get_user(scope)


class TailgateAuthMiddleware(BaseMiddleware):
    """Authenticates HTTP and WebSocket scopes; refuses WebSockets from foreign origins.

    Wrapped around a URLRouter, it leaves alone the HTTP paths the router hands to Django
    (pages, admin, REST API, static files): Django and DRF authenticate those themselves,
    and doing it here too would cost every request two more queries.
    """

    async def __call__(self, scope, receive, send):
        scope = dict(scope)
        if scope["type"] == "websocket" and not origin_allowed(scope):
            origin = next(iter(_header_values(scope, b"origin")), None)
            shown = None if origin is None else origin[:MAX_LOGGED_ORIGIN]
            log.warning("refused WebSocket %s from origin %r", scope.get("path"), shown)
            return await deny_websocket(scope, receive, send)
        if scope["type"] in ("http", "websocket") and not self._routed_to_django(scope):
            await authenticate_scope(scope)
        return await self.inner(scope, receive, send)

    def _routed_to_django(self, scope) -> bool:
        routes = getattr(self.inner, "routes", None)
        if scope["type"] != "http" or routes is None:
            return False
        path = scope.get("path", "").removeprefix(scope.get("root_path", "")).lstrip("/")
        for route in routes:
            if route.pattern.match(path):
                return isinstance(route.callback, ASGIHandler)
        return False
