"""The runner service: claiming, nudges, heartbeats, abandoned runs, graceful shutdown."""

import asyncio
import itertools
import re
import signal
import threading
import time

import pytest
from asgiref.sync import sync_to_async

from executions import services, storage
from executions.models import Execution, ExecutionEvent, ExecutionStatus, OutputChunk
from executions.runner_service import SHUTDOWN_MESSAGE, RunnerService, reap_abandoned
from tests.runner_helpers import (
    GroupListener,
    finished_row,
    is_finished,
    start_actionrunner,
    wait_until,
)

pytestmark = pytest.mark.django_db(transaction=True)
S = ExecutionStatus
# A runner process's start, claim and first line: a failure bound only (30 s was not enough on
# a machine loaded twenty times over).
START = 120


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie has ended; whoever adopted it may not reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _create_many(action, count):
    return [services.create_execution(action, {"cmd": f"echo run {i}"}).id for i in range(count)]


def _all_finished(ids):
    return not Execution.objects.filter(pk__in=ids, finished_at__isnull=True).exists()


def _stop(process, sig=signal.SIGTERM, timeout=30):
    if process.poll() is None:
        process.send_signal(sig)
    try:
        process.wait(timeout)
    except Exception:
        process.kill()
        process.wait()
    return process.stdout.read()


def test_it_never_runs_an_execution_twice_with_two_runner_processes(actions):
    ids = _create_many(actions["core.local"], 60)
    runners = [start_actionrunner("--concurrency", "4") for _ in range(2)]
    try:
        wait_until(lambda: _all_finished(ids), 120, "60 executions to finish")
    finally:
        logs = [_stop(r) for r in runners]
    executions = Execution.objects.filter(pk__in=ids)
    assert set(executions.values_list("status", flat=True)) == {S.SUCCEEDED}
    for execution in executions:
        runs = ExecutionEvent.objects.filter(execution=execution, payload__status=S.RUNNING)
        assert runs.count() == 1, f"{execution.id} started {runs.count()} times"
        chunks = list(OutputChunk.objects.filter(execution=execution).values_list("seq", "data"))
        number = execution.parameters["cmd"].split()[-1]
        assert chunks == [(1, f"run {number}\n")]
    # Every claim was made by one of the two processes (each prints its runner id at start).
    announced = {re.search(r"actionrunner (\S+):", log)[1] for log in logs}
    assert len(announced) == 2
    assert set(executions.values_list("runner_id", flat=True)) <= announced, logs


def test_it_marks_the_executions_of_a_killed_runner_abandoned_within_the_grace(actions):
    execution = services.create_execution(actions["core.local"], {"cmd": "echo pgid=$$; sleep 300"})
    doomed = start_actionrunner("--concurrency", "1", RUNNER_HEARTBEAT_SECONDS="0.5")
    survivor = None
    try:
        wait_until(
            lambda: OutputChunk.objects.filter(execution=execution).exists(), START, "first output"
        )
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
        # The action's keeper kills the whole group when its runner dies (runners/keeper.py).
        pid = int(re.search(r"pgid=(\d+)", OutputChunk.objects.get(execution=execution).data)[1])
        wait_until(lambda: not _running(pid), START, "the action to die with its runner")
        survivor = start_actionrunner(
            RUNNER_HEARTBEAT_SECONDS="0.5", RUNNER_ABANDON_GRACE_SECONDS="3"
        )
        # Grace 3 s + one heartbeat period + start-up; the bound is only for a broken reaper
        # (how soon it reaps on a quiet machine is a benchmark's business, not this test's).
        wait_until(
            lambda: Execution.objects.filter(pk=execution.pk, status=S.ABANDONED).exists(),
            60,
            "the execution to be abandoned",
        )
    finally:
        _stop(doomed, signal.SIGKILL)
        if survivor:
            _stop(survivor)
    execution.refresh_from_db()
    assert "stopped heartbeating" in execution.error
    assert execution.finished_at is not None


