"""OpenAPI: problem responses, the session scheme, and the streaming endpoints.

The streaming endpoints are Channels consumers, not DRF views, so drf-spectacular cannot see
them; `add_streaming_endpoints` (a postprocessing hook) writes them in by hand, with their
query parameters and `text/plain` / `text/event-stream` responses.
"""

from copy import deepcopy
from typing import Any

from django.conf import settings
from drf_spectacular.authentication import SessionScheme
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers

from executions.api.edge import MAX_JSON_DEPTH
from executions.models import ExecutionStatus, OutputType
from executions.problems import INT64_MAX, INT64_MIN, PROBLEM_MEDIA_TYPE
from streaming.params import MAX_QUERY_FIELDS, MAX_REPLAY_LIMIT, QUERY_ALIASES


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
    400: "malformed request (a body that is not JSON, NUL in the path or a header, too many "
    "query parameters)",
    401: "not authenticated",
    403: "authenticated but not allowed",
    404: "no such resource, or one you may not see",
    409: "conflicts with the current state (e.g. already finished)",
    413: "the request body is larger than the server accepts",
    415: "unsupported content type (send application/json)",
    422: "invalid values or unknown query parameters; `errors` names each one",
    429: "too many concurrent streams for you (or your tenant); see Retry-After",
}


def problems(*statuses: int) -> dict[tuple[int, str], OpenApiResponse]:
    """`responses` entries for extend_schema: each status answered as a problem+json body."""
    return {
        (status, PROBLEM_MEDIA_TYPE): OpenApiResponse(
            ProblemSerializer, description=PROBLEM_DESCRIPTIONS[status]
        )
        for status in (401, *statuses)
    }


# What every list (paginated, filtered) can answer besides 200; 401 is added by `problems`.
LIST_PROBLEMS = problems(422)


def list_and_detail(
    serializer: type[serializers.Serializer],
    list_summary: str,
    detail_summary: str,
    lookup: OpenApiParameter | None = None,
) -> dict[str, Any]:
    """`extend_schema_view` entries for a resource's list (paginated, filtered: 422 for a
    bad query) and its detail route (404, missing or hidden alike)."""
    return {
        "list": extend_schema(
            summary=list_summary, responses={200: serializer(many=True), **LIST_PROBLEMS}
        ),
        "retrieve": extend_schema(
            summary=detail_summary,
            parameters=[lookup] if lookup else None,
            responses={200: serializer, **problems(404)},
        ),
    }


class PagedActionsSchema(AutoSchema):
    """Describes detail actions that answer a page (`children`) like `list`: with their
    filters and `limit`/`offset`. drf-spectacular infers that only for the `list` action."""

    paged_actions = ("list", "children")

    def _is_list_view(self, serializer=None) -> bool:
        if serializer is None and getattr(self.view, "action", None) in self.paged_actions:
            return True
        return super()._is_list_view(serializer)


class SessionCookieScheme(SessionScheme):
    target_class = "executions.api.authentication.SessionAuthentication"


# --- streaming endpoints -------------------------------------------------------------------

REF = "#/components/schemas/"


def _param(name: str, where: str, schema: dict, description: str) -> dict[str, Any]:
    return {"name": name, "in": where, "schema": schema, "description": description}


# A comma list of non-empty names (an empty list or item answers 422).
NAMES = {"type": "string", "minLength": 1}


