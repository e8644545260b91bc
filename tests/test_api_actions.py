"""REST API: /api/v1/actions/ — the registered actions."""

import pytest

from executions.models import Action
from executions.models.actions import MASK
from tests.api_helpers import PROBLEM, logged_in


def test_it_lists_the_registered_actions(member, actions):
    response = logged_in(member).get("/api/v1/actions/?limit=500")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["count"] == len(actions)
    assert [a["ref"] for a in body["results"]] == sorted(actions)
    lines = next(a for a in body["results"] if a["ref"] == "examples.print_lines")
    assert lines == {
        "ref": "examples.print_lines",
        "pack": "examples",
        "name": "print_lines",
        "description": actions["examples.print_lines"].description,
        "runner_type": "local-shell-script",
        "enabled": True,
        "parameters": actions["examples.print_lines"].parameters,
    }


def test_it_keeps_the_declared_parameter_order(member, actions):
    action = actions["examples.echo_secret"]
    body = logged_in(member).get("/api/v1/actions/examples.echo_secret/").json()
    assert list(body["parameters"]) == [name for name, _ in action.ordered_parameters()]


def test_it_paginates_the_list(member, actions):
    body = logged_in(member).get("/api/v1/actions/?limit=2").json()
    assert len(body["results"]) == 2
    assert body["next"].endswith("limit=2&offset=2")


def test_it_filters_the_list(member, actions):
    client = logged_in(member)
    core = client.get("/api/v1/actions/?pack=core").json()["results"]
    assert {a["ref"] for a in core} == {ref for ref in actions if ref.startswith("core.")}
    workflows = client.get("/api/v1/actions/?runner_type=workflow").json()["results"]
    assert {a["runner_type"] for a in workflows} == {"workflow"}
    assert "examples.deploy" in {a["ref"] for a in workflows}


def test_it_answers_422_for_an_invalid_filter(member, actions):
    response = logged_in(member).get("/api/v1/actions/?runner_type=teleport")
    assert response.status_code == 422
    assert response["Content-Type"] == PROBLEM
    assert response.json()["errors"][0]["location"] == "query.runner_type"


def test_it_shows_one_action_by_ref(outsider, actions):
    response = logged_in(outsider).get("/api/v1/actions/examples.echo_secret/")
    assert response.status_code == 200
    body = response.json()
    assert body["ref"] == "examples.echo_secret"
    assert body["parameters"]["password"]["secret"] is True


def test_it_masks_the_default_of_a_secret_parameter(member, db):
    Action.objects.create(
        ref="ops.rotate",
        pack="ops",
        name="rotate",
        runner_type="local-shell-cmd",
        parameters={"token": {"type": "string", "secret": True, "default": "s3cr3t-default"}},
    )
    client = logged_in(member)
    for path in ("/api/v1/actions/", "/api/v1/actions/ops.rotate/"):
        response = client.get(path)
        assert response.status_code == 200
        assert b"s3cr3t-default" not in response.content
    detail = client.get("/api/v1/actions/ops.rotate/").json()
    assert detail["parameters"]["token"] == {"type": "string", "secret": True, "default": MASK}


def test_it_answers_404_problem_for_an_unknown_ref(member, actions):
    response = logged_in(member).get("/api/v1/actions/nope.nothing/")
    assert response.status_code == 404
    assert response["Content-Type"] == PROBLEM
    body = response.json()
    assert body["detail"] == "There is no action nope.nothing."
    assert body["instance"] == "/api/v1/actions/nope.nothing/"


def test_it_requires_authentication(client, actions):
    response = client.get("/api/v1/actions/")
    assert response.status_code == 401
    assert response["Content-Type"] == PROBLEM
    assert response["WWW-Authenticate"]


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_it_is_read_only(superuser, actions, method):
    client = logged_in(superuser)
    path = "/api/v1/actions/" if method == "post" else "/api/v1/actions/core.local/"
    response = getattr(client, method)(path, {}, content_type="application/json")
    assert response.status_code == 405
    assert response["Content-Type"] == PROBLEM
    assert "GET" in response["Allow"]


def test_it_describes_every_operation_to_api_readers_not_our_base_class(client, db):
    schema = client.get("/api/v1/schema/?format=json").json()
    descriptions = [
        operation.get("description", "")
        for methods in schema["paths"].values()
        for operation in methods.values()
    ]
    assert descriptions and not [d for d in descriptions if "viewsets' base" in d]
