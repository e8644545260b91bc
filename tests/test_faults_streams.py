"""Web-side faults with real processes: clients end with exactly the stored output.

    actionrunner process ──▶ PostgreSQL (the log) ◀── manage.py serve --no-runner ◀── clients
                         └─▶ Redis (the doorbell) ──┘   (killed, restarted; clients dropped)

Clients are plain HTTP/SSE readers in threads that reconnect with Last-Event-ID, as a
browser's EventSource does; the stored log (read at the end) is the reference.
"""

import contextlib
import json
import os
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis
from django.conf import settings
from httpx_sse import connect_sse

from executions import services
from executions.models import Execution, OutputChunk
from streaming.db import STREAM_DB_THREADS
from tests.runner_helpers import start_actionrunner, wait_until
from tests.server_helpers import ARTIFACTS, Server, session_cookie, stop

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.cluster,
    pytest.mark.faults,
    pytest.mark.slow,
]
FAST = {"RUNNER_POLL_SECONDS": "0.2"}
# Many clients of one member on purpose: the connection limits are not under test here.
WEB = {
    **FAST,
    "STREAM_MAX_CONNECTIONS_PER_TENANT": "100000",
    "STREAM_MAX_CONNECTIONS_PER_PRINCIPAL": "100000",
}
# A client reading nothing for this long has a broken stream: it reconnects (and a test that
# stalls fails instead of hanging).
READ_TIMEOUT = 20
# How long one client may take to follow one execution to its end, faults included: a failure
# bound (100 executions on a starved CPU can take minutes to run).
FOLLOW_SECONDS = 480
# Waiting on the web process (a first answer under 50 connections at once, a warm-up to settle)
# on a busy machine: failure bounds only.
ANSWER_SECONDS = 120
KILL_CLIENTS = 20
DISCONNECTS = 1000
DISCONNECT_BATCH = 50  # at once
# Resources must be back to their baseline this soon after the last disconnect: a failure
# bound only (they settle within a second or two; polled, so a healthy run never waits it).
SETTLE_SECONDS = 180
# 45 s in CI: every client follows, drops and resumes many times over within it (the 100
# executions themselves take about that long to run). `make soak` runs the long one (300 s).
SOAK_SECONDS = float(os.environ.get("TAILGATE_SOAK_SECONDS", "45"))
SOAK_EXECUTIONS = 100
SOAK_CLIENTS = 100
HOSTILE = (
    r'printf "nul\000here\n"; printf "\377\376 bad utf-8\n"; printf "cr\rprogress\r"; '
    r'printf "\033[31mred\033[0m\n"; head -c 200000 /dev/zero | tr "\0" x; echo; '
    r'i=0; while [ $i -lt {lines} ]; do i=$((i+1)); echo "line $i é"; '
    r"[ $((i % 50)) -eq 0 ] && sleep 0.05; done"
)


def _stored(execution_id: str) -> list[tuple[int, str]]:
    return list(
        OutputChunk.objects.filter(execution_id=execution_id)
        .order_by("seq")
        .values_list("seq", "data")
    )


def follow(base_url, execution_id: str, cookies, *, drop=None, deadline=None):
    """Read an execution's SSE output to `done`, reconnecting with Last-Event-ID whenever the
    connection breaks (or `drop(received)` says to drop it); every (seq, data) received."""
    path = f"/api/v1/executions/{execution_id}/output/stream"
    got: list[tuple[int, str]] = []
    deadline = deadline or time.monotonic() + FOLLOW_SECONDS
    while time.monotonic() < deadline:
        headers = {"Last-Event-ID": str(got[-1][0])} if got else {}
        try:
            with (
                httpx.Client(cookies=cookies, timeout=READ_TIMEOUT) as client,
                connect_sse(client, "GET", f"{base_url()}{path}?from=0", headers=headers) as src,
            ):
                if src.response.status_code != 200:
                    raise httpx.TransportError(f"status {src.response.status_code}")
                for event in src.iter_sse():
                    if event.event == "execution.output__create":
                        chunk = json.loads(event.data)
                        got.append((chunk["seq"], chunk["data"]))
                        if drop and drop(len(got)):
                            break
                    elif event.event == "done":
                        return got
        except (httpx.TransportError, httpx.StreamError):
            pass
        time.sleep(random.uniform(0.05, 0.3))  # a client's reconnect back-off, not a sync
    raise AssertionError(f"{execution_id}: no `done` within {FOLLOW_SECONDS} s")


