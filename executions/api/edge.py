"""The edge: input no layer behind it can hold is refused here, with a 4xx naming where it was.

    request ─▶ EdgeGuardMiddleware   path, headers: NUL → 400; query, form fields: NUL → 422;
             │                       too many fields → 400;
             │                       a declared body over DATA_UPLOAD_MAX_MEMORY_SIZE → 413
             ▼
           DRF view ─▶ SafeJSONParser  body: NUL, lone surrogates, numbers outside int64 or not
                                       finite, nesting past MAX_JSON_DEPTH → 422 `body.<path>`;
                                       nesting past Python's recursion limit → 400

Why each is refused: PostgreSQL text and jsonb cannot store NUL (DataError); a lone surrogate
cannot be encoded as UTF-8 (the renderer and the database both fail); JSON has no inf/nan;
events are packed with msgpack, which holds integers up to 64 bits; and deep nesting costs
recursion in every layer that walks the value.

Under /api/ the answers are problem+json; elsewhere (admin, web pages) a plain-text 4xx.
"""

import codecs
import json
import math
import re
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http import HttpRequest, HttpResponse, QueryDict
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from executions.api.problems import InvalidInput, TooLarge
from executions.problems import INT64_MAX, INT64_MIN, Problem, error, problem_from

API_PREFIX = "/api/"
# Action parameters are flat or shallow documents; 32 levels is far beyond any real one and
# keeps every recursive walk (masking, rendering, msgpack) well inside the recursion limit.
MAX_JSON_DEPTH = 32
# NUL (PostgreSQL refuses it in text) and UTF-16 surrogates (not encodable as UTF-8).
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def unstorable_reason(text: str) -> str | None:
    match = UNSTORABLE.search(text)
    if match is None:
        return None
    if match.group() == "\x00":
        return "must not contain NUL characters"
    return "must not contain lone UTF-16 surrogates (not valid Unicode text)"


# --- JSON bodies ---------------------------------------------------------------------------


