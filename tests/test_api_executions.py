"""REST API: /api/v1/executions/ — create, list, detail, cancel, re-run, children, `last`."""

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from executions import services
from executions.models import Execution, ExecutionStatus, Tenant
from executions.models.actions import MASK
from executions.parameters import ParameterError, validate_parameters
from tests.api_helpers import assert_problem, logged_in, post
from tests.runner_helpers import run_execution

MISSING_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


def run(action, tenant, **parameters) -> Execution:
    if "cmd" in action.parameters:
        parameters.setdefault("cmd", "true")
    return services.create_execution(action, parameters, tenant=tenant)


def add_child(parent, action, task_name) -> Execution:
    return services.create_execution(action, {"cmd": "true"}, parent=parent, task_name=task_name)


# --- create -------------------------------------------------------------------------------


def test_it_runs_an_action(owner, actions):
    response = post(
        logged_in(owner),
        "/api/v1/executions/",
        {"action": "examples.print_lines", "parameters": {"count": "3"}},
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["action_ref"] == "examples.print_lines"
    assert body["tenant"] == "default"
    assert body["status"] == "scheduled"
    assert body["parameters"] == {"count": 3, "delay": 0.5}
    assert response["Location"] == body["links"]["self"]
    assert body["links"]["self"].endswith(f"/api/v1/executions/{body['id']}/")
    execution = Execution.objects.get(pk=body["id"])
    assert execution.created_by == owner
    assert body == services.execution_payload(execution) | {
        "children": [],
        "links": body["links"],
    }


def test_it_runs_in_the_tenant_named(outsider, other_tenant, actions):
    response = post(
        logged_in(outsider),
        "/api/v1/executions/",
        {"action": "core.local", "parameters": {"cmd": "id"}, "tenant": "other"},
    )
    assert response.status_code == 201, response.content
    assert response.json()["tenant"] == "other"
    assert Execution.objects.get().tenant == other_tenant


def test_it_answers_404_for_an_unknown_tenant(superuser, actions):
    response = post(
        logged_in(superuser),
        "/api/v1/executions/",
        {"action": "core.local", "parameters": {"cmd": "id"}, "tenant": "nope"},
    )
    assert "nope" in assert_problem(response, 404)["detail"]
    assert not Execution.objects.exists()


@pytest.mark.parametrize("persona", ["member", "outsider"])
def test_it_forbids_running_where_not_an_operator(persona, request, tenant, actions):
    user = request.getfixturevalue(persona)
    response = post(
        logged_in(user),
        "/api/v1/executions/",
        {"action": "core.local", "parameters": {"cmd": "id"}},
    )
    assert "default" in assert_problem(response, 403)["detail"]
    assert not Execution.objects.exists()


def test_it_answers_422_for_an_unknown_action(owner, actions):
    response = post(logged_in(owner), "/api/v1/executions/", {"action": "nope.nothing"})
    body = assert_problem(response, 422)
    assert body["errors"] == [
        {
            "location": "body.action",
            "message": "action 'nope.nothing' is not registered",
            "value": "nope.nothing",
        }
    ]


def test_it_answers_422_for_a_disabled_action(owner, actions):
    actions["core.local"].enabled = False
    actions["core.local"].save()
    response = post(
        logged_in(owner),
        "/api/v1/executions/",
        {"action": "core.local", "parameters": {"cmd": "id"}},
    )
    assert assert_problem(response, 422)["errors"][0]["location"] == "body.action"


def test_it_answers_parameter_errors_as_the_validator_gives_them(owner, actions):
    given = {"count": "many", "delay": "x", "colour": "red"}
    with pytest.raises(ParameterError) as expected:
        validate_parameters(actions["examples.print_lines"].parameters, given)
    response = post(
        logged_in(owner),
        "/api/v1/executions/",
        {"action": "examples.print_lines", "parameters": given},
    )
    body = assert_problem(response, 422)
    assert body["errors"] == expected.value.errors
    assert {e["location"] for e in body["errors"]} == {
        "body.parameters.count",
        "body.parameters.delay",
        "body.parameters.colour",
    }


def test_it_masks_a_secret_in_a_parameter_error(owner, actions):
    response = post(
        logged_in(owner),
        "/api/v1/executions/",
        {"action": "examples.echo_secret", "parameters": {"password": {"x": "hunter2"}}},
    )
    body = assert_problem(response, 422)
    assert body["errors"][0]["location"] == "body.parameters.password"
    assert body["errors"][0]["value"] == MASK
    assert b"hunter2" not in response.content


@pytest.mark.parametrize(
    ("payload", "location"),
    [
        ({}, "body.action"),
        ({"action": ["core.local"]}, "body.action"),
        ({"action": "core.local", "parameters": [1]}, "body.parameters"),
        ({"action": "core.local", "tenant": "not a slug"}, "body.tenant"),
        ({"action": "core.local", "params": {"cmd": "id"}}, "body.params"),
    ],
)
def test_it_names_the_invalid_field(owner, actions, payload, location):
    response = post(logged_in(owner), "/api/v1/executions/", payload)
    body = assert_problem(response, 422)
    assert [e["location"] for e in body["errors"]] == [location]
    assert body["errors"][0]["message"]
    assert body["errors"][0]["value"] == payload.get(location.split(".")[1])


# --- masking --------------------------------------------------------------------------------


def test_it_never_shows_a_secret(owner, actions, tenant):
    client = logged_in(owner)
    response = post(
        client,
        "/api/v1/executions/",
        {"action": "examples.echo_secret", "parameters": {"password": "hunter2"}},
    )
    assert response.status_code == 201
    execution_id = response.json()["id"]
    services.finish(
        execution_id, "succeeded", exit_code=0, result={"stdout": "the password is hunter2\n"}
    )
    answers = [
        response,
        client.get(f"/api/v1/executions/{execution_id}/"),
        client.get("/api/v1/executions/"),
        post(client, f"/api/v1/executions/{execution_id}/re-run/"),
    ]
    for answer in answers:
        assert answer.status_code in (200, 201)
        assert b"hunter2" not in answer.content
    detail = answers[1].json()
    assert detail["parameters"]["password"] == MASK
    assert detail["result"] == {"stdout": f"the password is {MASK}\n"}
    # The re-run runs with the real value, which only the database holds.
    rerun = Execution.objects.get(pk=answers[3].json()["id"])
    assert rerun.parameters["password"] == "hunter2"


# --- list -----------------------------------------------------------------------------------


def test_it_lists_newest_first_with_pagination(owner, actions, tenant):
    made = [run(actions["core.local"], tenant).id for _ in range(5)]
    client = logged_in(owner)
    body = client.get("/api/v1/executions/?limit=2").json()
    assert body["count"] == 5
    assert [e["id"] for e in body["results"]] == made[::-1][:2]
    assert body["previous"] is None
    second = client.get(body["next"]).json()
    assert [e["id"] for e in second["results"]] == made[::-1][2:4]
    last_page = client.get("/api/v1/executions/?limit=2&offset=4").json()
    assert [e["id"] for e in last_page["results"]] == made[:1]
    assert last_page["next"] is None


def test_it_caps_the_page_size(owner, actions, tenant):
    from executions.api.pagination import MAX_PAGE_SIZE

    action = actions["core.local"]
    Execution.objects.bulk_create(
        Execution(
            action=action, action_ref=action.ref, runner_type=action.runner_type, tenant=tenant
        )
        for _ in range(MAX_PAGE_SIZE + 1)
    )
    body = logged_in(owner).get(f"/api/v1/executions/?limit={MAX_PAGE_SIZE}").json()
    assert body["count"] == MAX_PAGE_SIZE + 1
    assert len(body["results"]) == MAX_PAGE_SIZE
    assert f"limit={MAX_PAGE_SIZE}&offset={MAX_PAGE_SIZE}" in body["next"]
    too_many = logged_in(owner).get(f"/api/v1/executions/?limit={MAX_PAGE_SIZE + 1}")
    assert too_many.status_code == 422
    assert too_many.json()["errors"][0]["location"] == "query.limit"


def test_it_filters_the_list(superuser, actions, tenant, other_tenant):
    local = run(actions["core.local"], tenant)
    lines = run(actions["examples.print_lines"], tenant)
    elsewhere = run(actions["core.local"], other_tenant)
    done = run(actions["core.local"], tenant)
    services.finish(done.id, "succeeded", exit_code=0)
    parent = run(actions["examples.deploy"], tenant)
    child = add_child(parent, actions["core.local"], "a")
    client = logged_in(superuser)

    def ids(query):
        response = client.get(f"/api/v1/executions/?{query}")
        assert response.status_code == 200, response.content
        return {e["id"] for e in response.json()["results"]}

    assert ids("action=examples.print_lines") == {lines.id}
    assert ids("tenant=other") == {elsewhere.id}
    assert ids("status=succeeded") == {done.id}
    assert ids("status=succeeded,scheduled&tenant=other") == {elsewhere.id}
    assert ids(f"parent={parent.id}") == {child.id}
    assert ids(f"parent={MISSING_ID},{parent.id}") == {child.id}
    assert ids("action=core.local&tenant=default") == {local.id, done.id, child.id}
    assert ids("action=nope") == set()


def test_it_answers_422_for_an_invalid_filter(owner, tenant):
    response = logged_in(owner).get("/api/v1/executions/?status=sleeping")
    body = assert_problem(response, 422)
    assert [(e["location"], e["value"]) for e in body["errors"]] == [("query.status", "sleeping")]


def test_it_lists_only_what_each_persona_may_see(
    superuser, member, outsider, actions, tenant, other_tenant
):
    mine = run(actions["core.local"], tenant)
    theirs = run(actions["core.local"], other_tenant)

    def ids(user):
        return [e["id"] for e in logged_in(user).get("/api/v1/executions/").json()["results"]]

    assert ids(superuser) == [theirs.id, mine.id]
    assert ids(member) == [mine.id]
    assert ids(outsider) == [theirs.id]


def test_it_lists_nothing_to_an_outsider_of_the_default_tenant(outsider, actions, tenant):
    run(actions["core.local"], tenant)
    body = logged_in(outsider).get("/api/v1/executions/").json()
    assert body == {"count": 0, "next": None, "previous": None, "results": []}


@pytest.mark.parametrize("persona", ["member", "superuser"])
def test_it_lists_with_a_constant_number_of_queries(persona, request, actions, tenant):
    client = logged_in(request.getfixturevalue(persona))
    deploy, local = actions["examples.deploy"], actions["core.local"]

    def make(n):
        for _ in range(n):
            parent = run(deploy, tenant)
            add_child(parent, local, "build")

    def count_queries():
        with CaptureQueriesContext(connection) as queries:
            response = client.get("/api/v1/executions/?limit=500")
        assert response.status_code == 200
        return len(queries), response.json()["count"]

    make(5)
    few, listed = count_queries()
    assert listed == 10
    make(45)
    many, listed = count_queries()
    assert listed == 100
    assert few == many


# --- detail ---------------------------------------------------------------------------------


def test_it_shows_an_execution(member, actions, tenant):
    execution = run(actions["examples.print_lines"], tenant, count=2)
    services.claim(execution.id, "runner-1")
    services.finish(execution.id, "failed", exit_code=3, result={"why": "bad"})
    Execution.objects.filter(pk=execution.id).update(last_seq=7)
    response = logged_in(member).get(f"/api/v1/executions/{execution.id}/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["status"] == "failed"
    assert body["exit_code"] == 3
    assert body["result"] == {"why": "bad"}
    assert body["last_seq"] == 7
    assert body["parent"] is None
    assert body["children"] == []
    assert body["output_purged_at"] is None
    assert body["created_at"] and body["started_at"] and body["finished_at"]
    base = f"http://testserver/api/v1/executions/{execution.id}/"
    assert body["links"] == {
        "self": base,
        "output": base + "output",
        "output_stream": base + "output/stream",
        "children": base + "children/",
    }


def test_it_says_when_the_output_was_purged(member, actions, tenant):
    from django.utils import timezone

    execution = run(actions["core.local"], tenant)
    purged = timezone.now()
    Execution.objects.filter(pk=execution.id).update(output_purged_at=purged)
    body = logged_in(member).get(f"/api/v1/executions/{execution.id}/").json()
    assert body["output_purged_at"] == purged.isoformat()


def test_it_answers_404_alike_for_missing_and_hidden_executions(outsider, actions, tenant):
    hidden = run(actions["core.local"], tenant)
    client = logged_in(outsider)
    for execution_id in (hidden.id, MISSING_ID):
        body = assert_problem(client.get(f"/api/v1/executions/{execution_id}/"), 404)
        assert body["detail"] == f"There is no execution {execution_id}."


@pytest.mark.parametrize("bad_id", ["123", "not-an-id", "0" * 27, "01ARZ3NDEKTSV4RRFFQ69G5FA!"])
def test_it_answers_404_for_a_malformed_id(superuser, bad_id):
    assert_problem(logged_in(superuser).get(f"/api/v1/executions/{bad_id}/"), 404)


def test_it_accepts_a_lowercase_id(member, actions, tenant):
    execution = run(actions["core.local"], tenant)
    response = logged_in(member).get(f"/api/v1/executions/{execution.id.lower()}/")
    assert response.status_code == 200
    assert response.json()["id"] == execution.id


# --- last -----------------------------------------------------------------------------------


def test_it_reads_last_as_the_newest_execution_the_caller_may_see(
    superuser, outsider, actions, tenant, other_tenant
):
    theirs = run(actions["core.local"], other_tenant)
    newest = run(actions["core.local"], tenant)
    assert logged_in(superuser).get("/api/v1/executions/last/").json()["id"] == newest.id
    assert logged_in(outsider).get("/api/v1/executions/last/").json()["id"] == theirs.id


def test_it_answers_404_for_last_when_nothing_is_visible(outsider, actions, tenant):
    run(actions["core.local"], tenant)
    assert_problem(logged_in(outsider).get("/api/v1/executions/last/"), 404)


def test_it_accepts_last_for_every_action(owner, actions, tenant):
    parent = run(actions["examples.deploy"], tenant)
    child = add_child(parent, actions["core.local"], "t")
    client = logged_in(owner)
    assert client.get("/api/v1/executions/last/").json()["id"] == child.id
    assert client.get("/api/v1/executions/last/children/").json()["count"] == 0
    rerun = post(client, "/api/v1/executions/last/re-run/")
    assert rerun.status_code == 201
    canceled = post(client, "/api/v1/executions/last/cancel/")
    assert canceled.status_code == 200
    assert canceled.json()["id"] == rerun.json()["id"]
    assert canceled.json()["status"] == "canceled"


# --- cancel ---------------------------------------------------------------------------------


def test_it_lets_an_owner_cancel(owner, actions, tenant):
    execution = run(actions["core.local"], tenant)
    response = post(logged_in(owner), f"/api/v1/executions/{execution.id}/cancel/")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "canceled"
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.CANCELED


def test_it_marks_a_running_execution_canceling(owner, actions, tenant):
    execution = run(actions["core.local"], tenant)
    services.claim(execution.id, "runner-1")
    response = post(logged_in(owner), f"/api/v1/executions/{execution.id}/cancel/")
    assert response.json()["status"] == "canceling"


def test_it_forbids_a_member_to_cancel(member, actions, tenant):
    execution = run(actions["core.local"], tenant)
    response = post(logged_in(member), f"/api/v1/executions/{execution.id}/cancel/")
    assert "cancel" in assert_problem(response, 403)["detail"]
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.SCHEDULED


def test_it_hides_an_execution_from_an_outsider_who_would_cancel(outsider, actions, tenant):
    execution = run(actions["core.local"], tenant)
    assert_problem(post(logged_in(outsider), f"/api/v1/executions/{execution.id}/cancel/"), 404)


def test_it_answers_409_when_cancelling_a_finished_execution(owner, actions, tenant):
    execution = run(actions["core.local"], tenant)
    services.finish(execution.id, "succeeded", exit_code=0)
    response = post(logged_in(owner), f"/api/v1/executions/{execution.id}/cancel/")
    assert "already finished" in assert_problem(response, 409)["detail"]


# --- re-run ---------------------------------------------------------------------------------


def test_it_lets_an_owner_re_run(owner, actions, tenant):
    first = run(actions["examples.print_lines"], tenant, count=4, delay=0)
    services.finish(first.id, "succeeded", exit_code=0)
    response = post(logged_in(owner), f"/api/v1/executions/{first.id}/re-run/")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["id"] != first.id
    assert body["status"] == "scheduled"
    assert body["parameters"] == {"count": 4, "delay": 0}
    assert response["Location"].endswith(f"/api/v1/executions/{body['id']}/")
    assert Execution.objects.get(pk=body["id"]).created_by == owner


def test_it_forbids_a_member_to_re_run(member, actions, tenant):
    execution = run(actions["core.local"], tenant)
    assert_problem(post(logged_in(member), f"/api/v1/executions/{execution.id}/re-run/"), 403)
    assert Execution.objects.count() == 1


def test_it_answers_409_when_the_action_is_gone(owner, actions, tenant):
    execution = run(actions["core.local"], tenant)
    actions["core.local"].enabled = False
    actions["core.local"].save()
    response = post(logged_in(owner), f"/api/v1/executions/{execution.id}/re-run/")
    assert "disabled" in assert_problem(response, 409)["detail"]


# --- children -------------------------------------------------------------------------------


def test_it_lists_a_workflows_children_oldest_first(member, outsider, actions, tenant):
    parent = run(actions["examples.deploy"], tenant)
    kids = [
        add_child(parent, actions["core.local"], name).id for name in ("build", "test", "summary")
    ]
    client = logged_in(member)
    body = client.get(f"/api/v1/executions/{parent.id}/children/").json()
    assert [e["id"] for e in body["results"]] == kids
    assert [e["task_name"] for e in body["results"]] == ["build", "test", "summary"]
    assert {e["parent"] for e in body["results"]} == {parent.id}
    assert client.get(f"/api/v1/executions/{parent.id}/").json()["children"] == kids
    listed = {e["id"]: e for e in client.get("/api/v1/executions/").json()["results"]}
    assert listed[parent.id]["children"] == kids
    assert_problem(logged_in(outsider).get(f"/api/v1/executions/{parent.id}/children/"), 404)


# --- a real run -----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_it_shows_the_result_of_a_real_run(owner, actions):
    execution = await run_execution(actions["examples.python_result"], {"name": "API"})
    client = Client()
    await sync_to_async(client.force_login)(owner)
    response = await sync_to_async(client.get)(f"/api/v1/executions/{execution.id}/")
    body = response.json()
    assert body["status"] == "succeeded"
    assert body["exit_code"] == 0
    assert body["result"] == {"greeting": "Hello, API!", "total": 6.0}
    assert body["last_seq"] >= 2
    assert await sync_to_async(Tenant.objects.get)(slug=body["tenant"])
