"""OpenAPI: problem responses, the session scheme, and the streaming endpoints.

The streaming endpoints are Channels consumers, not DRF views, so drf-spectacular cannot see
them; `add_streaming_endpoints` (a postprocessing hook) writes them in by hand, with their
query parameters and `text/plain` / `text/event-stream` responses.
"""

from copy import deepcopy
from typing import Any

from drf_spectacular.authentication import SessionScheme
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

from executions.api.problems import PROBLEM_MEDIA_TYPE
from executions.models import ExecutionStatus, OutputType


class ProblemErrorSerializer(serializers.Serializer):
    location = serializers.CharField(
        help_text="e.g. body.action, body.parameters.count, query.status"
    )
    message = serializers.CharField()
    value = serializers.JSONField(
        allow_null=True, help_text="the value given there (secrets masked)"
    )


class ProblemSerializer(serializers.Serializer):
    type = serializers.CharField(default="about:blank")
    title = serializers.CharField(help_text="the HTTP status phrase")
    status = serializers.IntegerField()
    detail = serializers.CharField()
    instance = serializers.CharField(help_text="the request path")
    # Declared fields are popped off the class, so `errors` does not shadow Serializer.errors.
    errors = ProblemErrorSerializer(  # type: ignore[assignment]
        many=True, required=False, help_text="validation errors"
    )


PROBLEM_DESCRIPTIONS = {
    400: "malformed request (e.g. a body that is not JSON, or an invalid stream parameter)",
    401: "not authenticated",
    403: "authenticated but not allowed",
    404: "no such resource, or one you may not see",
    409: "conflicts with the current state (e.g. already finished)",
    415: "unsupported content type (send application/json)",
    422: "invalid values; `errors` names each one",
    429: "too many concurrent streams for this tenant; see Retry-After",
}


def problems(*statuses: int) -> dict[tuple[int, str], OpenApiResponse]:
    """`responses` entries for extend_schema: each status answered as a problem+json body."""
    return {
        (status, PROBLEM_MEDIA_TYPE): OpenApiResponse(
            ProblemSerializer, description=PROBLEM_DESCRIPTIONS[status]
        )
        for status in (401, *statuses)
    }


class SessionCookieScheme(SessionScheme):
    target_class = "executions.api.authentication.SessionAuthentication"


# --- streaming endpoints -------------------------------------------------------------------

REF = "#/components/schemas/"


def _param(name: str, where: str, schema: dict, description: str) -> dict[str, Any]:
    return {"name": name, "in": where, "schema": schema, "description": description}


ID_PARAM = _param(
    "id", "path", {"type": "string"}, "Execution id (ULID), or `last` for the newest you may see."
)
ID_PARAM["required"] = True
TYPE_PARAM = _param(
    "type",
    "query",
    {"type": "string", "enum": list(OutputType.values)},
    "Only this output stream (default: all of them).",
)
LAST_EVENT_ID = _param(
    "Last-Event-ID",
    "header",
    {"type": "string"},
    "The id of the last event received; resumes right after it and wins over `from`.",
)
FILTER = "Comma list; combined with the other filters by AND."
STREAM_PARAMS = [
    _param(
        "events",
        "query",
        {"type": "string"},
        "Comma list of event names, `*` globs allowed (`execution__*`, `*`). Default: "
        "`execution__create,execution__update`; output events are opt-in.",
    ),
    _param("tenant", "query", {"type": "string"}, f"Tenant slug(s). {FILTER}"),
    _param("action", "query", {"type": "string"}, f"Action ref(s). {FILTER}"),
    _param("status", "query", {"type": "string"}, f"Execution status(es). {FILTER}"),
    _param("execution", "query", {"type": "string"}, f"Execution id(s). {FILTER}"),
    _param("parent", "query", {"type": "string"}, f"Parent execution id(s). {FILTER}"),
    LAST_EVENT_ID,
]
OUTPUT_STREAM_PARAMS = [
    ID_PARAM,
    _param(
        "from",
        "query",
        {"type": "integer", "format": "int64", "default": -1000},
        "Anchor seq: replay starts at this seq; negative counts back from the end.",
    ),
    _param(
        "replay_limit",
        "query",
        {"type": "integer", "minimum": 1, "maximum": 50000, "default": 5000},
        "At most this many chunks replayed; a `gap` event names any range skipped.",
    ),
    TYPE_PARAM,
    LAST_EVENT_ID,
]

