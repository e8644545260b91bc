"""How the REST API authenticates a session (API keys: `rbac.authentication`)."""

from rest_framework import authentication


class SessionAuthentication(authentication.SessionAuthentication):
    """DRF's session authentication (with its CSRF check on unsafe methods), naming a scheme.

    DRF answers 401 only when the first authentication class names a `WWW-Authenticate`
    scheme; without one an unauthenticated request would get 403, which reads as "you may
    not" instead of "log in first".
    """

    def authenticate_header(self, request) -> str:
        return 'Session realm="tailgate"'
