"""Runner processes killed with SIGKILL: their runs end `abandoned` within the grace and no
process of theirs lives on.

    runner process (killed) ── keeper ── sh ── sleep 300 &      (tests/fault_helpers.py finds
    reaper (this test's RunnerService, claims nothing)           them by a marker in their
                                                                 environment, wherever they
                                                                 were re-parented)

The reaper starts only once the runner is dead: with a short grace, a reaper running beside a
live runner that a busy machine stalls for a few seconds would abandon a run that is alive.
"""

import asyncio
import contextlib
import os
import signal
import uuid

import pytest
from asgiref.sync import sync_to_async

from executions import services
from executions.models import Execution, ExecutionStatus, OutputChunk
from executions.runner_service import RunnerService
from tests.fault_helpers import kill_all, process_tree_pids
from tests.runner_helpers import register_pack, start_actionrunner

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.cluster, pytest.mark.faults]
S = ExecutionStatus
ROUNDS = 5
GRACE_SECONDS = 3
HEARTBEAT_SECONDS = 0.5
# Waiting on another process (start-up on a busy machine, the reaper's next step): a bound
# for a broken product only.
WAIT_SECONDS = 120
BACKGROUND = "sleep 300 & sleep 300 & echo started; wait"
WORKFLOW = """
tasks:
  - name: hang
    action: doomed.shell
    parameters: {cmd: '{{ cmd }}', env: '{{ env }}'}
  - name: never
    action: doomed.shell
    parameters: {cmd: 'echo never'}
"""


async def _until(predicate, what: str, timeout: float = WAIT_SECONDS):
    """Poll a state held by another process (a database row, a process list)."""
    try:
        async with asyncio.timeout(timeout):
            while not (value := await sync_to_async(predicate)()):
                await asyncio.sleep(0.1)
            return value
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


@pytest.fixture
def reaper(settings):
    """Starts a reaper (a RunnerService that claims nothing) when called; stopped at the end."""
    settings.RUNNER_ABANDON_GRACE_SECONDS = GRACE_SECONDS
    settings.RUNNER_HEARTBEAT_SECONDS = HEARTBEAT_SECONDS

    @contextlib.asynccontextmanager
    async def reaping():
        service = RunnerService(concurrency=1)
        service.stopping = True  # it only reaps, it claims nothing
        await service.start_service()
        try:
            yield service
        finally:
            await service.stop(grace_seconds=1)

    return reaping


def _doomed_runner():
    return start_actionrunner(
        RUNNER_ABANDON_GRACE_SECONDS=str(GRACE_SECONDS),
        RUNNER_HEARTBEAT_SECONDS=str(HEARTBEAT_SECONDS),
        RUNNER_POLL_SECONDS="0.2",
    )


def _has_output(execution_id: str) -> bool:
    return OutputChunk.objects.filter(execution_id=execution_id).exists()


def _status(execution_id: str) -> str:
    return Execution.objects.get(pk=execution_id).status


async def _kill_mid_run(create, marker: str, reaping) -> Execution:
    """Start a runner, let it start `create()`'s run, SIGKILL it; the run once abandoned."""
    runner = _doomed_runner()
    try:
        execution = await sync_to_async(create)()
        await _until(lambda: _has_output(execution.id) or any_child_output(execution), "output")
        # A workflow writes its own line before its task's processes exist: wait for them.
        await _until(lambda: len(process_tree_pids(marker)) >= 4, "keeper, sh, two sleeps")
        assert await sync_to_async(_status)(execution.id) == S.RUNNING
        runner.send_signal(signal.SIGKILL)
        await asyncio.to_thread(runner.wait, WAIT_SECONDS)
        await _until(lambda: not process_tree_pids(marker), "the action's processes to die")
        # Only now a reaper: nothing alive is left for it to misjudge.
        async with reaping():
            await _until(lambda: _status(execution.id) == S.ABANDONED, "abandoned")
    finally:
        if runner.poll() is None:
            runner.kill()
        kill_all(process_tree_pids(marker))
    return await Execution.objects.aget(pk=execution.id)


def any_child_output(execution: Execution) -> bool:
    return OutputChunk.objects.filter(execution__parent_id=execution.id).exists()


async def test_it_abandons_a_killed_runners_runs_and_leaves_no_orphans(actions, reaper):
    for round_ in range(ROUNDS):
        marker = f"fault-{os.getpid()}-{round_}-{uuid.uuid4().hex}"
        params = {"cmd": BACKGROUND, "env": {"TAILGATE_FAULT_MARK": marker}}
        done = await _kill_mid_run(
            lambda p=params: services.create_execution(actions["core.local"], p), marker, reaper
        )
        assert "stopped heartbeating" in done.error, round_
        assert process_tree_pids(marker) == []


async def test_it_abandons_a_killed_runners_workflow_with_its_child(actions, reaper, tmp_path):
    files = {
        "shell.yaml": "runner_type: local-shell-cmd\n"
        "parameters:\n  cmd: {type: string}\n  env: {type: object}\n",
        "flow.yaml": "runner_type: workflow\nentry_point: workflows/flow.yaml\n"
        "parameters:\n  cmd: {type: string}\n  env: {type: object}\n",
        "workflows/flow.yaml": WORKFLOW,
    }
    flow = (await register_pack(tmp_path, "doomed", files))["flow"]
    marker = f"fault-{os.getpid()}-flow-{uuid.uuid4().hex}"
    params = {"cmd": BACKGROUND, "env": {"TAILGATE_FAULT_MARK": marker}}
    done = await _kill_mid_run(lambda: services.create_execution(flow, params), marker, reaper)
    children = [c async for c in Execution.objects.filter(parent_id=done.id)]
    assert [c.task_name for c in children] == ["hang"]
    assert children[0].status == S.ABANDONED
    assert process_tree_pids(marker) == []
