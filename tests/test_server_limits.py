"""`manage.py serve` answers requests over Twisted's size limits (414, 431 as problem+json)
where plain daphne drops the connection without a word."""

import json
import socket

import pytest

from tests.server_helpers import running_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _exchange(port: int, request: bytes) -> tuple[int, dict]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(request)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


@pytest.fixture(scope="module")
def server(django_db_modify_db_settings, django_db_blocker):
    with django_db_blocker.unblock(), running_server() as server:
        yield server


@pytest.mark.parametrize("size", [20_000, 60_000])
def test_it_answers_414_to_a_request_line_too_long(server, size):
    target = "/api/v1/actions/?q=" + "a" * size
    status, problem = _exchange(server.port, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert (status, problem["status"], problem["title"]) == (414, 414, "URI Too Long")


@pytest.mark.parametrize("size", [17_000, 60_000])
def test_it_answers_431_to_a_header_too_large(server, size):
    request = f"GET /api/v1/actions/ HTTP/1.1\r\nHost: x\r\nX-Big: {'b' * size}\r\n\r\n"
    status, problem = _exchange(server.port, request.encode())
    assert (status, problem["status"]) == (431, 431)


def test_it_answers_431_to_many_headers_too_large_together(server):
    headers = "".join(f"X-H{i}: {'c' * 100}\r\n" for i in range(200))  # 20 KB in all
    request = f"GET /api/v1/actions/ HTTP/1.1\r\nHost: x\r\n{headers}\r\n"
    status, _ = _exchange(server.port, request.encode())
    assert status == 431


def test_it_still_answers_a_normal_request(server):
    request = b"GET /api/v1/actions/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    status, problem = _exchange(server.port, request)
    assert status == 401 and problem["status"] == 401