@pytest.fixture
def runner():
    process = start_actionrunner("--concurrency", "8", **FAST)
    yield process
    stop(process)


@pytest.mark.timeout(FOLLOW_SECONDS + 300)
def test_it_gives_every_client_the_stored_output_when_the_web_process_is_killed(
    actions, tenant, member, runner
):
    cookies = session_cookie(member)
    web = Server("--no-runner", **WEB)
    web.start()
    try:
        execution = services.create_execution(
            actions["core.local"], {"cmd": HOSTILE.format(lines=1500)}, tenant=tenant
        )
        with ThreadPoolExecutor(KILL_CLIENTS) as pool:
            clients = [
                pool.submit(follow, lambda: web.url, execution.id, cookies)
                for _ in range(KILL_CLIENTS)
            ]
            wait_until(lambda: _last_seq(execution.id) > 300, 120, "output under way")
            web.kill()
            web.start()
            received = [c.result() for c in clients]
    finally:
        web.stop()
    stored = _stored(execution.id)
    assert len(stored) > 1500
    assert all(r == stored for r in received), [len(r) for r in received]


def _last_seq(execution_id: str) -> int:
    return Execution.objects.filter(pk=execution_id).values_list("last_seq", flat=True).get()


# --- 1,000 abrupt disconnects ------------------------------------------------------------------
def _abrupt_disconnect(port: int, path: str, cookie: str) -> None:
    """Open a stream, wait for its first bytes, then reset the connection (no FIN, no read)."""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_SECONDS) as sock:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Cookie: {cookie}\r\nAccept: text/event-stream\r\n\r\n"
        )
        sock.sendall(request.encode())
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def _disconnect_many(port: int, path: str, cookie: str, count: int) -> None:
    with ThreadPoolExecutor(DISCONNECT_BATCH) as pool:
        list(pool.map(lambda _: _abrupt_disconnect(port, path, cookie), range(count)))


def _resources(pid: int, port: int, group_key: str) -> dict[str, int]:
    layer = redis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        members = layer.zcard(group_key)
    finally:
        layer.close()
    return {
        "client_sockets": _client_sockets(pid, port),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": len(os.listdir(f"/proc/{pid}/task")),
        "group_members": members,
        "db_connections": _db_connections(),
    }


def _client_sockets(pid: int, port: int) -> int:
    """Sockets the web process holds that are, or were, its clients' connections: those on its
    serving port that are not listening, and those the kernel already closed (a client reset
    them) but an fd still holds, which are in no socket table any more. Pool connections to
    PostgreSQL and Redis are in the tables under their own ports, so they do not count."""
    listed, clients = set(), set()
    for table in ("tcp", "tcp6", "udp", "udp6", "unix"):
        with open(f"/proc/{pid}/net/{table}") as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                inode = fields[6] if table == "unix" else fields[9]
                listed.add(inode)
                serving = table.startswith("tcp") and fields[1].endswith(f":{port:04X}")
                if serving and fields[3] != LISTEN:
                    clients.add(inode)
    held = 0
    for target in _fd_targets(pid):
        if target.startswith("socket:["):
            inode = target[len("socket:[") : -1]
            held += inode in clients or inode not in listed
    return held


LISTEN = "0A"  # a TCP state in /proc/net/tcp


def _fd_targets(pid: int) -> list[str]:
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return sorted(targets)


def _db_connections() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


# The web process's bounded pools (streaming's database threads, the limiter's Redis pool, the
# layer's connections) may open a few more connections after the warm-up than during it, when
# the disconnects' timing happens to overlap more of them; never more than their sizes. A
# leak grows with the 1,000 disconnects instead, and shows first as held client sockets.
POOL_SLACK = {
    "fds": STREAM_DB_THREADS + settings.STREAM_LIMIT_REDIS_POOL_SIZE + 4,
    "threads": STREAM_DB_THREADS + 4,
    "db_connections": STREAM_DB_THREADS,
}


