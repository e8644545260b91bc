"""The OpenAPI document: valid OpenAPI 3, every REST endpoint, and the streaming endpoints."""

import io
import json

import pytest
from django.core.management import call_command
from drf_spectacular.validation import validate_schema

from executions import services
from executions.api.serializers import ExecutionSerializer

STREAMING_PATHS = {
    "/api/v1/executions/{id}/output": ({"id", "type", "include_children"}, "text/plain"),
    "/api/v1/executions/{id}/output/stream": (
        {"id", "from", "replay_limit", "type", "include_children", "Last-Event-ID"},
        "text/event-stream",
    ),
    "/api/v1/stream": (
        {
            "events",
            "tenant",
            "action",
            "status",
            "execution",
            "parent",
            "ancestor",
            "Last-Event-ID",
        },
        "text/event-stream",
    ),
}


@pytest.fixture
def schema(client, db):
    response = client.get("/api/v1/schema/?format=json")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi+json")
    return json.loads(response.content)


def test_it_serves_a_valid_openapi_3_document(schema):
    assert schema["openapi"].startswith("3.")
    validate_schema(schema)  # raises jsonschema.ValidationError when invalid


def test_it_rejects_an_invalid_document_so_the_check_means_something(schema):
    import jsonschema

    schema["paths"]["/api/v1/stream"]["get"]["responses"] = {"200": {"content": {}}}
    with pytest.raises(jsonschema.ValidationError):
        validate_schema(schema)


def test_it_generates_without_warnings(db):
    out = io.StringIO()
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out, stderr=out)


def test_it_describes_every_rest_endpoint(schema):
    operations = {(path, method) for path, item in schema["paths"].items() for method in item}
    assert {
        ("/api/v1/actions/", "get"),
        ("/api/v1/actions/{ref}/", "get"),
        ("/api/v1/executions/", "get"),
        ("/api/v1/executions/", "post"),
        ("/api/v1/executions/{id}/", "get"),
        ("/api/v1/executions/{id}/cancel/", "post"),
        ("/api/v1/executions/{id}/re-run/", "post"),
        ("/api/v1/executions/{id}/children/", "get"),
    } <= operations
    listing = schema["paths"]["/api/v1/executions/"]["get"]
    assert {"status", "action", "tenant", "parent", "limit", "offset"} <= {
        p["name"] for p in listing["parameters"]
    }


def test_it_describes_errors_as_problem_details(schema):
    create = schema["paths"]["/api/v1/executions/"]["post"]["responses"]
    for status in ("401", "403", "404", "422"):
        assert set(create[status]["content"]) == {"application/problem+json"}
    problem = schema["components"]["schemas"]["Problem"]["properties"]
    assert {"type", "title", "status", "detail", "instance", "errors"} <= set(problem)
    cancel = schema["paths"]["/api/v1/executions/{id}/cancel/"]["post"]["responses"]
    assert "409" in cancel


@pytest.mark.parametrize("path", sorted(STREAMING_PATHS))
def test_it_describes_the_streaming_endpoints(schema, path):
    parameters, media_type = STREAMING_PATHS[path]
    operation = schema["paths"][path]["get"]
    assert {p["name"] for p in operation["parameters"]} == parameters
    assert set(operation["responses"]["200"]["content"]) == {media_type}
    assert operation["security"] == schema["paths"]["/api/v1/executions/"]["get"]["security"]
    for status, response in operation["responses"].items():
        if status != "200":
            assert set(response["content"]) == {"application/problem+json"}


def test_it_documents_the_stream_parameters_bounds(schema):
    operation = schema["paths"]["/api/v1/executions/{id}/output/stream"]["get"]
    by_name = {p["name"]: p for p in operation["parameters"]}
    assert by_name["replay_limit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 50000,
        "default": 5000,
    }
    assert by_name["from"]["schema"]["default"] == -1000
    assert by_name["Last-Event-ID"]["in"] == "header"
    events = operation["responses"]["200"]["content"]["text/event-stream"]["schema"]["items"]
    assert {e["title"] for e in events["oneOf"]} == {"execution.output__create", "gap", "done"}
    assert "429" in schema["paths"]["/api/v1/stream"]["get"]["responses"]


def test_it_serves_the_interactive_docs(client, db):
    response = client.get("/api/v1/docs/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert b"swagger-ui" in response.content
    assert b"/api/v1/schema/" in response.content


def test_it_keeps_the_execution_schema_equal_to_the_event_payload(actions, tenant):
    execution = services.create_execution(actions["core.local"], {"cmd": "id"}, tenant=tenant)
    declared = set(ExecutionSerializer().fields)
    assert declared == set(services.execution_payload(execution)) | {"children", "links"}


def test_it_describes_the_event_payload_without_api_extras(schema):
    payload = schema["components"]["schemas"]["ExecutionEventPayload"]["properties"]
    execution = schema["components"]["schemas"]["Execution"]["properties"]
    assert set(payload) == set(execution) - {"children", "links"}


# --- the contract matches behaviour (issue 12, item 2) --------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/actions/", "/api/v1/executions/"])
def test_it_documents_401_and_422_on_lists(schema, path):
    responses = schema["paths"][path]["get"]["responses"]
    assert {"200", "401", "422"} <= set(responses)


def test_it_documents_the_children_page_like_the_list(schema):
    children = schema["paths"]["/api/v1/executions/{id}/children/"]["get"]
    listing = schema["paths"]["/api/v1/executions/"]["get"]
    names = {p["name"] for p in children["parameters"]}
    assert names == {p["name"] for p in listing["parameters"]} | {"id"}
    by_name = {p["name"]: p["schema"] for p in children["parameters"]}
    assert by_name["limit"] == {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}
    assert by_name["offset"]["minimum"] == 0
    ok = children["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok.endswith("PaginatedExecutionList")
    assert "422" in children["responses"]


def test_it_documents_what_the_filters_refuse(schema):
    by_name = {
        p["name"]: p["schema"] for p in schema["paths"]["/api/v1/executions/"]["get"]["parameters"]
    }
    assert by_name["status"]["minItems"] == 1
    assert by_name["action"]["items"]["pattern"] == "^[^,]*[^,\\s][^,]*$"
    actions = {
        p["name"]: p["schema"] for p in schema["paths"]["/api/v1/actions/"]["get"]["parameters"]
    }
    assert actions["pack"]["minLength"] == 1


def test_it_documents_the_full_int64_range_of_from(schema):
    operation = schema["paths"]["/api/v1/executions/{id}/output/stream"]["get"]
    by_name = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert (by_name["from"]["minimum"], by_name["from"]["maximum"]) == (-(2**63), 2**63 - 1)


@pytest.mark.parametrize("path", list(STREAMING_PATHS))
def test_it_documents_429_with_retry_after_and_422_on_every_stream(schema, path):
    responses = schema["paths"][path]["get"]["responses"]
    assert {"401", "422", "429"} <= set(responses)
    assert "Retry-After" in responses["429"]["headers"]
    assert "Unknown query parameters answer 422" in schema["paths"][path]["get"]["description"]


def test_it_serves_schema_and_docs_without_credentials_as_documented(client, db):
    assert client.get("/api/v1/schema/").status_code == 200
    assert client.get("/api/v1/docs/").status_code == 200
    assert client.get("/api/v1/executions/").status_code == 401
