"""RFC 9457 problem details: every error under `/api/` answers `application/problem+json`.

DRF views go through `exception_handler`; requests that never reach a DRF view (an unknown
path, a bad Host header, a crash in middleware) go through the Django handlers at the end.
Bodies are built by `executions.problems` (shared with the streams, limits and web pages).

Inputs Django itself refuses become 4xx here, never a 500: a body over
DATA_UPLOAD_MAX_MEMORY_SIZE is 413, more than DATA_UPLOAD_MAX_NUMBER_FIELDS fields 400, any
other SuspiciousOperation 400, and JSON nested past Python's recursion limit 400.
"""

import logging
import math
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import Resolver404, resolve
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import set_rollback

from executions.problems import (
    PROBLEM_MEDIA_TYPE,
    Problem,
    printable,
    problem_body,
    problem_response,
)

log = logging.getLogger(__name__)

API_PREFIX = "/api/"
CATCH_ALL_URL_NAME = "api-not-found"


class ProblemJSONRenderer(JSONRenderer):
    media_type = PROBLEM_MEDIA_TYPE
    format = "problem+json"


class InvalidInput(exceptions.APIException):
    """A request that was understood but holds invalid values; `errors` names each of them."""

    status_code = 422
    default_detail = "The request has invalid values; see errors."

    def __init__(self, errors: list[dict[str, Any]], detail: str | None = None):
        super().__init__(detail)
        self.errors = errors


class Conflict(exceptions.APIException):
    status_code = 409
    default_detail = "The request conflicts with the current state of the resource."


def problem(
    status: int, detail: str, *, instance: str, errors: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A problem details body (kept for callers of this module: see executions.problems)."""
    return problem_body(status, detail, instance=instance, errors=errors)


class TooLarge(exceptions.APIException):
    status_code = 413
    default_detail = "The request body is larger than this server accepts."


class FromProblem(exceptions.APIException):
    """A transport-neutral Problem raised under a DRF view."""

    def __init__(self, problem: Problem):
        super().__init__(problem.detail)
        self.status_code = problem.status
        self.errors = problem.errors
        self.headers = {key.decode(): value.decode() for key, value in problem.headers}


# --- DRF ----------------------------------------------------------------------------------


def _value_at(data: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


def _flatten(detail: Any, path: list[str]):
    """(path, message) for each message of a DRF ValidationError detail."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            nested = path if key == api_settings.NON_FIELD_ERRORS_KEY else [*path, str(key)]
            yield from _flatten(value, nested)
    elif isinstance(detail, list):
        for index, item in enumerate(detail):
            if isinstance(item, (dict, list)):
                yield from _flatten(item, [*path, str(index)])
            else:
                yield path, str(item)
    else:
        yield path, str(detail)


def validation_errors(detail: Any, data: Any, root: str) -> list[dict[str, Any]]:
    """DRF's nested error detail as `errors[]`: `location` is `root.field.sub`, `value` the input."""
    return [
        {
            "location": ".".join([root, *path]),
            "message": message,
            # The whole body is not echoed back for a body-level error, only field values.
            "value": _value_at(data, path) if path else None,
        }
        for path, message in _flatten(detail, [])
    ]


def _refused_by_django(exc: Exception) -> exceptions.APIException | None:
    if isinstance(exc, RequestDataTooBig):
        return TooLarge()
    if isinstance(exc, TooManyFieldsSent):
        return exceptions.ParseError("The request has too many fields.")
    if isinstance(exc, SuspiciousOperation):
        return exceptions.ParseError("The request was rejected as malformed.")
    if isinstance(exc, RecursionError):
        return exceptions.ParseError("The request is nested too deeply.")
    return None


def _as_api_exception(exc: Exception, request) -> exceptions.APIException | None:
    if isinstance(exc, Problem):
        return FromProblem(exc)
    refused = _refused_by_django(exc)
    if refused is not None:
        return refused
    if isinstance(exc, Http404):
        return exceptions.NotFound()  # Http404's own message may name a model or a query
    if isinstance(exc, DjangoPermissionDenied):
        return exceptions.PermissionDenied()
    if isinstance(exc, exceptions.ValidationError):
        reading = request.method in ("GET", "HEAD", "OPTIONS")
        root, data = ("query", request.query_params) if reading else ("body", request.data)
        return InvalidInput(validation_errors(exc.detail, data, root))
    if isinstance(exc, exceptions.APIException):
        return exc
    return None


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: any exception, expected or not, becomes a problem response."""
    request = context["request"]
    api_exc = _as_api_exception(exc, request)
    headers: dict[str, str] = {}
    if api_exc is None:
        log.error("unexpected error on %s %s", request.method, request.path, exc_info=exc)
        status, detail, errors = 500, "An unexpected error occurred; it has been logged.", None
    else:
        status, errors = api_exc.status_code, getattr(api_exc, "errors", None)
        detail = str(api_exc.detail) if not isinstance(api_exc.detail, (list, dict)) else ""
        detail = detail or str(api_exc.default_detail)
        headers.update(getattr(api_exc, "headers", {}))
        challenge, wait = getattr(api_exc, "auth_header", None), getattr(api_exc, "wait", None)
        if challenge:
            headers["WWW-Authenticate"] = challenge
        if wait:
            headers["Retry-After"] = str(math.ceil(wait))
    set_rollback()
    # Errors are problem+json whatever the client asked for (and even when negotiation failed).
    request.accepted_renderer = ProblemJSONRenderer()
    request.accepted_media_type = PROBLEM_MEDIA_TYPE
    body = problem_body(status, detail, instance=printable(request.path), errors=errors)
    return Response(body, status=status, headers=headers)


# --- Django (requests that do not reach a DRF view) ---------------------------------------


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


@csrf_exempt
def api_not_found(request: HttpRequest, *args, **kwargs) -> HttpResponse:
    """The last URL pattern under /api/: an unknown path is a problem, never an HTML page."""
    detail = f"There is no API endpoint at {request.path}."
    if not request.path.endswith("/"):
        try:
            match = resolve(request.path + "/")
        except Resolver404:
            match = None
        if match is not None and match.url_name != CATCH_ALL_URL_NAME:
            detail += f" Did you mean {request.path}/ ?"
    return problem_response(request, 404, detail)


def bad_request(request: HttpRequest, exception: Exception) -> Any:
    if _is_api(request):
        return problem_response(request, 400, "The request was rejected as malformed.")
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception) -> Any:
    if _is_api(request):
        return problem_response(request, 403, "You do not have permission to do this.")
    return defaults.permission_denied(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> Any:
    if _is_api(request):
        return problem_response(request, 404, f"There is no API endpoint at {request.path}.")
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> Any:
    if _is_api(request):
        return problem_response(request, 500, "An unexpected error occurred; it has been logged.")
    return defaults.server_error(request)