async def test_it_keeps_beating_while_its_writer_is_stuck(actions, monkeypatch):
    # A busy or stuck writer must never make a live runner look dead: heartbeats go out on the
    # control thread, not behind the writes. The writer is held here, not merely kept busy, so
    # no timing decides the outcome: every beat seen while it is held came from the control
    # thread.
    entered, release = threading.Event(), threading.Event()
    store_batch = storage.store_batch
    calls = itertools.count()

    def held_store_batch(*args, **kwargs):
        if next(calls) == 1:  # the second batch: the first one is stored and has beaten
            entered.set()
            release.wait(120)
        return store_batch(*args, **kwargs)

    monkeypatch.setattr(storage, "store_batch", held_store_batch)
    busy = RunnerService(concurrency=1)
    await busy.start_service()
    try:
        execution = await sync_to_async(services.create_execution)(
            actions["core.local"], {"cmd": "seq 1 100000"}
        )
        await sync_to_async(wait_until)(entered.is_set, START, "the writer to be held")

        async def beat_after(previous):
            def later():
                row = Execution.objects.get(pk=execution.pk)
                return row.heartbeat_at if row.heartbeat_at > previous else None

            return await sync_to_async(wait_until)(later, START, f"a beat after {previous}")

        held_at = (await Execution.objects.aget(pk=execution.pk)).heartbeat_at
        first = await beat_after(held_at)
        await beat_after(first)  # issued after the hold began, whatever was in flight before
        assert not release.is_set()
        stored = await OutputChunk.objects.filter(execution=execution).acount()
        assert stored < 100_000  # the writer really was held all along
        release.set()
        finished = await finished_row(execution.id)
        assert finished.status == S.SUCCEEDED, finished.error
        assert finished.last_seq == 100_000
    finally:
        release.set()
        await busy.stop(grace_seconds=5)


def _stale_run(actions, runner_id="gone:1"):
    from django.utils import timezone

    execution = services.create_execution(actions["core.local"], {"cmd": "true"})
    Execution.objects.filter(pk=execution.pk).update(
        status=S.RUNNING,
        runner_id=runner_id,
        heartbeat_at=timezone.now() - timezone.timedelta(hours=1),
    )
    return execution


async def test_it_reaps_a_dead_runners_run_when_it_has_run_on_time(actions, settings):
    settings.RUNNER_ABANDON_GRACE_SECONDS = 30
    stale = await sync_to_async(_stale_run)(actions)
    reaper = RunnerService(concurrency=1)
    try:
        await reaper.heartbeat_step()
    finally:
        reaper.close()
    assert (await Execution.objects.aget(pk=stale.pk)).status == S.ABANDONED


@pytest.mark.parametrize("held_up", ["a late heartbeat step", "a slow database call"])
async def test_it_judges_no_heartbeat_right_after_it_was_held_up_itself(
    actions, settings, monkeypatch, held_up
):
    # This runner was held up (its process starved or paused, or its database stalled): the
    # runners it would judge most likely were too. Their runs are not theirs to lose.
    settings.RUNNER_ABANDON_GRACE_SECONDS = 30
    stale = await sync_to_async(_stale_run)(actions)
    reaper = RunnerService(concurrency=1)
    try:
        if held_up == "a late heartbeat step":
            reaper._next_beat_due = time.monotonic() - 10  # over a quarter of the grace late
        else:
            clock = [time.monotonic()]
            monkeypatch.setattr("executions.runner_service.time.monotonic", lambda: clock[0])

            def slow_claim(runner_id, free):
                clock[0] += 10  # this call took 10 s, as far as the runner can tell
                return []

            monkeypatch.setattr("executions.runner_service.claim_scheduled", slow_claim)
            await reaper.claim_step()
        await reaper.heartbeat_step()
        assert reaper.on_time_for() < settings.RUNNER_ABANDON_GRACE_SECONDS
        assert (await Execution.objects.aget(pk=stale.pk)).status == S.RUNNING
        # On time again for a whole grace (as if): it judges again.
        reaper._on_time_since -= settings.RUNNER_ABANDON_GRACE_SECONDS
        await reaper.heartbeat_step()
    finally:
        reaper.close()
    assert (await Execution.objects.aget(pk=stale.pk)).status == S.ABANDONED


