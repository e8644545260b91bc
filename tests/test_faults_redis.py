"""Redis faults, runner side: an idle receive is not an error, and a restarted Redis is re-joined.

Cluster mode only (the layer under test is channels-redis). Restarts happen on a private
redis-server (tests/fault_helpers.py), never on the shared one.
"""

import asyncio
import logging

import pytest
import redis
from asgiref.sync import sync_to_async
from channels.layers import channel_layers, get_channel_layer
from django.conf import settings as django_settings

from executions import publish, services
from executions.models import Execution, ExecutionStatus, OutputChunk
from executions.runner_service import RunnerService
from tests.fault_helpers import PrivateRedis

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster, pytest.mark.faults]
S = ExecutionStatus
# channels-redis blocks 5 s in BZPOPMIN per idle receive; redis-py 8's default socket timeout
# (5 s) used to fire just then. Waiting past two of those blocks proves the idle case is quiet.
IDLE_RECEIVE_SECONDS = 11
RESTARTS = 5
# A nudge must reach the runner well before its poll (set to an hour below) would: a failure
# bound only, generous for a starved CPU (a run in between) and still far below the poll.
NUDGE_SECONDS = 120


def _use_layer_at(settings, url: str) -> None:
    config = dict(django_settings.CHANNEL_LAYERS["default"]["CONFIG"])
    config["hosts"] = [{**config["hosts"][0], "address": url}]
    config["prefix"] = "faults"
    settings.CHANNEL_LAYERS = {"default": {**django_settings.CHANNEL_LAYERS["default"]}}
    settings.CHANNEL_LAYERS["default"]["CONFIG"] = config
    channel_layers.backends.clear()


def _tracebacks(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info]


async def test_it_waits_on_an_idle_channel_without_a_redis_timeout(caplog):
    layer = get_channel_layer()
    channel = await layer.new_channel()
    with pytest.raises(TimeoutError) as waited:
        async with asyncio.timeout(IDLE_RECEIVE_SECONDS):
            await layer.receive(channel)
    # Our own timeout (builtins), not redis.exceptions.TimeoutError from the socket.
    assert not isinstance(waited.value, redis.RedisError)
    assert _tracebacks(caplog) == []


async def test_it_keeps_the_runner_nudge_listener_quiet_while_idle(caplog, settings):
    settings.RUNNER_POLL_SECONDS = 3600
    service = RunnerService(concurrency=1)
    caplog.set_level(logging.INFO, logger="executions")
    await service.start_service()
    try:
        await asyncio.sleep(IDLE_RECEIVE_SECONDS)  # idle on purpose: nothing to wait for
    finally:
        await service.stop(grace_seconds=1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == []


def _group_members(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return client.zcard(f"faults:group:{publish.RUNNER_GROUP}")
    finally:
        client.close()


async def _wait_for(predicate, timeout: float, what: str):
    async with asyncio.timeout(timeout):
        while not await sync_to_async(predicate)():
            await asyncio.sleep(0.1)
    return True


async def _ring_until(predicate, what: str) -> None:
    """Ring the runners' group as creating an execution does, again until `predicate` holds.

    One ring proves nothing on a starved CPU: the product's ring is skipped when a send takes
    longer than CHANNEL_LAYER_SEND_TIMEOUT_SECONDS (a doorbell, lossy by design). Each ring
    still reaches the runner only through the group it must have re-joined."""
    layer = get_channel_layer()
    try:
        async with asyncio.timeout(NUDGE_SECONDS):
            while True:
                await layer.group_send(publish.RUNNER_GROUP, {"type": "runner.nudge"})
                for _ in range(20):  # the cadence of rings, not a bound
                    if await sync_to_async(predicate)():
                        return
                    await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out after {NUDGE_SECONDS} s waiting for {what}") from None


async def test_it_rejoins_the_nudge_group_after_each_redis_restart(actions, settings, caplog):
    settings.RUNNER_POLL_SECONDS = 3600  # only a nudge can make the runner claim
    with PrivateRedis() as private:
        _use_layer_at(settings, private.url)
        service = RunnerService(concurrency=2)
        await service.start_service()
        try:
            for round_ in range(RESTARTS):
                await sync_to_async(private.restart)()
                await _wait_for(lambda: _group_members(private.url) > 0, NUDGE_SECONDS, "join")
                execution = await sync_to_async(services.create_execution)(
                    actions["core.local"], {"cmd": f"echo round {round_}"}
                )
                await _ring_until(
                    lambda e=execution: Execution.objects.get(pk=e.id).status == S.SUCCEEDED,
                    f"round {round_} to run",
                )
                assert await sync_to_async(
                    lambda e=execution: list(
                        OutputChunk.objects.filter(execution_id=e.id).values_list("data", flat=True)
                    )
                )() == [f"round {round_}\n"]
        finally:
            await service.stop(grace_seconds=1)
    assert _tracebacks(caplog) == []


async def test_it_stores_all_output_while_redis_restarts(actions, settings, caplog):
    """Runners go on writing while the layer is away; the log is whole and in order."""
    with PrivateRedis() as private:
        _use_layer_at(settings, private.url)
        service = RunnerService(concurrency=1)
        await service.start_service()
        lines = 4000
        try:
            execution = await sync_to_async(services.create_execution)(
                actions["core.local"],
                {"cmd": f"i=0; while [ $i -lt {lines} ]; do i=$((i+1)); echo $i; done"},
            )
            for _ in range(RESTARTS):
                await sync_to_async(private.restart)()
            await _wait_for(
                lambda: Execution.objects.get(pk=execution.id).finished_at is not None,
                120,
                "the run to end",
            )
        finally:
            await service.stop(grace_seconds=1)
    done = await sync_to_async(Execution.objects.get)(pk=execution.id)
    data = await sync_to_async(
        lambda: list(
            OutputChunk.objects.filter(execution_id=execution.id)
            .order_by("seq")
            .values_list("seq", "data")
        )
    )()
    assert done.status == S.SUCCEEDED
    assert [d for _, d in data] == [f"{i}\n" for i in range(1, lines + 1)]
    assert [s for s, _ in data] == list(range(1, lines + 1))
    assert _tracebacks(caplog) == []
