"""The streams over a real daphne server (`manage.py serve`), with real HTTP and WebSocket
clients: embedded mode (one process, runner inside), and cluster mode (two web processes and
a separate `actionrunner` on PostgreSQL and Redis).
"""

import json
import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.conf import settings
from httpx_sse import connect_sse

from executions import services
from executions.models import Execution
from tests.runner_helpers import start_actionrunner, wait_until
from tests.server_helpers import serve, session_cookie, stop, websocket_client

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

# Reads block at most this long: a stream that stalls fails the test instead of hanging it
# (a failure bound only: a busy machine can starve a server for seconds).
READ_TIMEOUT = 60
# How often the runner inside a server looks for work: short, so tests do not wait on it.
FAST = {"RUNNER_POLL_SECONDS": "0.2"}


def read_sse(url: str, cookies, *, until=lambda event: event.event == "done", headers=None):
    """SSE events from `url` up to and including the first for which `until` is true."""
    events = []
    with (
        httpx.Client(cookies=cookies, timeout=READ_TIMEOUT) as client,
        connect_sse(client, "GET", url, headers=headers or {}) as source,
    ):
        assert source.response.status_code == 200, source.response.read()
        for event in source.iter_sse():
            events.append(event)
            if until(event):
                return events
    raise AssertionError(f"the stream ended without the expected event: {events[-3:]}")


def chunk_seqs(events) -> list[int]:
    return [json.loads(e.data)["seq"] for e in events if e.event == "execution.output__create"]


def created(actions, tenant, count: int, delay: float) -> Execution:
    action = actions["examples.print_lines"]
    return services.create_execution(action, {"count": count, "delay": delay}, tenant=tenant)


def websocket_session(url: str, cookies, requests: list[dict], dones: int) -> list[dict]:
    """Messages a real WebSocket client receives until `dones` executions are done."""
    finished = subprocess.run(
        websocket_client(url, cookies, requests, dones, READ_TIMEOUT),
        capture_output=True,
        text=True,
        timeout=READ_TIMEOUT + 10,
    )
    assert finished.returncode == 0, finished.stderr
    return [json.loads(line) for line in finished.stdout.splitlines()]


# --- embedded mode ------------------------------------------------------------------------


@pytest.fixture
def embedded(cluster_mode):
    if cluster_mode:
        pytest.skip("embedded mode: the test database is SQLite and the layer in memory")


def test_it_streams_sse_and_plain_text_from_an_embedded_server(
    embedded, actions, tenant, member, tmp_path
):
    cookies = session_cookie(member)
    gate = tmp_path / "gate"
    # The first line, then the rest once the client has it: "in pieces, as produced" must not
    # depend on the client reading before a fast execution ends (a stalled test did not).
    cmd = f'echo "line 1"; while [ ! -e "{gate}" ]; do sleep 0.05; done; '
    cmd += 'for i in $(seq 2 30); do echo "line $i"; done'
    with serve(**FAST) as (_, url):
        execution = services.create_execution(actions["core.local"], {"cmd": cmd}, tenant=tenant)
        base = f"{url}/api/v1/executions/{execution.id}/output"
        with (
            httpx.Client(cookies=cookies, timeout=READ_TIMEOUT) as client,
            client.stream("GET", base) as text,
        ):
            assert text.headers["content-type"] == "text/plain; charset=utf-8"
            received = text.iter_bytes()
            pieces = [next(received)]  # the first line, while the execution waits
            gate.touch()
            pieces += list(received)
        events = read_sse(f"{base}/stream?from=0", cookies)
    assert pieces[0] == b"line 1\n"  # the text came in pieces, as it was produced
    body = b"".join(pieces).decode()
    assert body.count("\n") == 30
    assert chunk_seqs(events) == list(range(1, 31))
    assert json.loads(events[-1].data) == {"final_seq": 30, "status": "succeeded", "exit_code": 0}
    chunks = [json.loads(e.data) for e in events if e.event == "execution.output__create"]
    assert "".join(chunk["data"] for chunk in chunks) == body


def test_it_streams_exactly_when_the_hub_writes_to_the_sockets(embedded, actions, tenant, member):
    """The hub's direct path (streaming/direct.py) over real sockets: with the tick from the
    first stream, live output reaches caught-up viewers as HTTP chunks the hub writes."""
    cookies = session_cookie(member)
    with serve(**FAST, STREAM_COALESCE_MIN_STREAMS="1") as (_, url):
        execution = created(actions, tenant, count=200, delay=0.005)
        base = f"{url}/api/v1/executions/{execution.id}/output"
        with ThreadPoolExecutor(3) as pool:
            viewers = [pool.submit(read_sse, f"{base}/stream?from=0", cookies) for _ in range(2)]
            text = pool.submit(lambda: httpx.get(base, cookies=cookies, timeout=READ_TIMEOUT))
            streams = [viewer.result() for viewer in viewers]
            body = text.result().text
    assert body.count("\n") == 200
    for events in streams:
        assert chunk_seqs(events) == list(range(1, 201))
        chunks = [json.loads(e.data) for e in events if e.event == "execution.output__create"]
        assert "".join(chunk["data"] for chunk in chunks) == body
        assert json.loads(events[-1].data)["final_seq"] == 200


