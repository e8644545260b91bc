"""The runner service: claiming, nudges, heartbeats, abandoned runs, graceful shutdown."""

import asyncio
import os
import re
import signal
import time

import pytest
from asgiref.sync import sync_to_async

from executions import services
from executions.models import Execution, ExecutionEvent, ExecutionStatus, OutputChunk
from executions.runner_service import RunnerService
from tests.runner_helpers import GroupListener, is_finished, start_actionrunner, wait_until

pytestmark = pytest.mark.django_db(transaction=True)
S = ExecutionStatus


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
            lambda: OutputChunk.objects.filter(execution=execution).exists(), 30, "first output"
        )
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
        killed_at = time.monotonic()
        # The action's process group outlived its runner; the test cleans it up.
        pgid = int(re.search(r"pgid=(\d+)", OutputChunk.objects.get(execution=execution).data)[1])
        os.killpg(pgid, signal.SIGKILL)
        survivor = start_actionrunner(
            RUNNER_HEARTBEAT_SECONDS="0.5", RUNNER_ABANDON_GRACE_SECONDS="3"
        )
        wait_until(
            lambda: Execution.objects.filter(pk=execution.pk, status=S.ABANDONED).exists(),
            30,
            "the execution to be abandoned",
        )
        elapsed = time.monotonic() - killed_at
    finally:
        _stop(doomed, signal.SIGKILL)
        if survivor:
            _stop(survivor)
    execution.refresh_from_db()
    assert "stopped heartbeating" in execution.error
    assert execution.finished_at is not None
    # Grace 3 s + one heartbeat period + process start-up: well under the 30 s wait.
    assert elapsed < 15


async def test_it_does_not_reap_a_busy_runner(actions, settings):
    settings.RUNNER_HEARTBEAT_SECONDS = 0.3
    settings.RUNNER_ABANDON_GRACE_SECONDS = 1.5
    busy = RunnerService(concurrency=1)
    reaper = RunnerService(concurrency=1)
    await busy.start_service()
    try:
        # Heavy output for ~4 s: far longer than the grace, with the writer always busy.
        cmd = "i=0; while [ $i -lt 8 ]; do seq 1 100000; sleep 0.5; i=$((i+1)); done"
        execution = await sync_to_async(services.create_execution)(
            actions["core.local"], {"cmd": cmd}
        )
        async with GroupListener(execution.id) as group:
            reaper.stopping = True  # it only reaps, it claims nothing
            await reaper.start_service()
            finished = await group.wait_for(is_finished, timeout=60)
        assert finished["payload"]["status"] == S.SUCCEEDED
        assert finished["payload"]["last_seq"] == 800_000
    finally:
        await reaper.stop(grace_seconds=1)
        await busy.stop(grace_seconds=5)


async def test_it_wakes_on_a_nudge_without_waiting_for_the_poll(actions, settings):
    settings.RUNNER_POLL_SECONDS = 60
    service = RunnerService(concurrency=1)
    await service.start_service()
    await service.claim_step()  # the first poll is behind us: only a nudge can wake it now
    try:
        execution = await sync_to_async(services.create_execution)(
            actions["core.local"], {"cmd": "echo quick"}
        )
        async with GroupListener(execution.id) as group:
            started = time.monotonic()
            finished = await group.wait_for(is_finished, timeout=30)
        assert finished["payload"]["status"] == S.SUCCEEDED
        assert time.monotonic() - started < 30
    finally:
        await service.stop(grace_seconds=1)


def test_it_lets_running_executions_finish_on_sigterm(actions):
    execution = services.create_execution(
        actions["core.local"], {"cmd": "echo started; sleep 2; echo finished"}
    )
    runner = start_actionrunner(RUNNER_SHUTDOWN_GRACE_SECONDS="20")
    try:
        wait_until(
            lambda: OutputChunk.objects.filter(execution=execution).exists(), 30, "first output"
        )
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(30) == 0
    finally:
        log = _stop(runner)
    execution.refresh_from_db()
    assert execution.status == S.SUCCEEDED, log
    assert list(OutputChunk.objects.filter(execution=execution).values_list("data", flat=True)) == [
        "started\n",
        "finished\n",
    ]


def test_it_abandons_what_outlives_the_shutdown_grace(actions):
    execution = services.create_execution(actions["core.local"], {"cmd": "echo x; sleep 300"})
    runner = start_actionrunner(RUNNER_SHUTDOWN_GRACE_SECONDS="1")
    try:
        wait_until(
            lambda: OutputChunk.objects.filter(execution=execution).exists(), 30, "first output"
        )
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(30) == 0
    finally:
        _stop(runner)
    execution.refresh_from_db()
    assert execution.status == S.ABANDONED
    assert "shut down before the execution finished" in execution.error


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
