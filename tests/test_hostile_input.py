"""No input answers 500: each hostile input gets a 4xx naming where it was (issue 12, item 1).

The suite runs on SQLite and again on PostgreSQL (cluster mode), where NUL used to reach
the database as a DataError; every test here runs in both.
"""

import json
import socket
from http import HTTPStatus

import pytest
from channels.testing import ApplicationCommunicator
from django.test import Client

from executions.api.edge import MAX_JSON_DEPTH, complete_reason_phrases
from executions.models import Execution
from executions.problems import INT64_MAX, INT64_MIN
from project.asgi import application as asgi
from rbac.models import ApiKey
from tests.rbac_helpers import call, http_scope, session_headers
from tests.server_helpers import serve, session_cookie

PROBLEM = "application/problem+json"
PRINT_LINES = '{"action": "examples.print_lines", "parameters": {"count": COUNT}}'


@pytest.fixture
def owner_headers(owner) -> list:
    return session_headers(owner)


@pytest.fixture
def owner_key(owner) -> str:
    return ApiKey.issue(owner, name="hostile")[1]


def problem_of(response, status: int) -> dict:
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"] == PROBLEM
    body = json.loads(response.content)  # strict: no NaN, valid UTF-8
    assert body["status"] == status
    return body


def locations(body: dict) -> list[str]:
    return [entry["location"] for entry in body["errors"]]


def post_raw(client: Client, text: str | bytes, path="/api/v1/executions/"):
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    return client.post(path, data=data, content_type="application/json")


# --- NUL and lone surrogates ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/api/v1/actions/core.local%00/", "/api/v1/executions/%00/", "/api/v1/x%00"]
)
def test_it_refuses_nul_in_an_api_path(owner_client, actions, path):
    body = problem_of(owner_client.get(path), 400)
    assert locations(body) == ["path"]


@pytest.mark.parametrize(
    "path", ["/admin/executions/execution/%00/change/", "/actions/core.local%00/run"]
)
def test_it_refuses_nul_in_a_page_path(superuser, actions, path):
    client = Client()
    client.force_login(superuser)
    response = client.get(path)
    assert response.status_code == 400
    assert b"NUL" in response.content


def test_it_refuses_nul_in_a_query_value_naming_it(owner_client):
    body = problem_of(owner_client.get("/api/v1/executions/?action=a%00b"), 422)
    assert locations(body) == ["query.action"]
    assert body["errors"][0]["value"] == "a\x00b"


def test_it_refuses_nul_in_a_header_naming_it(owner_client):
    body = problem_of(owner_client.get("/api/v1/executions/", headers={"X-Trace": "a\x00b"}), 400)
    assert locations(body) == ["header.X-Trace"]


@pytest.mark.parametrize(
    ("parameters", "location"),
    [
        ({"cmd": "echo a\x00b"}, "body.parameters.cmd"),
        ({"cmd": "true", "env": {"A\x00B": "x"}}, "body.parameters.env.A\x00B"),
        ({"cmd": "true", "env": {"A": ["ok", "x\x00"]}}, "body.parameters.env.A.1"),
    ],
)
def test_it_refuses_nul_in_a_body_naming_the_field(owner_client, actions, parameters, location):
    body = problem_of(
        post_raw(owner_client, json.dumps({"action": "core.local", "parameters": parameters})), 422
    )
    assert locations(body) == [location]
    assert not Execution.objects.exists()


@pytest.mark.parametrize(
    ("text", "location"),
    [
        ('{"action": "\\ud800"}', "body.action"),
        ('{"action": "core.local", "parameters": {"cmd": "a\\udfffb"}}', "body.parameters.cmd"),
    ],
)
def test_it_refuses_a_lone_surrogate_naming_the_field(owner_client, actions, text, location):
    body = problem_of(post_raw(owner_client, text), 422)
    assert locations(body) == [location]
    assert "\\ud" in body["errors"][0]["value"]  # echoed escaped, the answer stays UTF-8