def test_it_answers_problems_before_streaming_on_a_real_server(embedded, actions, tenant, member):
    cookies = session_cookie(member)
    execution = created(actions, tenant, count=1, delay=0)
    with serve(**FAST) as (_, url), httpx.Client(cookies=cookies, timeout=READ_TIMEOUT) as client:
        bad = client.get(f"{url}/api/v1/executions/{execution.id}/output/stream?replay_limit=0")
        missing = client.get(f"{url}/api/v1/executions/01J0000000000000000000000Z/output")
        anonymous = httpx.get(f"{url}/api/v1/stream", timeout=READ_TIMEOUT)
    assert (bad.status_code, bad.headers["content-type"]) == (422, "application/problem+json")
    assert bad.json()["errors"][0]["location"] == "query.replay_limit"
    assert (missing.status_code, missing.json()["status"]) == (404, 404)
    assert (anonymous.status_code, anonymous.json()["title"]) == (401, "Unauthorized")


def test_it_streams_two_executions_over_a_real_websocket(embedded, actions, tenant, member):
    cookies = session_cookie(member)
    first, second = created(actions, tenant, 5, 0.02), created(actions, tenant, 7, 0.02)
    requests = [{"action": "subscribe", "execution": e.id, "from": 0} for e in (first, second)]
    with serve(**FAST) as (_, url):
        received = websocket_session(url, cookies, requests, dones=2)
    for execution, count in ((first, 5), (second, 7)):
        ids = [
            m["id"]
            for m in received
            if m["event"] == "execution.output__create" and m["execution"] == execution.id
        ]
        assert ids == list(range(1, count + 1))
        done = next(m for m in received if m["event"] == "done" and m["execution"] == execution.id)
        assert done["data"]["final_seq"] == count


# --- cluster mode -------------------------------------------------------------------------


@pytest.mark.cluster
def test_it_resumes_on_another_web_process_without_gap_or_duplicate(actions, tenant, member):
    """Web A (paused a while) and web B, both without a runner; one actionrunner process,
    whose layer lets a channel hold one message (channels-redis checks capacity when it
    sends). A's client must heal what the layer dropped meanwhile; reconnecting to B with
    Last-Event-ID must continue exactly."""
    cookies = session_cookie(member)
    runner = start_actionrunner(RUNNER_POLL_SECONDS="0.2", CHANNEL_LAYER_CAPACITY="1")
    try:
        with (
            serve("--no-runner", **FAST) as (web_a, url_a),
            serve("--no-runner", **FAST) as (_, url_b),
        ):
            execution = created(actions, tenant, count=400, delay=0.005)
            path = f"/api/v1/executions/{execution.id}/output/stream"

            def paused_a_while(event) -> bool:
                if event.id == "20":
                    # A stops reading its layer while the runner writes on: drops guaranteed.
                    web_a.send_signal(signal.SIGSTOP)
                    try:
                        wait_until(lambda: _last_seq(execution.id) >= 150, 120, "more output")
                    finally:
                        web_a.send_signal(signal.SIGCONT)
                return event.id == "200"

            on_a = read_sse(f"{url_a}{path}?from=0", cookies, until=paused_a_while)
            on_b = read_sse(f"{url_b}{path}", cookies, headers={"Last-Event-ID": "200"})
    finally:
        stop(runner)
    assert chunk_seqs(on_a) == list(range(1, 201))
    assert chunk_seqs(on_b) == list(range(201, 401))
    assert json.loads(on_b[-1].data)["final_seq"] == 400


@pytest.mark.cluster
def test_it_leaves_the_layer_when_the_client_goes(actions, tenant, member):
    import redis

    cookies = session_cookie(member)
    execution = created(actions, tenant, count=1, delay=0)  # no runner: it stays scheduled
    prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]
    group_key = f"{prefix}:group:execution.{execution.id}"
    layer = redis.Redis.from_url(os.environ["REDIS_URL"])
    members_while_open = []

    def opened(event) -> bool:
        members_while_open.append(layer.zcard(group_key))
        return event.retry is not None

    # The hub leaves a group STREAM_GROUP_LINGER_SECONDS after its last stream: none here.
    with serve("--no-runner", STREAM_GROUP_LINGER_SECONDS="0", **FAST) as (_, url):
        read_sse(f"{url}/api/v1/executions/{execution.id}/output/stream", cookies, until=opened)
        # read_sse has closed the connection
        # At once in practice; the bound is generous for a busy machine (not a timing test).
        wait_until(lambda: layer.zcard(group_key) == 0, 120, "the stream to leave its group")
    layer.close()
    assert members_while_open == [1]


def _last_seq(execution_id: str) -> int:
    return Execution.objects.filter(pk=execution_id).values_list("last_seq", flat=True).get()


@pytest.mark.cluster
def test_it_streams_the_runner_processes_output_to_both_web_processes(actions, tenant, member):
    cookies = session_cookie(member)
    runner = start_actionrunner(RUNNER_POLL_SECONDS="0.2")
    try:
        with serve("--no-runner", **FAST) as (_, url_a), serve("--no-runner", **FAST) as (_, url_b):
            execution = created(actions, tenant, count=50, delay=0.01)
            path = f"/api/v1/executions/{execution.id}/output"
            with httpx.Client(cookies=cookies, timeout=READ_TIMEOUT) as client:
                text = client.get(f"{url_a}{path}").text
            events = read_sse(f"{url_b}{path}/stream?from=0", cookies)
    finally:
        stop(runner)
    assert text.count("\n") == 50
    assert chunk_seqs(events) == list(range(1, 51))
    assert os.environ.get("REDIS_URL")
