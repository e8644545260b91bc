"""Stream parameters: parsed and checked before a stream starts, every error named.

The same checks serve query strings (SSE, plain text) and WebSocket messages (JSON), so
`Source` wraps either: `location` prefixes each error (`query.from`, `message.after_seq`).
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from executions.models import OutputType

INT64_MAX = 2**63 - 1
DEFAULT_FROM = -1000
DEFAULT_REPLAY_LIMIT = 5000
MAX_REPLAY_LIMIT = 50_000
ULID_RE = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}", re.IGNORECASE)
_INT_RE = re.compile(r"[+-]?\d{1,19}")


class Problem(Exception):
    """An RFC 9457 answer given instead of a stream (or as a WebSocket `error` event)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = list(headers)

    def body(self, instance: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "about:blank",
            "title": HTTPStatus(self.status).phrase,
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
        }
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def invalid(errors: list[dict[str, Any]]) -> Problem:
    return Problem(422, "The request has invalid values; see errors.", errors=errors)


def not_found(execution_id: str) -> Problem:
    return Problem(404, f"There is no execution {execution_id}.")


class Source:
    """Named values from a query string or a JSON message; collects the errors found."""

    def __init__(self, values: dict[str, Any], location: str):
        self.values = values
        self.location = location
        self.errors: list[dict[str, Any]] = []

    @classmethod
    def from_query(cls, scope) -> "Source":
        query = parse_qs(scope.get("query_string", b"").decode("latin1"), keep_blank_values=True)
        source = cls({}, "query")
        for name, values in query.items():
            if len(values) > 1:
                source.error(name, "is given more than once", values)
            source.values[name] = values[-1]
        return source

    def error(self, name: str, message: str, value: Any) -> None:
        self.errors.append(
            {"location": f"{self.location}.{name}", "message": message, "value": value}
        )

    def check(self) -> None:
        if self.errors:
            raise invalid(self.errors)

    def integer(self, name: str, default: int | None, low: int = -INT64_MAX, high: int = INT64_MAX):
        value = self.values.get(name)
        if value is None:
            return default
        number = parse_int(value)
        if number is None:
            self.error(name, "must be an integer", value)
        elif not low <= number <= high:
            self.error(name, f"must be between {low} and {high}", value)
        else:
            return number
        return default

    def choice(self, name: str, choices: Iterable[str]) -> str | None:
        value = self.values.get(name)
        if value is None or value == "":
            return None
        choices = list(choices)
        if value not in choices:
            self.error(name, f"must be one of {', '.join(choices)}", value)
            return None
        return value

    def names(self, name: str) -> frozenset[str] | None:
        """A comma list (or a JSON list) of non-empty strings; None when not given."""
        value = self.values.get(name)
        if value is None:
            return None
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            self.error(name, "must be a comma list of names", value)
            return None
        cleaned = frozenset(item.strip() for item in items if item.strip())
        if not cleaned:
            self.error(name, "must name at least one value", value)
            return None
        return cleaned


def parse_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
        return int(value.strip())
    return None


def header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin1")
    return None


def last_event_id(scope, source: Source) -> int | None:
    """The `Last-Event-ID` header as a cursor (a non-negative integer); None when absent."""
    raw = header(scope, b"last-event-id")
    if raw is None or not raw.strip():
        return None
    number = parse_int(raw)
    if number is None or number < 0 or number > INT64_MAX:
        source.errors.append(
            {
                "location": "header.Last-Event-ID",
                "message": "must be a non-negative integer (the id of the last event received)",
                "value": raw,
            }
        )
        return None
    return number


@dataclass(frozen=True)
class OutputWindow:
    """Which part of an execution's output a client asked for."""

    from_seq: int = DEFAULT_FROM
    resume_after: int | None = None  # Last-Event-ID / after_seq: wins over from_seq
    replay_limit: int | None = DEFAULT_REPLAY_LIMIT  # None: everything (plain text)
    output_type: str | None = None


def output_window(source: Source, resume_after: int | None) -> OutputWindow:
    """`from`, `replay_limit` and `type` from `source` (call `source.check()` after)."""
    return OutputWindow(
        from_seq=source.integer("from", DEFAULT_FROM),
        resume_after=resume_after,
        replay_limit=source.integer("replay_limit", DEFAULT_REPLAY_LIMIT, 1, MAX_REPLAY_LIMIT),
        output_type=source.choice("type", OutputType.values),
    )


def execution_id_or_404(value: Any) -> str:
    """A path's (or message's) execution id: `last` or a ULID (upper case); else 404."""
    if value == "last":
        return value
    if isinstance(value, str) and ULID_RE.fullmatch(value):
        return value.upper()
    raise not_found(str(value))