def test_it_answers_400_for_a_body_that_is_not_utf8(owner_client, actions):
    problem_of(post_raw(owner_client, b'{"action": "\xff"}'), 400)


# --- numbers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1e400", "finite"),
        ("-1e400", "finite"),
        (str(2**64), "between"),
        (str(INT64_MAX + 1), "between"),
        (str(INT64_MIN - 1), "between"),
    ],
)
def test_it_refuses_numbers_json_or_the_database_cannot_hold(owner_client, actions, value, message):
    text = PRINT_LINES.replace("COUNT", value)
    body = problem_of(post_raw(owner_client, text), 422)
    assert locations(body) == ["body.parameters.count"]
    assert message in body["errors"][0]["message"]
    assert not Execution.objects.exists()


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_it_answers_400_for_non_json_constants(owner_client, actions, constant):
    text = PRINT_LINES.replace("COUNT", constant)
    problem_of(post_raw(owner_client, text), 400)


def test_it_still_accepts_the_largest_int64(owner_client, actions):
    text = PRINT_LINES.replace("COUNT", str(INT64_MAX))
    response = post_raw(owner_client, text)
    assert response.status_code == 201, response.content
    assert Execution.objects.get().parameters["count"] == INT64_MAX


# --- sizes and nesting ---------------------------------------------------------------------


def test_it_answers_400_for_nesting_past_the_recursion_limit(owner_client, actions):
    body = problem_of(post_raw(owner_client, "[" * 100_000), 400)
    assert "nested" in body["detail"]


def test_it_answers_422_for_nesting_past_the_bound(owner_client, actions):
    deep = "[" * (MAX_JSON_DEPTH + 5) + "]" * (MAX_JSON_DEPTH + 5)
    text = '{"action": "core.local", "parameters": {"cmd": "true", "env": DEEP}}'.replace(
        "DEEP", deep
    )
    body = problem_of(post_raw(owner_client, text), 422)
    assert "nested more than" in body["errors"][0]["message"]


def test_it_answers_413_for_a_body_over_the_limit(owner_client, actions, settings):
    big = json.dumps({"action": "core.local", "parameters": {"cmd": "x" * 3_000_000}})
    body = problem_of(post_raw(owner_client, big), 413)
    assert str(settings.DATA_UPLOAD_MAX_MEMORY_SIZE) in body["detail"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_it_answers_a_large_body_without_content_length_with_a_4xx(owner_key):
    """A chunked body declares no length: DRF reads such a body as empty (422: no action)."""
    big = json.dumps({"action": "core.local", "parameters": {"cmd": "x" * 3_000_000}}).encode()
    headers = [(b"authorization", b"Bearer " + owner_key.encode())]
    headers.append((b"content-type", b"application/json"))
    scope = http_scope("POST", "/api/v1/executions/", "", headers)
    communicator = ApplicationCommunicator(asgi, scope)
    half = len(big) // 2
    await communicator.send_input({"type": "http.request", "body": big[:half], "more_body": True})
    await communicator.send_input({"type": "http.request", "body": big[half:]})
    start = await communicator.receive_output(timeout=20)
    body = await communicator.receive_output(timeout=20)
    await communicator.wait(timeout=20)
    assert start["status"] in (413, 422)
    assert json.loads(body["body"])["status"] == start["status"]
    assert not await Execution.objects.aexists()


def test_it_answers_400_for_too_many_query_fields(owner_client):
    query = "&".join(f"f{i}=1" for i in range(1500))
    body = problem_of(owner_client.get(f"/api/v1/executions/?{query}"), 400)
    assert "more than" in body["detail"]


def test_it_answers_options_on_the_docs_page(client, db):
    response = client.options("/api/v1/docs/")
    assert response.status_code == 200
    assert "GET" in response["Allow"]


# --- streams -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("path", "query", "status", "location"),
    [
        ("/api/v1/stream", "events=%00", 422, "query.events"),
        ("/api/v1/stream", "tenant=a%00", 422, "query.tenant"),
        ("/api/v1/stream", "bogus=1", 422, "query.bogus"),
        ("/api/v1/stream", "&".join(f"f{i}=1" for i in range(200)), 400, None),
        ("/api/v1/executions/last/output/stream", "from=1e400", 422, "query.from"),
        ("/api/v1/executions/last/output/stream", f"from={2**64}", 422, "query.from"),
        ("/api/v1/executions/last/output/stream", "replay_limit=0", 422, "query.replay_limit"),
        ("/api/v1/executions/last/output", "from=1", 422, "query.from"),
    ],
)
async def test_it_refuses_hostile_stream_parameters(owner_headers, path, query, status, location):
    reply = await call("GET", path, query=query, headers=owner_headers)
    assert reply.status == status, reply.body[:300]
    assert reply.headers["content-type"] == PROBLEM
    body = reply.json()
    if location:
        assert location in [entry["location"] for entry in body["errors"]]


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_it_refuses_a_hostile_last_event_id(owner_headers):
    headers = [*owner_headers, (b"last-event-id", b"1\x00")]
    reply = await call("GET", "/api/v1/stream", headers=headers)
    assert reply.status == 422
    assert reply.json()["errors"][0]["location"] == "header.Last-Event-ID"


