"""Backpressure over a real daphne (`manage.py serve`): clients that stop reading cost the
web process a bounded amount of memory, resume exactly where they stopped, and are cut off
after STREAM_STALL_SECONDS; healthy clients on the same process get everything meanwhile.

The clients are raw sockets with a small receive buffer that the test simply does not read.
"""

import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest

from executions import services, storage
from tests.runner_helpers import wait_until
from tests.server_helpers import running_server, session_cookie

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

LINES = 100_000
LINE = "x" * 60 + "\n"
STALLED = 20
# Without backpressure each stalled client would hold its whole log in the server (about
# 25 MB as SSE here); with it, the send buffer (1 MiB) and a page. Generous: 4 MiB each.
MAX_GROWTH_PER_STALLED_BYTES = 4 * 1024 * 1024
READ_TIMEOUT = 120


@pytest.fixture
def big_log(actions, tenant):
    execution = services.create_execution(actions["examples.print_lines"], {}, tenant=tenant)
    services.claim(execution.id, "test-runner")
    stamp = datetime.now(UTC)
    for first in range(1, LINES + 1, 10_000):
        rows = [(seq, "stdout", LINE, stamp) for seq in range(first, first + 10_000)]
        storage.store_batch(execution.id, rows)
    services.finish(execution.id, "succeeded", exit_code=0)
    return execution


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _open(port: int, path: str, cookies: dict[str, str], *, small: bool = True) -> socket.socket:
    """A GET whose response nobody reads (yet): a small receive window, never drained (or, not
    `small`, the system's: room for a short response the server can write at once)."""
    client = socket.socket()
    if small:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    cookie = "; ".join(f"{name}={value}" for name, value in cookies.items())
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\r\n"
    client.sendall(request.encode())
    return client


def _read_ids(client: socket.socket) -> tuple[list[int], bool]:
    """Every SSE `id:` until `event: done` (True) or the connection ends (False)."""
    client.settimeout(READ_TIMEOUT)
    ids: list[int] = []
    pending = b""
    while True:
        try:
            data = client.recv(1 << 16)
        except ConnectionResetError:
            return ids, False
        if not data:
            return ids, False
        pending += data
        lines = pending.split(b"\n")
        pending = lines.pop()
        for line in lines:
            if line.startswith(b"id: "):
                ids.append(int(line[4:]))
            elif line == b"event: done":
                return ids, True


def test_it_bounds_stalled_clients_and_resumes_them_exactly(big_log, member):
    cookies = session_cookie(member)
    path = f"/api/v1/executions/{big_log.id}/output/stream?from=0&replay_limit=50000"
    env = {
        "STREAM_MAX_CONNECTIONS_PER_PRINCIPAL": "100",
        "STREAM_MAX_CONNECTIONS_PER_TENANT": "100",
        # The stalled clients must outlast the healthy one's read, however slow the machine:
        # being cut off is the next test's subject.
        "STREAM_STALL_SECONDS": "3600",
    }
    with running_server(**env) as server:
        warm = _open(server.port, path, cookies)  # imports, caches and pools warmed first
        assert len(_read_ids(warm)[0]) == 50_000
        warm.close()
        baseline = _rss_bytes(server.process.pid)
        stalled = [_open(server.port, path, cookies) for _ in range(STALLED)]
        healthy = _open(server.port, path, cookies)
        ids, done = _read_ids(healthy)  # meanwhile the stalled streams push what they can
        assert done and ids == list(range(LINES - 50_000 + 1, LINES + 1))
        growth = _rss_bytes(server.process.pid) - baseline
        assert growth < STALLED * MAX_GROWTH_PER_STALLED_BYTES, f"grew {growth >> 20} MiB"
        resumed, done = _read_ids(stalled[0])  # the client reads again: exactly the rest
        assert done and resumed == list(range(LINES - 50_000 + 1, LINES + 1))
        for client in stalled:
            client.close()


def test_it_disconnects_a_client_that_stops_reading(big_log, member):
    cookies = session_cookie(member)
    path = f"/api/v1/executions/{big_log.id}/output/stream?from=0&replay_limit=50000"
    with running_server(STREAM_STALL_SECONDS="1") as server:
        stalled = _open(server.port, path, cookies)
        wait_until(
            lambda: "stopped reading" in server.log_path.read_text(),
            120,
            "the server to give up on the stalled client",
        )
        ids, done = _read_ids(stalled)  # what the kernel still held, then the end
        assert not done and len(ids) < 50_000
        # The server goes on serving others. A response that fits in the socket buffers: a
        # longer one would be cut off too, had this process been stalled for a second.
        short = path.replace("replay_limit=50000", "replay_limit=100")
        healthy = _open(server.port, short, cookies, small=False)
        assert _read_ids(healthy) == (list(range(LINES - 100 + 1, LINES + 1)), True)
        stalled.close()
        healthy.close()


def test_a_quiet_stream_answers_its_headers_at_once(actions, tenant, member):
    """daphne sends the status line with the first body bytes: the stream sends an empty
    body at once, so a client of an execution that prints nothing yet still sees 200."""
    execution = services.create_execution(actions["examples.print_lines"], {}, tenant=tenant)
    with running_server("--no-runner") as server:  # nobody runs it: it stays silent
        cookies = session_cookie(member)
        client = _open(server.port, f"/api/v1/executions/{execution.id}/output", cookies)
        client.settimeout(READ_TIMEOUT)
        assert client.recv(4096).startswith(b"HTTP/1.1 200")
        client.close()
