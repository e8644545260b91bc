"""Every error under /api/ is application/problem+json (RFC 9457), never HTML or a traceback."""

import json
import logging

import pytest
from django.test import Client, RequestFactory

from executions import services
from executions.api import problems
from executions.models import Execution
from tests.api_helpers import PROBLEM, PROBLEM_FIELDS, assert_problem


@pytest.mark.parametrize(
    "path",
    ["/api/", "/api/v1/", "/api/v2/executions/", "/api/v1/nothing/", "/api/v1/executions/x/y/"],
)
@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_it_answers_an_unknown_api_path_with_a_problem(owner_client, path, method):
    response = getattr(owner_client, method)(path)
    assert "no API endpoint" in assert_problem(response, 404)["detail"]


def test_it_hints_at_the_missing_trailing_slash(owner_client):
    body = assert_problem(owner_client.get("/api/v1/executions"), 404)
    assert "Did you mean /api/v1/executions/ ?" in body["detail"]


def test_it_keeps_html_pages_outside_the_api(client):
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_it_answers_401_with_a_challenge(client):
    for path in ("/api/v1/executions/", "/api/v1/executions/last/"):
        body = assert_problem(client.get(path), 401)
        assert "credentials" in body["detail"]
    response = client.post("/api/v1/executions/", {}, content_type="application/json")
    assert_problem(response, 401)
    # A challenge is what makes DRF answer 401 rather than 403.
    assert response["WWW-Authenticate"].endswith('realm="tailgate"')


def test_it_answers_401_for_a_bad_api_key(client):
    response = client.get("/api/v1/executions/", headers={"authorization": "Bearer tg_nope"})
    assert_problem(response, 401)


def test_it_answers_403_when_the_csrf_token_is_missing(owner, actions):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    response = client.post(
        "/api/v1/executions/",
        {"action": "core.local", "parameters": {"cmd": "id"}},
        content_type="application/json",
    )
    assert "CSRF" in assert_problem(response, 403)["detail"]
    assert not Execution.objects.exists()


def test_it_answers_405_with_allow(owner_client):
    response = owner_client.delete("/api/v1/executions/")
    assert "DELETE" in assert_problem(response, 405)["detail"]
    allowed = set(response["Allow"].replace(" ", "").split(","))
    assert {"GET", "POST"} <= allowed
    assert "DELETE" not in allowed
    assert_problem(owner_client.get("/api/v1/executions/last/cancel/"), 405)


def test_it_answers_400_for_a_malformed_json_body(owner_client):
    response = owner_client.post(
        "/api/v1/executions/", '{"action": "core.local",', content_type="application/json"
    )
    assert "JSON parse error" in assert_problem(response, 400)["detail"]


def test_it_answers_415_for_a_body_that_is_not_json(owner_client):
    form = "application/x-www-form-urlencoded"
    response = owner_client.post("/api/v1/executions/", "action=core.local", content_type=form)
    assert form in assert_problem(response, 415)["detail"]


def test_it_answers_422_for_a_body_that_is_not_an_object(owner_client):
    response = owner_client.post("/api/v1/executions/", [1, 2], content_type="application/json")
    body = assert_problem(response, 422)
    assert body["errors"] == [
        {"location": "body", "message": body["errors"][0]["message"], "value": None}
    ]
    assert "Expected a dictionary" in body["errors"][0]["message"]


def test_it_answers_406_as_a_problem_too(owner_client):
    response = owner_client.get("/api/v1/executions/", headers={"accept": "text/html"})
    assert_problem(response, 406)


def test_it_answers_500_without_a_traceback(owner_client, actions, tenant, caplog):
    execution = services.create_execution(actions["core.local"], {"cmd": "id"}, tenant=tenant)
    # A row the code cannot read (parameters must be an object): an unexpected failure.
    Execution.objects.filter(pk=execution.pk).update(parameters=["broken"])
    with caplog.at_level(logging.ERROR, logger="executions.api.problems"):
        response = owner_client.get(f"/api/v1/executions/{execution.id}/")
    body = assert_problem(response, 500)
    assert body["detail"] == "An unexpected error occurred; it has been logged."
    assert b"AttributeError" not in response.content
    logged = [r for r in caplog.records if r.name == "executions.api.problems"]
    assert logged and logged[0].exc_info[0] is AttributeError


def test_it_answers_400_for_a_bad_host_on_an_api_path(client):
    response = client.get("/api/v1/executions/", headers={"host": "evil.example"})
    assert_problem(response, 400)
    page = client.get("/accounts/login/", headers={"host": "evil.example"})
    assert page.status_code == 400
    assert page["Content-Type"].startswith("text/html")


@pytest.mark.parametrize(
    ("handler", "status"),
    [
        (lambda request: problems.server_error(request), 500),
        (lambda request: problems.page_not_found(request, Exception("x")), 404),
        (lambda request: problems.permission_denied(request, Exception("x")), 403),
    ],
)
def test_it_answers_problems_from_djangos_error_handlers(handler, status):
    response = handler(RequestFactory().get("/api/v1/whatever"))
    assert response.status_code == status
    assert response["Content-Type"] == PROBLEM
    body = json.loads(response.content)
    assert set(body) >= PROBLEM_FIELDS
    assert (body["status"], body["instance"]) == (status, "/api/v1/whatever")
    page = handler(RequestFactory().get("/elsewhere/"))
    assert page["Content-Type"].startswith("text/html")