def _number_problem(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        return f"must be an integer between {INT64_MIN} and {INT64_MAX}"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    return None


def unsafe_values(value: Any, location: str, depth: int = 0) -> Iterator[dict[str, Any]]:
    """An error for every value in `value` that cannot be stored, rendered or published."""
    if depth > MAX_JSON_DEPTH:
        yield error(location, f"is nested more than {MAX_JSON_DEPTH} levels deep", None)
        return
    if isinstance(value, str):
        reason = unstorable_reason(value)
        if reason:
            yield error(location, reason, value)
    elif isinstance(value, dict):
        for key, item in value.items():
            reason = unstorable_reason(key)
            if reason:
                yield error(f"{location}.{key}", f"(the name) {reason}", key)
            else:
                yield from unsafe_values(item, f"{location}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from unsafe_values(item, f"{location}.{index}", depth + 1)
    else:
        reason = _number_problem(value)
        if reason:
            yield error(location, reason, value)


def _read_bounded(stream) -> bytes:
    """The body, refused (413) past DATA_UPLOAD_MAX_MEMORY_SIZE even when it declared no
    length (a chunked request): Django checks only a declared Content-Length."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if stream is None:
        return b""
    data = stream.read() if limit is None else stream.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise RequestDataTooBig()
    return data


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


class SafeJSONParser(JSONParser):
    """DRF's JSON parser, plus the checks above (422 naming `body.<path>` for each value)."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = codecs.decode(_read_bounded(stream), encoding)
            data = json.loads(text, parse_constant=_refuse_constant)
        except RequestDataTooBig:
            raise TooLarge(too_large_detail()) from None
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None
        except ValueError as exc:  # also UnicodeDecodeError: the body is not UTF-8
            raise ParseError(f"JSON parse error - {exc}") from None
        errors = list(unsafe_values(data, "body"))
        if errors:
            raise InvalidInput(errors)
        return data


# --- path, query, headers ------------------------------------------------------------------


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def _declared_too_big(request: HttpRequest) -> bool:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is None or request.content_type == "multipart/form-data":
        return False  # uploads are bounded by FILE_UPLOAD_* settings instead
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0) > limit
    except ValueError:
        return False


def too_large_detail() -> str:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return f"The request body is larger than {limit} bytes, the most accepted."


def _too_large() -> Problem:
    return Problem(413, too_large_detail())


def _query_problem(request: HttpRequest) -> Problem | None:
    try:
        query = request.GET
    except TooManyFieldsSent:
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        return Problem(400, f"The query string has more than {limit} parameters.")
    return _unstorable_fields(query, "query", "The request has invalid values; see errors.")


def _form_problem(request: HttpRequest) -> Problem | None:
    """A posted HTML form (the web run form, the admin) with NUL in a field name or value."""
    if _is_api(request) or request.content_type not in FORM_TYPES:
        return None  # API bodies are JSON, checked by SafeJSONParser
    try:
        form = request.POST
    except TooManyFieldsSent:
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        return Problem(400, f"The form has more than {limit} fields.")
    except RequestDataTooBig:
        return _too_large()
    return _unstorable_fields(form, "form", "The form has invalid values; see errors.")


def _unstorable_fields(fields: QueryDict, where: str, detail: str) -> Problem | None:
    """A 422 naming each field (`query.name`, `form.name`) whose name or value cannot be
    stored (NUL, a lone surrogate), or None."""
    errors = [
        error(f"{where}.{name}", reason, value)
        for name, values in fields.lists()
        for value in values
        if (reason := unstorable_reason(name + value))
    ]
    return Problem(422, detail, errors=errors) if errors else None


def refused_input(request: HttpRequest) -> Problem | None:
    """Why the edge refuses this request, or None."""
    reason = unstorable_reason(request.path)
    if reason:
        return Problem(400, f"The path {reason}.", errors=[error("path", reason, request.path)])
    for name, value in request.headers.items():
        reason = unstorable_reason(value)
        if reason:
            return Problem(400, f"A header {reason}.", errors=[error(f"header.{name}", reason)])
    if _declared_too_big(request):
        return _too_large()
    return _query_problem(request) or _form_problem(request)


def answer(request: HttpRequest, problem: Problem) -> HttpResponse:
    """problem+json under /api/; a plain-text answer for pages (admin, web)."""
    if _is_api(request):
        return problem_from(request, problem)
    text = f"{problem.status} {HTTPStatus(problem.status).phrase}: {problem.detail}\n"
    text += "".join(f"{e['location']!r}: {e['message']}\n" for e in problem.errors or ())
    return HttpResponse(text, status=problem.status, content_type="text/plain; charset=utf-8")


class EdgeGuardMiddleware:
    """Refuses unstorable input before any view runs; turns Django's own refusals into 4xx."""

    def __init__(self, get_response):
        self.get_response = get_response
        complete_reason_phrases()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        problem = refused_input(request)
        if problem is not None:
            return answer(request, problem)
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception):
        """Views outside DRF (admin, web forms) reading a body Django refuses."""
        if isinstance(exception, RequestDataTooBig):
            return answer(request, _too_large())
        if isinstance(exception, TooManyFieldsSent):
            limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
            return answer(request, Problem(400, f"The request has more than {limit} fields."))
        return None


def complete_reason_phrases() -> None:
    """Give Twisted (daphne's HTTP layer) the reason phrases it lacks.

    Twisted's `RESPONSES` table has no 422, 429 or 431, so daphne's status line read
    `HTTP/1.1 429 Unknown Status`. Filling the missing codes from `http.HTTPStatus` fixes every
    daphne in this process (`manage.py serve` and a plain `daphne project.asgi:application`
    both load this middleware at start-up). Idempotent; never overrides Twisted's own phrases.
    """
    try:
        from twisted.web import http as twisted_http
    except ImportError:  # served by another ASGI server: nothing to complete
        return
    for status in HTTPStatus:
        twisted_http.RESPONSES.setdefault(status.value, status.phrase.encode())
