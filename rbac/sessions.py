"""Django's database sessions, refusing session keys Django never issues.

Django issues 32 lowercase letters and digits; its own check only wants 8 characters or more,
so a forged cookie (`sessionid="abcdefgh\\000"`, which cookie parsing unquotes to a NUL) went to
the database lookup, where PostgreSQL refuses NUL with a DataError: a 500 on every page, API
call and stream. A key that Django could not have issued is no session at all: the caller is
anonymous (401 on the API, the login page elsewhere). SESSION_ENGINE names this module.
"""

from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore


class SessionStore(DatabaseSessionStore):
    def _validate_session_key(self, key: str | None) -> bool:
        valid = bool(super()._validate_session_key(key))  # type: ignore[misc]
        return valid and key is not None and key.isascii() and key.isalnum()
