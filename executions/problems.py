"""Problems and ids, defined once for every transport (REST, streams, limits, admin, web pages).

    raise Problem(422, "…", errors=[error("query.from", "must be an integer", "x")])
        ├─ REST (DRF):      executions.api.problems.exception_handler → problem_body()
        ├─ Django views:    problem_response(request, ...)            → problem_body()
        └─ streams/WS:      Problem.body(instance)                     → problem_body()

An error body is RFC 9457 `application/problem+json`: `type` (always `about:blank`, so the
`title` is the status phrase), `title`, `status`, `detail`, `instance` (the request path) and,
for invalid values, `errors[]` of `{location, message, value}`; `location` is
`body.<field>`, `query.<name>`, `header.<Name>`, `path` or `message.<field>` (WebSocket).

Execution ids: a ULID (26 Crockford base32 characters, any case) or the word `last`;
`execution_ref()` is the one parser. It answers 404 for anything else without a query.
"""

import json
import math
import re
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from django.http import HttpRequest, HttpResponse

PROBLEM_MEDIA_TYPE = "application/problem+json"
LAST = "last"
ULID_RE = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}", re.IGNORECASE)
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# A problem lists at most this many errors: a request with 1,000 bad fields gets a bounded
# answer (the count of the rest is in `detail`).
MAX_ERRORS = 50
# An echoed value nested deeper than this is cut: the answer stays small and never recurses far.
MAX_ECHO_DEPTH = 8


def phrase(status: int) -> str:
    """The reason phrase of `status` (`Unprocessable Content`, `Too Many Requests`, …)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error(location: str, message: str, value: Any = None) -> dict[str, Any]:
    """One entry of `errors[]`."""
    return {"location": location, "message": message, "value": value}


def problem_body(
    status: int, detail: str, *, instance: str, errors: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The RFC 9457 body; `errors` is cut to MAX_ERRORS (the detail says how many were cut)."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": phrase(status),
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    if errors is not None:
        if len(errors) > MAX_ERRORS:
            body["detail"] = f"{detail} ({len(errors) - MAX_ERRORS} more errors not listed)"
        body["errors"] = [
            {**entry, "value": printable(entry.get("value"))} for entry in errors[:MAX_ERRORS]
        ]
    return body


def printable(value: Any, depth: int = 0) -> Any:
    """`value` as JSON can always carry it: an echoed input never breaks the error answer.

    Lone surrogates are shown escaped (`\\ud800`), numbers JSON cannot hold (inf, nan) as text,
    and containers deeper than MAX_ECHO_DEPTH as `…`.
    """
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if depth >= MAX_ECHO_DEPTH and isinstance(value, (dict, list)):
        return "…"
    if isinstance(value, dict):
        return {printable(str(k)): printable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable(item, depth + 1) for item in value]
    return value


def dumps(body: dict[str, Any]) -> bytes:
    """Compact JSON; any lone surrogate that slipped into a value is escaped, never a crash."""
    return json.dumps(body, separators=(",", ":")).encode()


class Problem(Exception):
    """An RFC 9457 answer, raised anywhere and rendered by the transport that catches it."""

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
        return problem_body(self.status, self.detail, instance=instance, errors=self.errors)


def invalid(errors: list[dict[str, Any]]) -> Problem:
    """422 naming each invalid value."""
    return Problem(422, "The request has invalid values; see errors.", errors=errors)


def not_found(execution_id: str) -> Problem:
    return Problem(404, f"There is no execution {execution_id}.")


def execution_ref(value: Any) -> str:
    """A path's (or message's) execution id: `last`, or a ULID in upper case; else a 404."""
    if value == LAST:
        return value
    if isinstance(value, str) and ULID_RE.fullmatch(value):
        return value.upper()
    raise not_found(str(value))


def is_ulid(value: Any) -> bool:
    return isinstance(value, str) and ULID_RE.fullmatch(value) is not None


def problem_response(
    request: HttpRequest,
    status: int,
    detail: str,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> HttpResponse:
    """A plain Django response carrying a problem (views outside DRF, middleware, web pages)."""
    body = problem_body(status, detail, instance=_safe_path(request), errors=errors)
    return HttpResponse(
        dumps(body), status=status, content_type=PROBLEM_MEDIA_TYPE, headers=headers
    )


def problem_from(request: HttpRequest, problem: Problem) -> HttpResponse:
    """`problem` as a Django response (for a view that raised or built a Problem)."""
    headers = {key.decode(): value.decode() for key, value in problem.headers}
    return problem_response(
        request, problem.status, problem.detail, errors=problem.errors, headers=headers
    )


def _safe_path(request: HttpRequest) -> str:
    # The path is echoed as `instance`; a lone surrogate in it must not break the answer.
    return printable(request.path)
