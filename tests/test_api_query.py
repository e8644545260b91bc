"""Query parameters: unknown ones answer 422 naming them; bad paging values too; st2's names work.

REST views and the three streams (through `streaming.params.Source.check()`) alike.
"""

import pytest

from executions import services
from executions.models import ExecutionStatus
from executions.problems import Problem, execution_ref, problem_body
from streaming.filters import event_filter
from streaming.params import Source, output_window
from tests.rbac_helpers import call, session_headers
from tests.streaming_helpers import store


def errors_of(response) -> dict[str, str]:
    assert response.status_code == 422, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    return {entry["location"]: entry["message"] for entry in response.json()["errors"]}


# --- REST -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/api/v1/executions/", "statuss=running"),
        ("/api/v1/executions/", "output_type=stdout"),
        ("/api/v1/actions/", "runner=local"),
        ("/api/v1/actions/core.local/", "limit=1"),
        ("/api/v1/executions/last/", "verbose=1"),
    ],
)
def test_it_names_unknown_query_parameters(owner_client, actions, path, query):
    name = query.split("=")[0]
    errors = errors_of(owner_client.get(f"{path}?{query}"))
    assert list(errors) == [f"query.{name}"]
    assert "not a known parameter" in errors[f"query.{name}"]


def test_it_answers_401_before_422_for_an_anonymous_caller(client, db):
    assert client.get("/api/v1/executions/?bogus=1").status_code == 401


@pytest.mark.parametrize(
    "query",
    ["limit=abc", "limit=-1", "limit=0", "limit=null", "limit=", "offset=-1", "offset=x"],
)
def test_it_refuses_bad_paging_values(owner_client, query):
    name = query.split("=")[0]
    assert list(errors_of(owner_client.get(f"/api/v1/executions/?{query}"))) == [f"query.{name}"]


@pytest.mark.parametrize("query", ["status=,,", "status=", "status=running,", "tenant=,"])
def test_it_refuses_comma_lists_with_empty_items(owner_client, query):
    name = query.split("=")[0]
    assert f"query.{name}" in errors_of(owner_client.get(f"/api/v1/executions/?{query}"))


def test_it_still_pages_and_filters_with_known_parameters(owner_client, actions, tenant):
    services.create_execution(actions["core.local"], {"cmd": "true"}, tenant=tenant)
    response = owner_client.get("/api/v1/executions/?status=scheduled,running&limit=1&offset=0")
    assert response.status_code == 200, response.content
    assert response.json()["count"] == 1


def test_it_pages_children_and_refuses_unknown_parameters_there(owner_client, actions, tenant):
    parent = services.create_execution(actions["core.local"], {"cmd": "true"}, tenant=tenant)
    path = f"/api/v1/executions/{parent.id}/children/"
    assert owner_client.get(f"{path}?limit=5&offset=0&status=running").status_code == 200
    assert list(errors_of(owner_client.get(f"{path}?limt=5"))) == ["query.limt"]


# --- streams: Source -------------------------------------------------------------------------


def query_source(query: str) -> Source:
    return Source.from_query({"query_string": query.encode()})


def test_it_refuses_unknown_stream_parameters_naming_them():
    source = query_source("events=*&tenant=a&bogus=1")
    event_filter(source)
    with pytest.raises(Problem) as refused:
        source.check()
    assert [e["location"] for e in refused.value.errors] == ["query.bogus"]


def test_it_accepts_st2_names_as_aliases():
    source = query_source(
        "events=st2.execution.output__create,st2.execution__*"
        "&action_refs=core.local&execution_ids=01hzzzzzzzzzzzzzzzzzzzzzzz"
    )
    flt = event_filter(source)
    source.check()
    assert flt.events == {"execution.output__create", "execution__create", "execution__update"}
    assert flt.actions == {"core.local"}
    assert flt.executions == {"01HZZZZZZZZZZZZZZZZZZZZZZZ"}