ID_PARAM = _param(
    "id", "path", {"type": "string"}, "Execution id (ULID), or `last` for the newest you may see."
)
ID_PARAM["required"] = True
TYPE_PARAM = _param(
    "type",
    "query",
    {"type": "string", "enum": list(OutputType.values)},
    "Only this output stream (default: all of them). Alias: `output_type` (StackStorm).",
)
LAST_EVENT_ID = _param(
    "Last-Event-ID",
    "header",
    {"type": "string"},
    "The id of the last event received; resumes right after it and wins over `from`.",
)
FILTER = "Comma list; combined with the other filters by AND."
ALIASES = ", ".join(f"`{alias}` for `{name}`" for alias, name in QUERY_ALIASES.items())
STREAM_QUERY_RULES = (
    "Unknown query parameters answer 422 naming them; StackStorm's names are accepted as "
    f"aliases ({ALIASES}; event names may carry the `st2.` prefix). At most "
    f"{MAX_QUERY_FIELDS} query parameters (400 beyond)."
)
STREAM_PARAMS = [
    _param(
        "events",
        "query",
        NAMES,
        "Comma list of event names, `*` globs allowed (`execution__*`, `*`), optionally "
        "with StackStorm's `st2.` prefix. Default: `execution__create,execution__update`; "
        "output events are opt-in.",
    ),
    _param("tenant", "query", NAMES, f"Tenant slug(s). {FILTER}"),
    _param("action", "query", NAMES, f"Action ref(s). {FILTER} Alias: `action_refs`."),
    _param("status", "query", NAMES, f"Execution status(es). {FILTER}"),
    _param(
        "execution",
        "query",
        NAMES,
        f"Execution id(s). {FILTER} Alias: `execution_ids`.",
    ),
    _param("parent", "query", NAMES, f"Parent execution id(s). {FILTER}"),
    _param(
        "ancestor",
        "query",
        NAMES,
        f"Ancestor execution id(s): their descendants at every depth. {FILTER}",
    ),
    LAST_EVENT_ID,
]
INCLUDE_CHILDREN = _param(
    "include_children",
    "query",
    {"type": "string", "enum": ["true", "false", "1", "0"]},
    "Also the output of every descendant, at every depth, each event naming its "
    "`execution_id`, `task_name` and `path`, with `child_started` / `child_finished` "
    "events; ids are family cursors (docs/streaming-family.md). Takes only `type` and "
    "`Last-Event-ID` besides.",
)
OUTPUT_STREAM_PARAMS = [
    ID_PARAM,
    _param(
        "from",
        "query",
        {
            "type": "integer",
            "format": "int64",
            "minimum": INT64_MIN,
            "maximum": INT64_MAX,
            "default": -1000,
        },
        "Anchor seq: replay starts at this seq; negative counts back from the end.",
    ),
    _param(
        "replay_limit",
        "query",
        {"type": "integer", "minimum": 1, "maximum": MAX_REPLAY_LIMIT, "default": 5000},
        "At most this many chunks replayed; a `gap` event names any range skipped.",
    ),
    TYPE_PARAM,
    INCLUDE_CHILDREN,
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


RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before opening the stream again",
        "schema": {"type": "integer", "minimum": 0},
    }
}


def _problem_responses(*statuses: int) -> dict[str, Any]:
    schema = {"$ref": REF + "Problem"}
    responses: dict[str, Any] = {
        str(status): {
            "description": PROBLEM_DESCRIPTIONS[status],
            "content": {PROBLEM_MEDIA_TYPE: {"schema": schema}},
        }
        for status in statuses
    }
    if "429" in responses:
        responses["429"]["headers"] = deepcopy(RETRY_AFTER)
    return responses


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
            "description": STREAM_QUERY_RULES,
            "parameters": [ID_PARAM, TYPE_PARAM, INCLUDE_CHILDREN],
            "responses": {
                "200": {
                    "description": "The output; the response ends when the execution ends.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **_problem_responses(400, 401, 404, 422, 429),
            },
        },
        "/api/v1/executions/{id}/output/stream": {
            "operationId": "executions_output_stream",
            "summary": "Server-Sent Events of one execution's output, gap-free and resumable",
            "description": STREAM_QUERY_RULES,
            "parameters": OUTPUT_STREAM_PARAMS,
            "responses": {
                "200": _sse("Chunks in seq order, then `done`.", [chunk, notices[0], done]),
                **_problem_responses(400, 401, 404, 422, 429),
            },
        },
        "/api/v1/stream": {
            "operationId": "stream",
            "summary": "Server-Sent Events of every execution event you may see",
            "description": STREAM_QUERY_RULES,
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


INPUT_RULES = (
    "\n\nInput rules, the same on every endpoint: strings never hold NUL or lone UTF-16 "
    "surrogates (400 in a path or header, 422 naming the field elsewhere); JSON numbers must "
    f"be finite and integers fit in 64 bits (422); JSON bodies nest at most {MAX_JSON_DEPTH} "
    f"levels (422) and hold at most {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes (413); "
    "unknown query parameters answer 422 naming them. "
    "`/api/v1/schema/` and `/api/v1/docs/` answer without credentials (they describe the "
    "contract, never data); every other endpoint needs a session or an API key."
)

# One item of a comma list: no comma (it would split the item) and not blank.
LIST_ITEM_PATTERN = r"^[^,]*[^,\s][^,]*$"


def _tighten_list_parameters(paths: dict[str, Any]) -> None:
    """Filters refuse empty values, empty lists and empty items (422): say so in the schema."""
    for operations in paths.values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                schema = parameter.get("schema", {})
                if parameter.get("in") != "query":
                    continue
                if schema.get("type") == "array":
                    schema["minItems"] = 1
                    items = schema.setdefault("items", {})
                    if "enum" not in items:
                        items["pattern"] = LIST_ITEM_PATTERN
                elif schema.get("type") == "string" and "enum" not in schema:
                    schema.setdefault("minLength", 1)


def add_streaming_endpoints(result: dict[str, Any], generator, request, public) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: describe the Channels-served endpoints (and
    tighten the generated list filters to what the API enforces)."""
    _tighten_list_parameters(result["paths"])
    info = result.setdefault("info", {})
    info["description"] = info.get("description", "") + INPUT_RULES
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