async def test_it_never_reaps_its_own_runs_whatever_their_beats_say(actions, settings, monkeypatch):
    settings.RUNNER_ABANDON_GRACE_SECONDS = 30
    reaper = RunnerService(concurrency=1, runner_id="here:1")
    own = await sync_to_async(_stale_run)(actions, reaper.runner_id)
    # Its own run, its beat held up (by a stalled disk, say): it is running it, so it lives.
    reaper.running[own.id] = (None, None)  # type: ignore[assignment]
    monkeypatch.setattr(services, "heartbeat", lambda runner_id, ids: None)  # the beat held up
    try:
        await reaper.heartbeat_step()
    finally:
        reaper.running.clear()
        reaper.close()
    assert (await Execution.objects.aget(pk=own.pk)).status == S.RUNNING


async def test_it_claims_again_after_a_nudge_that_came_during_a_claim(settings, monkeypatch):
    settings.RUNNER_POLL_SECONDS = 3600  # only a nudge can start the second claim in time
    service = RunnerService(concurrency=1)
    claims: asyncio.Queue[int] = asyncio.Queue()
    count = itertools.count(1)

    async def claim_step():
        number = next(count)
        if number == 1:
            service._nudged.set()  # a nudge arrives while the first claim is running
        await claims.put(number)
        return []

    monkeypatch.setattr(service, "claim_step", claim_step)
    loop = asyncio.create_task(service._claim_loop())
    try:
        assert await asyncio.wait_for(claims.get(), 60) == 1
        assert await asyncio.wait_for(claims.get(), 60) == 2  # the nudge was kept
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        service.close()


async def test_it_wakes_on_a_nudge_without_waiting_for_the_poll(actions, settings):
    settings.RUNNER_POLL_SECONDS = 3600  # far beyond the wait below: only a nudge can do it
    service = RunnerService(concurrency=1)
    await service.start_service()
    await service.claim_step()  # the first poll is behind us: only a nudge can wake it now
    try:
        execution = await sync_to_async(services.create_execution)(
            actions["core.local"], {"cmd": "echo quick"}
        )
        async with GroupListener(execution.id) as group:
            finished = await group.wait_for(is_finished, timeout=60)
        assert finished["payload"]["status"] == S.SUCCEEDED
    finally:
        await service.stop(grace_seconds=1)


def _sigterm_once_running(execution, shutdown_grace: str) -> str:
    """Run `execution` in a runner process, SIGTERM it at the first output; the runner's log."""
    runner = start_actionrunner(RUNNER_SHUTDOWN_GRACE_SECONDS=shutdown_grace)
    try:
        wait_until(
            lambda: OutputChunk.objects.filter(execution=execution).exists(), START, "first output"
        )
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(60) == 0
    finally:
        log = _stop(runner)
    execution.refresh_from_db()
    return log


def test_it_lets_running_executions_finish_on_sigterm(actions):
    execution = services.create_execution(
        actions["core.local"], {"cmd": "echo started; sleep 2; echo finished"}
    )
    log = _sigterm_once_running(execution, shutdown_grace="20")
    assert execution.status == S.SUCCEEDED, log
    assert list(OutputChunk.objects.filter(execution=execution).values_list("data", flat=True)) == [
        "started\n",
        "finished\n",
    ]