def test_it_accepts_output_type_as_type():
    source = query_source("output_type=stderr&from=-5")
    window = output_window(source, None)
    source.check()
    assert (window.output_type, window.from_seq) == ("stderr", -5)


def test_it_names_the_alias_the_client_used_in_errors():
    source = query_source("output_type=nope")
    output_window(source, None)
    with pytest.raises(Problem) as refused:
        source.check()
    assert refused.value.errors[0]["location"] == "query.output_type"


def test_it_refuses_a_name_and_its_alias_together():
    source = query_source("type=stdout&output_type=stderr")
    output_window(source, None)
    with pytest.raises(Problem) as refused:
        source.check()
    assert "names the same parameter" in refused.value.errors[0]["message"]


def test_it_accepts_the_full_int64_range_for_from():
    source = query_source("from=-9223372036854775808")
    window = output_window(source, None)
    source.check()
    assert window.from_seq == -(2**63)


def test_it_keeps_websocket_messages_lenient():
    """Messages carry `action` and other keys the filter does not read: not refused there."""
    source = Source({"action": "subscribe", "from": 3}, "message")
    output_window(source, None)
    source.check()


# --- streams: over the whole application ----------------------------------------------------


@pytest.fixture
def owner_headers(owner) -> list:
    return session_headers(owner)


@pytest.fixture
def finished(actions, tenant):
    execution = services.create_execution(actions["core.local"], {"cmd": "x"}, tenant=tenant)
    store(execution, ["out\n"], "stdout")
    store(execution, ["err\n"], "stderr")
    services.finish(execution.id, ExecutionStatus.SUCCEEDED, exit_code=0)
    return execution


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_it_filters_plain_text_output_by_st2s_output_type(owner_headers, finished):
    path = f"/api/v1/executions/{finished.id}/output"
    reply = await call("GET", path, query="output_type=stderr", headers=owner_headers)
    assert reply.status == 200, reply.body[:300]
    assert reply.text == "err\n"


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("path", "query", "name"),
    [
        ("/api/v1/stream", "evnts=*", "evnts"),
        ("/api/v1/executions/last/output/stream", "replaylimit=5", "replaylimit"),
        ("/api/v1/executions/last/output", "type=stdout&tail=5", "tail"),
    ],
)
async def test_it_refuses_unknown_stream_parameters_over_http(owner_headers, path, query, name):
    reply = await call("GET", path, query=query, headers=owner_headers)
    assert reply.status == 422, reply.body[:300]
    assert [e["location"] for e in reply.json()["errors"]] == [f"query.{name}"]


# --- the problem-and-id module --------------------------------------------------------------


def test_it_parses_execution_refs_in_one_place():
    assert execution_ref("last") == "last"
    assert execution_ref("01hzzzzzzzzzzzzzzzzzzzzzzz") == "01HZZZZZZZZZZZZZZZZZZZZZZZ"
    for bad in ("LAST", "01HZZ", "01HZZZZZZZZZZZZZZZZZZZZZZU", None, 7):
        with pytest.raises(Problem) as refused:
            execution_ref(bad)
        assert refused.value.status == 404


def test_it_bounds_and_cleans_echoed_errors():
    errors = [{"location": f"body.f{i}", "message": "bad", "value": "\ud800"} for i in range(80)]
    body = problem_body(422, "Invalid.", instance="/x", errors=errors)
    assert body["title"] == "Unprocessable Entity" or body["title"] == "Unprocessable Content"
    assert len(body["errors"]) == 50
    assert "30 more" in body["detail"]
    assert body["errors"][0]["value"] == "\\ud800"
    assert (
        problem_body(422, "x", instance="/", errors=[{"value": float("inf")}])["errors"][0]["value"]
        == "inf"
    )


@pytest.mark.parametrize("method", ["put", "delete", "trace"])
def test_it_answers_405_before_looking_at_the_query(owner_client, method):
    response = getattr(owner_client, method)("/api/v1/executions/?bogus=1")
    assert response.status_code == 405
    assert "GET" in response["Allow"]
