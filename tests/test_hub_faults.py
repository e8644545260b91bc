"""Layer faults, stream side (cluster mode, a private redis-server): streams get live delivery
back within 5 s of a Redis restart, and a web process that dies leaves no membership behind.
"""

import asyncio
import signal
import time

import httpx
import pytest
import redis
from channels.layers import channel_layers, get_channel_layer
from django.conf import settings as django_settings

from executions import publish
from streaming.hub import Hub
from tests.fault_helpers import PrivateRedis
from tests.runner_helpers import wait_until
from tests.server_helpers import ARTIFACTS, running_server, session_cookie
from tests.streaming_helpers import Response, db, running_execution, write

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.cluster,
    pytest.mark.faults,
    pytest.mark.usefixtures("home_loop"),
]
RESTARTS = 5
# Live delivery must come back after each restart. The safety re-check, which could also
# deliver (its verdict brings the stream up to the execution's state), is set to an hour, so
# only the live path passes; the wait is a failure bound only, not a timing (benchmarks time).
WAIT_SECONDS = 120


@pytest.fixture(autouse=True)
def _no_safety_recheck(settings):
    settings.STREAM_ACCESS_RECHECK_SECONDS = 3600


@pytest.fixture
def private_redis(settings):
    with PrivateRedis() as server:
        config = dict(django_settings.CHANNEL_LAYERS["default"]["CONFIG"])
        config["hosts"] = [{**config["hosts"][0], "address": server.url}]
        config["prefix"] = "hubfaults"
        settings.CHANNEL_LAYERS = {"default": {**django_settings.CHANNEL_LAYERS["default"]}}
        settings.CHANNEL_LAYERS["default"]["CONFIG"] = config
        channel_layers.backends.clear()
        yield server


async def test_streams_are_live_again_after_each_redis_restart(
    private_redis, actions, tenant, member
):
    execution = await db(running_execution)(actions["examples.print_lines"], tenant)
    path = f"/api/v1/executions/{execution.id}/output/stream"
    response = await Response.get(path, "from=0", user=member)
    await write(execution, ["0\n"])
    assert (await response.next_sse())["data"]["data"] == "0\n"
    group = publish.execution_group(execution.id)
    live_again = []  # seconds from Redis answering again to a line delivered live
    for restart in range(1, RESTARTS + 1):
        await asyncio.to_thread(private_redis.restart)
        back = time.monotonic()
        await _until_rejoined(group, private_redis.port)
        await write(execution, [f"{restart}\n"])
        frame = await response.next_sse(timeout=WAIT_SECONDS)
        live_again.append(time.monotonic() - back)
        assert (frame["data"]["seq"], frame["data"]["data"]) == (restart + 1, f"{restart}\n")
    await response.disconnect()
    # Reported, not asserted (WAIT_SECONDS is a failure bound): docs/guarantees.md.
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "redis-live-again.txt").write_text(
        f"{RESTARTS} Redis restarts: live again after "
        + ", ".join(f"{seconds:.2f}" for seconds in live_again)
        + " s\n"
    )


async def _until_rejoined(group: str, port: int) -> None:
    """The restarted Redis holds the hub's membership again, and the hub knows it joined (it
    noticed by itself). Both waited on: the hub records its join only once Redis answered it,
    which may come after the test's own query saw the member."""
    layer = get_channel_layer()
    client = redis.asyncio.Redis(port=port)
    try:
        async with asyncio.timeout(WAIT_SECONDS):
            while not (
                await client.zcard(layer._group_key(group)) and group in Hub.current().joined
            ):
                await asyncio.sleep(0.02)
    finally:
        await client.aclose()


def test_a_dead_web_process_leaves_no_membership(private_redis, actions, tenant, member, settings):
    settings.CHANNEL_LAYERS["default"]["CONFIG"]["group_expiry"] = 2  # the sender enforces it
    channel_layers.backends.clear()
    execution = running_execution(actions["examples.print_lines"], tenant)
    env = {"REDIS_URL": private_redis.url, "CHANNEL_LAYER_PREFIX": "hubfaults"}
    group = publish.execution_group(execution.id)
    layer = get_channel_layer()
    key = layer._group_key(group)
    client = redis.Redis(port=private_redis.port)
    with running_server("--no-runner", **env) as server:
        url = f"{server.url}/api/v1/executions/{execution.id}/output/stream"
        cookies = session_cookie(member)
        timeout = WAIT_SECONDS  # failure bounds only: a busy machine answers late
        with (
            httpx.Client(cookies=cookies, timeout=timeout) as http,
            http.stream("GET", url) as stream,
        ):
            assert stream.status_code == 200
            wait_until(lambda: client.zcard(key) == 1, WAIT_SECONDS, "the server's hub to join")
            server.process.send_signal(signal.SIGKILL)
            server.process.wait(timeout=WAIT_SECONDS)

    def expired() -> bool:
        # A sender (the runner, here the test) drops members older than group_expiry.
        asyncio.run(layer.group_send(group, {"type": "probe"}))
        return client.zcard(key) == 0

    wait_until(expired, WAIT_SECONDS, "the dead process's membership to expire", interval=0.5)
    client.close()
