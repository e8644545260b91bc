"""API keys on requests: `Authorization: Bearer <key>` or `X-API-Key: <key>`.

Keys are taken from headers only, never from the query string: query strings end up in
access logs and browser history. Error messages never repeat the key.
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed

from rbac.access import bind_api_key
from rbac.models import ApiKey

BEARER = "bearer"
INVALID_KEY = "Invalid, expired or revoked API key."


class BadCredentials(Exception):
    """A credential header is present but unusable (the message is safe to show)."""


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The API key a request presents, None when it presents none.

    An `Authorization` header with another scheme (Basic, …) is not ours and is ignored. A key
    that is not printable ASCII cannot be one we issued: refused before any database lookup
    (a NUL would reach PostgreSQL as a DataError).
    """
    from_bearer = None
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == BEARER:
            from_bearer = credentials.strip()
            if not from_bearer:
                raise BadCredentials("The Bearer authorization header carries no key.")
    from_header = x_api_key.strip() if x_api_key is not None else None
    if x_api_key is not None and not from_header:
        raise BadCredentials("The X-API-Key header is empty.")
    if from_bearer and from_header and from_bearer != from_header:
        raise BadCredentials("Authorization and X-API-Key carry different keys.")
    key = from_bearer or from_header
    if key is not None and not (key.isascii() and key.isprintable()):
        raise BadCredentials(INVALID_KEY)
    return key


def authenticate_key(authorization: str | None, x_api_key: str | None) -> ApiKey | None:
    """The usable ApiKey the headers present; None when they present none.

    Raises BadCredentials when a key is presented but is malformed, unknown, expired or
    revoked, or its user is inactive (one message for all: no hint about which).
    """
    raw_key = presented_key(authorization, x_api_key)
    if raw_key is None:
        return None
    key = ApiKey.authenticate(raw_key)
    if key is None:
        raise BadCredentials(INVALID_KEY)
    return key


class ApiKeyAuthentication(BaseAuthentication):
    """DRF authentication by API key; `request.auth` is the ApiKey row.

    Requests without a key fall through to the next class (session, with CSRF). Since this
    class names a `WWW-Authenticate` challenge, DRF answers 401 (not 403) to anonymous calls.
    """

    def authenticate(self, request):
        try:
            key = authenticate_key(
                request.META.get("HTTP_AUTHORIZATION"), request.META.get("HTTP_X_API_KEY")
            )
        except BadCredentials as exc:
            raise AuthenticationFailed(str(exc)) from None
        if key is None:
            return None
        bind_api_key(key.user, key)
        return (key.user, key)

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="tailgate"'


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Documents both ways of presenting a key in the OpenAPI schema (either one works)."""

    target_class = "rbac.authentication.ApiKeyAuthentication"
    name = ["ApiKeyBearer", "ApiKeyHeader"]

    def get_security_requirement(self, auto_schema):
        return [{"ApiKeyBearer": []}, {"ApiKeyHeader": []}]

    def get_security_definition(self, auto_schema):
        return [
            {"type": "http", "scheme": "bearer", "description": "tg_… API key"},
            {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        ]