def test_it_abandons_what_outlives_the_shutdown_grace(actions):
    execution = services.create_execution(actions["core.local"], {"cmd": "echo x; sleep 300"})
    _sigterm_once_running(execution, shutdown_grace="1")
    assert execution.status == S.ABANDONED
    assert "shut down before the execution finished" in execution.error
    lines = list(OutputChunk.objects.filter(execution=execution).values_list("data", flat=True))
    assert lines == ["x\n", f"tailgate: {SHUTDOWN_MESSAGE}\n"]


async def test_it_cancels_a_queued_execution_without_running_it(actions):
    execution = await sync_to_async(services.create_execution)(
        actions["core.local"], {"cmd": "echo never"}
    )
    done = await sync_to_async(services.cancel)(execution)
    assert done.status == S.CANCELED
    service = RunnerService(concurrency=1)
    try:
        assert await service.claim_step() == []
    finally:
        await asyncio.get_running_loop().run_in_executor(None, service.close)


def _workflow_with_children(actions, parent_status, child_statuses):
    from django.utils import timezone

    parent = services.create_execution(actions["examples.deploy"], {})
    children = [
        services.create_execution(actions["core.local"], {"cmd": "true"}, parent=parent)
        for _ in child_statuses
    ]
    stale = timezone.now() - timezone.timedelta(hours=1)
    Execution.objects.filter(pk=parent.pk).update(
        status=parent_status, runner_id="gone:1", heartbeat_at=stale
    )
    for child, status in zip(children, child_statuses, strict=True):
        Execution.objects.filter(pk=child.pk).update(
            status=status, runner_id="gone:1", heartbeat_at=stale
        )
    return parent, children


def test_it_abandons_a_dead_runners_workflow_with_its_unfinished_children(actions):
    parent, children = _workflow_with_children(actions, S.RUNNING, [S.RUNNING, S.SCHEDULED])
    reaped = reap_abandoned(grace_seconds=30)
    assert set(reaped) == {parent.id, *(c.id for c in children)}
    for execution in (parent, *children):
        execution.refresh_from_db()
        assert execution.status == S.ABANDONED, execution
        assert execution.finished_at is not None
    assert "its workflow was abandoned: runner gone:1" in children[1].error


def test_it_abandons_children_still_queued_under_a_finished_workflow(actions):
    parent, (child,) = _workflow_with_children(actions, S.RUNNING, [S.SCHEDULED])
    Execution.objects.filter(pk=parent.pk).update(status=S.ABANDONED, finished_at=parent.created_at)
    assert reap_abandoned(grace_seconds=30) == [child.id]
    child.refresh_from_db()
    assert (child.status, child.error) == (S.ABANDONED, "its workflow ended before it did")
    assert reap_abandoned(grace_seconds=30) == []  # once


def test_it_leaves_the_children_of_a_live_workflow_alone(actions):
    from django.utils import timezone

    parent, (child,) = _workflow_with_children(actions, S.RUNNING, [S.SCHEDULED])
    Execution.objects.filter(pk=parent.pk).update(heartbeat_at=timezone.now())
    assert reap_abandoned(grace_seconds=30) == []
    child.refresh_from_db()
    assert child.status == S.SCHEDULED


async def test_it_stops_the_action_and_fails_at_once_when_output_cannot_be_stored(actions):
    from django.utils import timezone

    execution = await sync_to_async(services.create_execution)(
        actions["core.local"], {"cmd": "echo one; sleep 300"}
    )
    # A row already holding seq 1: the first batch fails for good (not a passing outage).
    await OutputChunk.objects.acreate(
        execution=execution,
        seq=1,
        output_type="stdout",
        data="squatter\n",
        timestamp=timezone.now(),
    )
    service = RunnerService(concurrency=1)
    try:
        claimed = await service.control_db(services.claim, execution.id, service.runner_id)
        await service.control_db(lambda: claimed.action)
        async with asyncio.timeout(120):  # the action sleeps 300 s unless it is stopped
            done = await service.execute(claimed, asyncio.Event())
    finally:
        await asyncio.get_running_loop().run_in_executor(None, service.close)
    assert done.status == S.FAILED
    assert done.error.startswith("output could not be stored:")
    assert done.finished_at is not None


