"""Stream parameters: parsed and checked before a stream starts, every error named.

The same checks serve query strings (SSE, plain text) and WebSocket messages (JSON), so
`Source` wraps either: `location` prefixes each error (`query.from`, `message.after_seq`).

    Source.from_query(scope)      aliases folded (st2's names), NUL refused, fields bounded
      .integer() / .choice() / .names()   each read marks its name as known
      .check()                    raises one 422 naming every invalid value and, for a
                                  query, every parameter no reader asked for (a typo must
                                  not look like a filter that works)

Problems and ids come from `executions.problems` (one definition for every transport); the
names below stay importable from here for the stream endpoints.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from executions.models import OutputType
from executions.problems import (
    INT64_MAX,
    INT64_MIN,
    ULID_RE,
    Problem,
    error,
    execution_ref,
    invalid,
    not_found,
)

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "ULID_RE",
    "OutputWindow",
    "Problem",
    "Source",
    "execution_id_or_404",
    "invalid",
    "last_event_id",
    "not_found",
    "output_window",
]

DEFAULT_FROM = -1000
DEFAULT_REPLAY_LIMIT = 5000
MAX_REPLAY_LIMIT = 50_000
# Stream endpoints take at most seven parameters; a query with more than this many fields is
# not a request a client means (Django's REST side has the same guard at 1,000 fields).
MAX_QUERY_FIELDS = 100
# StackStorm's names for the same filters, so st2 clients and scripts work unchanged.
QUERY_ALIASES = {
    "output_type": "type",
    "action_refs": "action",
    "execution_ids": "execution",
}
_INT_RE = re.compile(r"[+-]?\d{1,19}")


class Source:
    """Named values from a query string or a JSON message; collects the errors found.

    `strict` sources (query strings) also refuse names no reader asked for, in `check()`.
    """

    def __init__(self, values: dict[str, Any], location: str, *, strict: bool = False):
        self.values = values
        self.location = location
        self.strict = strict
        self.errors: list[dict[str, Any]] = []
        self.read: set[str] = set()
        self.given_as: dict[str, str] = {}  # canonical name → the alias the client used

    @classmethod
    def from_query(cls, scope) -> "Source":
        """The query string of `scope`; a 400 Problem when it has more than MAX_QUERY_FIELDS."""
        raw = scope.get("query_string", b"").decode("latin1")
        try:
            pairs = parse_qsl(raw, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
        except ValueError:
            raise Problem(
                400, f"The query string has more than {MAX_QUERY_FIELDS} parameters."
            ) from None
        source = cls({}, "query", strict=True)
        seen: dict[str, list[str]] = {}
        for given, value in pairs:
            seen.setdefault(given, []).append(value)
        for given, values in seen.items():
            source._add(given, values)
        return source

    def _add(self, given: str, values: list[str]) -> None:
        name = QUERY_ALIASES.get(given, given)
        if "\x00" in given or any("\x00" in value for value in values):
            self.error(given, "must not contain NUL characters", values[-1])
            self.read.add(given)  # reported once, not again as unknown
        elif name in self.values:
            self.error(
                given, f"names the same parameter as {self.given_as.get(name, name)}", values[-1]
            )
        elif len(values) > 1:
            self.error(given, "is given more than once", values)
        self.values[name] = values[-1]
        if name != given:
            self.given_as[name] = given

    def error(self, name: str, message: str, value: Any) -> None:
        shown = self.given_as.get(name, name)
        self.errors.append(error(f"{self.location}.{shown}", message, value))

    def check(self) -> None:
        """Raise one 422 Problem for every error found (and, if strict, every unknown name)."""
        if self.strict:
            for name in sorted(set(self.values) - self.read):
                known = ", ".join(sorted(self.read)) or "none"
                self.error(
                    name, f"is not a known parameter (known here: {known})", self.values[name]
                )
        if self.errors:
            raise invalid(self.errors)

    def get(self, name: str) -> Any:
        self.read.add(name)
        return self.values.get(name)

    def integer(self, name: str, default: int | None, low: int = INT64_MIN, high: int = INT64_MAX):
        value = self.get(name)
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
        value = self.get(name)
        if value is None or value == "":
            return None
        choices = list(choices)
        if value not in choices:
            self.error(name, f"must be one of {', '.join(choices)}", value)
            return None
        return value

    def names(self, name: str) -> frozenset[str] | None:
        """A comma list (or a JSON list) of non-empty strings; None when not given."""
        value = self.get(name)
        if value is None:
            return None
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            self.error(name, "must be a comma list of names", value)
            return None
        cleaned = [item.strip() for item in items]
        if not all(cleaned):  # `a,,b` or `` : a dropped item would look like a filter that works
            self.error(name, "must be a comma list of non-empty names", value)
            return None
        return frozenset(cleaned)


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
        message = "must be a non-negative integer (the id of the last event received)"
        source.errors.append(error("header.Last-Event-ID", message, raw))
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
    return execution_ref(value)
