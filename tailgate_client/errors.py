"""What can go wrong when talking to Tailgate, as exception types a caller can catch.

Every error answer of the API is RFC 9457 problem+json; `ApiError` carries its fields
(`type`, `title`, `status`, `detail`, `instance`, `errors`) and its subclass says which
status it was, so `except NotFound:` reads like the situation it handles.
"""

from typing import Any


class TailgateError(Exception):
    """Anything this client raises on purpose."""


class ServerUnreachable(TailgateError):
    """No HTTP answer at all: connection refused, DNS, TLS, timeout."""

    def __init__(self, url: str, reason: str):
        self.url = url
        self.reason = reason
        super().__init__(f"cannot reach {url}: {reason}")


class StreamLost(TailgateError):
    """A stream that kept failing to reconnect; `last_id` is where it stopped."""

    def __init__(self, what: str, last_id: str | None):
        self.last_id = last_id
        super().__init__(f"lost the stream of {what} after {last_id or 'its start'}; gave up")


class NotSupported(TailgateError):
    """The API has no such operation (for example, deleting an action)."""


class ApiError(TailgateError):
    """An error answer from the server, with the problem+json fields as attributes."""

    def __init__(self, status: int, problem: dict[str, Any], headers: dict[str, str] | None = None):
        self.status = status
        self.problem = problem
        self.headers = headers or {}
        self.type = problem.get("type", "about:blank")
        self.title = problem.get("title", "")
        self.detail = problem.get("detail") or self.title or f"HTTP {status}"
        self.instance = problem.get("instance")
        self.errors: list[dict[str, Any]] = list(problem.get("errors") or [])
        super().__init__(self.detail)

    def __str__(self) -> str:
        if not self.errors:
            return self.detail
        return "; ".join(_describe(error) for error in self.errors)


def _describe(error: dict[str, Any]) -> str:
    """`body.parameters.count: must be of type integer (got 'lots')`."""
    text = f"{error.get('location')}: {error.get('message')}"
    if "value" in error and error["value"] is not None:
        text += f" (got {error['value']!r})"
    return text


class BadRequest(ApiError):
    """400."""


class AuthenticationFailed(ApiError):
    """401: no key, or a key the server does not accept."""


class PermissionDenied(ApiError):
    """403: authenticated, but not allowed to do this."""


class NotFound(ApiError):
    """404: missing, or hidden from this caller (the API does not tell them apart)."""


class Conflict(ApiError):
    """409: not possible in the object's current state (cancel a finished execution)."""


class ValidationFailed(ApiError):
    """422: `errors` names each bad field, its message and the value sent."""


class TooManyRequests(ApiError):
    """429: too many open streams; `retry_after` seconds, when the server said."""

    @property
    def retry_after(self) -> float | None:
        value = self.headers.get("retry-after")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None


class ServerError(ApiError):
    """5xx."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: AuthenticationFailed,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    422: ValidationFailed,
    429: TooManyRequests,
}


def api_error(status: int, problem: dict[str, Any], headers: dict[str, str]) -> ApiError:
    """The `ApiError` subclass for `status`."""
    kind = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    return kind(status, problem, headers)


class WaitTimeout(TailgateError):
    """`wait` gave up before the execution finished; `execution` is its last known state."""

    def __init__(self, execution: dict[str, Any], seconds: float):
        self.execution = execution
        super().__init__(
            f"execution {execution['id']} is still {execution['status']} after {seconds:g} s"
        )


class Ambiguous(TailgateError):
    """`get_by_name` found more than one match."""
