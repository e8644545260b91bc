"""What the REST API tests share: a client logged in as a persona, a JSON POST, and the one
check of a problem+json answer (RFC 9457) every error must pass."""

from django.test import Client

PROBLEM = "application/problem+json"
PROBLEM_FIELDS = {"type", "title", "status", "detail", "instance"}


def logged_in(user, **options) -> Client:
    """A test client with `user`'s session (`options` go to Client, e.g. enforce_csrf_checks)."""
    client = Client(**options)
    client.force_login(user)
    return client


def post(client: Client, path: str, body=None, **headers):
    return client.post(path, body or {}, content_type="application/json", **headers)


def assert_problem(response, status: int, path: str | None = None) -> dict:
    """The answer is a problem+json of `status` about `path` (default: the request's), with
    every field filled and nothing of an HTML page or a traceback; its body."""
    assert response.status_code == status, response.content
    assert response["Content-Type"] == PROBLEM
    body = response.json()
    assert set(body) >= PROBLEM_FIELDS
    assert body["status"] == status
    assert body["type"] == "about:blank"
    assert body["title"] and body["detail"]
    assert body["instance"] == (path or response.wsgi_request.path)
    assert b"<html" not in response.content.lower()
    assert b"Traceback" not in response.content
    return body