async def test_it_rings_each_stored_batch_with_its_tenant_and_seq_range(actions):
    service = RunnerService(concurrency=1)
    execution = await sync_to_async(services.create_execution)(
        actions["core.local"], {"cmd": "echo a; echo b"}
    )
    async with GroupListener(execution.id) as group:
        claimed = await service.control_db(services.claim, execution.id, service.runner_id)
        await service.control_db(lambda: claimed.action)
        try:
            await service.execute(claimed, asyncio.Event())
        finally:
            await asyncio.get_running_loop().run_in_executor(None, service.close)
        message = await group.wait_for(lambda m: m["type"] == "output.batch")
    assert message["execution_id"] == execution.id
    assert message["tenant_id"] == execution.tenant_id
    assert message["first_seq"] == 1
    assert [c["seq"] for c in message["chunks"]] == list(
        range(message["first_seq"], message["last_seq"] + 1)
    )
    assert message["chunks"][0]["data"] == "a\n"


def test_it_does_not_abandon_a_run_that_beat_after_it_was_found_stale(actions):
    from django.utils import timezone

    execution = services.create_execution(actions["core.local"], {"cmd": "true"})
    services.claim(execution.id, "busy:1")  # heartbeat_at = now
    found_stale_at = timezone.now() - timezone.timedelta(seconds=30)
    assert services.abandon(execution.id, "gone", stale_before=found_stale_at) is None
    assert Execution.objects.get(pk=execution.id).status == S.RUNNING
    assert services.abandon(execution.id, "gone", stale_before=timezone.now()) is not None


def test_it_counts_each_stored_batch_as_a_heartbeat(actions):
    from django.utils import timezone

    from executions import storage

    execution = services.create_execution(actions["core.local"], {"cmd": "true"})
    services.claim(execution.id, "busy:1")
    old = timezone.now() - timezone.timedelta(hours=1)
    Execution.objects.filter(pk=execution.id).update(heartbeat_at=old)
    storage.store_batch(execution.id, [(1, "stdout", "x\n", timezone.now())])
    assert Execution.objects.get(pk=execution.id).heartbeat_at > old


@pytest.fixture
def unreachable_layer(settings):
    from channels.layers import channel_layers

    from executions import publish
    from tests.server_helpers import free_port

    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{free_port()}/0"], "prefix": "gone"},
        }
    }
    channel_layers.backends.clear()
    publish.forget_layer_failures()
    settings.CHANNEL_LAYER_SEND_COOLDOWN_SECONDS = 2  # the production value (tests: 0)
    yield settings
    publish.forget_layer_failures()


async def test_it_rings_past_a_dead_layer_without_raising_and_logs_the_outage_once(
    unreachable_layer, caplog
):
    from executions import publish

    for i in range(5):
        await publish.agroup_send("somewhere", {"type": "x", "n": i})  # never raises
    failures = [r for r in caplog.records if "channel layer send" in r.getMessage()]
    assert len(failures) == 1 and not failures[0].exc_info
    assert "rings are skipped until it is back" in failures[0].getMessage()
    # The layer works again, but the cooldown holds: rings are skipped, not waited on ...
    layer = await _in_memory_layer(unreachable_layer)
    channel = await layer.new_channel()
    await layer.group_add("somewhere", channel)
    await publish.agroup_send("somewhere", {"type": "skipped"})
    assert channel not in layer.channels or layer.channels[channel].qsize() == 0
    # ... until it is over (forget_layer_failures ends it early): then they go through.
    publish.forget_layer_failures()
    await publish.agroup_send("somewhere", {"type": "rung"})
    assert (await layer.receive(channel))["type"] == "rung"


async def _in_memory_layer(settings):
    from channels.layers import channel_layers, get_channel_layer

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    channel_layers.backends.clear()
    return get_channel_layer()