# --- status lines over a real daphne -------------------------------------------------------


def test_it_fills_the_reason_phrases_twisted_lacks():
    from twisted.web import http

    complete_reason_phrases()
    assert http.RESPONSES[422] == HTTPStatus(422).phrase.encode()
    assert http.RESPONSES[429] == b"Too Many Requests"
    assert http.RESPONSES[404] == b"Not Found"  # Twisted's own are kept


def _status_line(base_url: str, request: bytes) -> bytes:
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while b"\r\n" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    return received.split(b"\r\n", 1)[0]


@pytest.mark.django_db(transaction=True)
def test_it_names_422_in_the_status_line_over_daphne(owner):
    cookie = "; ".join(f"{k}={v}" for k, v in session_cookie(owner).items()).encode()
    with serve() as (_, url):
        for path in (b"/api/v1/executions/?bogus=1", b"/api/v1/stream?bogus=1"):
            request = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: %s\r\n\r\n" % (path, cookie)
            assert _status_line(url, request) == b"HTTP/1.1 422 " + HTTPStatus(422).phrase.encode()
        nul = b"GET /api/v1/actions/x%00/ HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: " + cookie
        assert _status_line(url, nul + b"\r\n\r\n") == b"HTTP/1.1 400 Bad Request"
        # Request lines and headers past Twisted's 16 KB: an answer, not a dropped connection.
        long_line = b"GET /api/v1/stream?" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        assert _status_line(url, long_line).startswith(b"HTTP/1.1 414 ")
        big_header = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
        assert _status_line(url, big_header).startswith(b"HTTP/1.1 431 ")


# --- credentials carrying NUL (they reach a database lookup) -------------------------------

NUL_KEY = b"tg_" + b"0" * 15 + b"\x00_secret"


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/api/v1/stream", "/api/v1/executions/", "/ws-not-here"])
@pytest.mark.parametrize(
    "header",
    [
        (b"authorization", b"Bearer " + NUL_KEY),
        (b"x-api-key", NUL_KEY),
        (b"cookie", b'sessionid="abcdefgh\\000ijkl"'),
    ],
)
async def test_it_refuses_credentials_holding_nul_without_a_500(path, header):
    reply = await call("GET", path, headers=[header])
    assert 400 <= reply.status < 500, reply.body[:300]


@pytest.mark.parametrize(
    ("form", "location"),
    [({"cmd": "echo a\x00b"}, "form.cmd"), ({"cmd": "true", "cwd\x00": "/"}, "form.cwd\x00")],
)
def test_it_refuses_nul_in_a_posted_web_form(owner, actions, form, location):
    client = Client()
    client.force_login(owner)
    response = client.post("/actions/core.local/run", form)
    assert response.status_code == 422
    assert repr(location).encode() + b": must not contain NUL characters" in response.content
    assert not Execution.objects.exists()