def _settle(pid: int, port: int, group_key: str, baseline: dict[str, int]) -> dict[str, int]:
    """The resources once back to `baseline`, bounded pools aside (polled: another process's)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        now = _resources(pid, port, group_key)
        if all(now[k] <= baseline[k] + POOL_SLACK.get(k, 0) for k in baseline):
            return now
        if time.monotonic() > deadline:
            raise AssertionError(
                f"after {SETTLE_SECONDS} s: {now}, baseline {baseline} (+ pools {POOL_SLACK});"
                f" open files: {_fd_targets(pid)}"
            )
        time.sleep(0.2)


def test_it_returns_to_its_baseline_after_a_thousand_abrupt_disconnects(actions, tenant, member):
    name = settings.SESSION_COOKIE_NAME
    cookie = f"{name}={session_cookie(member)[name]}"
    execution = services.create_execution(  # no runner: it stays scheduled, streams stay open
        actions["core.local"], {"cmd": "true"}, tenant=tenant
    )
    path = f"/api/v1/executions/{execution.id}/output/stream"
    prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]
    group_key = f"{prefix}:group:execution.{execution.id}"
    web = Server("--no-runner", STREAM_GROUP_LINGER_SECONDS="0", **WEB)
    web.start()
    try:
        pid = web.process.pid
        # Warm-up at full concurrency: the bounded pools (database threads, Redis
        # connections) grow to what this load needs once; the baseline includes them.
        _disconnect_many(web.port, path, cookie, 2 * DISCONNECT_BATCH)

        def quiet() -> bool:
            now = _resources(pid, web.port, group_key)
            return now["group_members"] == 0 and now["client_sockets"] == 0

        wait_until(quiet, ANSWER_SECONDS, "warm-up")
        baseline = _resources(pid, web.port, group_key)
        _disconnect_many(web.port, path, cookie, DISCONNECTS)
        disconnected = time.monotonic()
        settled = _settle(pid, web.port, group_key, baseline)
        # Reported, not asserted (the bound above is for a starved CPU): docs/guarantees.md.
        took = time.monotonic() - disconnected
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "disconnects-settled.txt").write_text(
            f"{DISCONNECTS} abrupt disconnects: back to baseline {took:.2f} s after the last;"
            f" baseline {baseline}, settled {settled}\n"
        )
        assert web.process.poll() is None
    finally:
        web.stop()
    assert settled["group_members"] == 0
    assert settled["client_sockets"] == 0


# --- soak: hostile output, clients dropping and reconnecting at random --------------------------
# The soak's own length, plus the last follows finishing and 100 executions running.
@pytest.mark.timeout(SOAK_SECONDS + FOLLOW_SECONDS + 300)
def test_it_keeps_every_reconnecting_client_exact_through_a_soak(actions, tenant, member, runner):
    cookies = session_cookie(member)
    web = Server("--no-runner", **WEB)
    web.start()
    rng = random.Random(11)
    ids = [
        services.create_execution(
            actions["core.local"],
            {"cmd": HOSTILE.format(lines=rng.randint(50, 1500))},
            tenant=tenant,
        ).id
        for _ in range(SOAK_EXECUTIONS)
    ]
    # From here: creating 100 executions took longer than a 30 s soak on a starved CPU, and
    # the clients then had no time left to follow anything.
    stop_at = time.monotonic() + SOAK_SECONDS
    followed: list[tuple[str, list[tuple[int, str]]]] = []
    lock = threading.Lock()

    drops = []

    def client(seed: int) -> None:
        own = random.Random(seed)

        def drop(received: int) -> bool:  # at a random line, about 1 in 100
            if own.random() < 0.01:
                drops.append(received)
                return True
            return False

        while time.monotonic() < stop_at:
            execution_id = own.choice(ids)
            got = follow(lambda: web.url, execution_id, cookies, drop=drop)
            with lock:
                followed.append((execution_id, got))

    try:
        with ThreadPoolExecutor(SOAK_CLIENTS) as pool:
            for done in [pool.submit(client, seed) for seed in range(SOAK_CLIENTS)]:
                done.result()
    finally:
        web.stop()
    stored = {execution_id: _stored(execution_id) for execution_id in ids}
    wrong = [(eid, len(got)) for eid, got in followed if got != stored[eid]]
    duplicates = sum(len(got) - len({seq for seq, _ in got}) for _, got in followed)
    assert len(followed) >= SOAK_CLIENTS
    assert len(drops) >= SOAK_CLIENTS  # the clients did drop and resume, many times
    assert (wrong, duplicates) == ([], 0)