COMPONENTS = {
    "OutputChunk": {
        "type": "object",
        "required": ["seq", "execution_id", "output_type", "data", "timestamp"],
        "properties": {
            "seq": {"type": "integer", "format": "int64", "description": "gapless, from 1"},
            "execution_id": {"type": "string"},
            "output_type": {"type": "string", "enum": list(OutputType.values)},
            "data": {"type": "string", "description": "one line with its newline, or a piece"},
            "timestamp": {"type": "string", "format": "date-time"},
            "action_ref": {"type": "string"},
            "runner_ref": {"type": "string", "nullable": True},
        },
    },
    "StreamDone": {
        "type": "object",
        "description": "The execution finished and every chunk was sent; the response ends.",
        "required": ["final_seq", "status", "exit_code"],
        "properties": {
            "final_seq": {"type": "integer", "format": "int64"},
            "status": {"type": "string", "enum": list(ExecutionStatus.values)},
            "exit_code": {"type": "integer", "nullable": True},
        },
    },
    "StreamNotice": {
        "type": "object",
        "description": "`gap`: a range the replay window skipped. `reset`: the cursor is older "
        "than the event log keeps (carries the earliest id). `lagged`: `skipped` events (after "
        "your filters) were not delivered because you fell behind.",
        "additionalProperties": True,
    },
}


def _event(name: str, data_ref: str, id_description: str | None) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "event": {"type": "string", "enum": [name]},
        "data": {"$ref": REF + data_ref},
    }
    if id_description:
        properties["id"] = {"type": "integer", "format": "int64", "description": id_description}
    return {
        "type": "object",
        "title": name,
        "required": ["event", "data"],
        "properties": properties,
    }


def _sse(description: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "array",
                    "description": "One item per event, as SSE frames (`event:`, `id:`, `data:` "
                    "JSON); `: keepalive` comments every STREAM_KEEPALIVE_SECONDS, `retry:` first.",
                    "items": {"oneOf": events},
                }
            }
        },
    }


def _problem_responses(*statuses: int) -> dict[str, Any]:
    schema = {"$ref": REF + "Problem"}
    return {
        str(status): {
            "description": PROBLEM_DESCRIPTIONS[status],
            "content": {PROBLEM_MEDIA_TYPE: {"schema": schema}},
        }
        for status in statuses
    }


def _streaming_paths(security: list | None) -> dict[str, Any]:
    chunk = _event("execution.output__create", "OutputChunk", "the chunk's seq")
    done = _event("done", "StreamDone", None)
    notices = [_event(name, "StreamNotice", None) for name in ("gap", "reset", "lagged")]
    lifecycle = [
        _event(name, "ExecutionEventPayload", "the event's id in the durable event log")
        for name in ("execution__create", "execution__update")
    ]
    operations = {
        "/api/v1/executions/{id}/output": {
            "operationId": "executions_output",
            "summary": "Output as plain text: everything so far, then live until the end",
            "parameters": [ID_PARAM, TYPE_PARAM],
            "responses": {
                "200": {
                    "description": "The output; the response ends when the execution ends.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **_problem_responses(401, 404, 422),
            },
        },
        "/api/v1/executions/{id}/output/stream": {
            "operationId": "executions_output_stream",
            "summary": "Server-Sent Events of one execution's output, gap-free and resumable",
            "parameters": OUTPUT_STREAM_PARAMS,
            "responses": {
                "200": _sse("Chunks in seq order, then `done`.", [chunk, notices[0], done]),
                **_problem_responses(400, 401, 404, 422),
            },
        },
        "/api/v1/stream": {
            "operationId": "stream",
            "summary": "Server-Sent Events of every execution event you may see",
            "parameters": STREAM_PARAMS,
            "responses": {
                "200": _sse(
                    "Lifecycle (and opted-in output) events.", [*lifecycle, chunk, *notices[1:]]
                ),
                **_problem_responses(400, 401, 422, 429),
            },
        },
    }
    paths = {}
    for path, operation in operations.items():
        operation["tags"] = ["stream" if path == "/api/v1/stream" else "executions"]
        if security is not None:
            operation["security"] = security
        paths[path] = {"get": operation}
    return paths


def add_streaming_endpoints(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: describe the Channels-served endpoints."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(deepcopy(COMPONENTS))
    execution = schemas.get("Execution", {"type": "object", "properties": {}})
    payload = deepcopy(execution)
    for extra in ("children", "links"):
        payload.get("properties", {}).pop(extra, None)
        if extra in payload.get("required", []):
            payload["required"].remove(extra)
    payload["description"] = "An execution's metadata, as in the API without children and links."
    schemas["ExecutionEventPayload"] = payload
    listing = result["paths"].get("/api/v1/executions/", {}).get("get", {})
    result["paths"].update(_streaming_paths(listing.get("security")))
    return result
