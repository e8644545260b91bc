"""The runner service: claims scheduled executions and runs them on asyncio.

Used by `manage.py actionrunner` (cluster mode) and inside the daphne process by
`manage.py serve` (embedded mode). Each loop is one step function plus a sleep, so tests
can drive a single step (the steps' queries are in runner_steps.py).

One execution:

    execute ─▶ OutputSink.run (writer task) ──store_batch (data threads), publish_output──▶
            └▶ the runner coroutine (action task)
       whichever ends first decides: the action's outcome, or `failed` at once if the writer
       gave up (the action is stopped); then the writer drains and services.finish records
       the outcome, retried until the database takes it. Nothing ends without a record.
"""

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections

from executions import publish, services, storage
from executions.capture import Batch, OutputLost, OutputSink
from executions.db import close_thread_connections
from executions.masking import Masker
from executions.models import Execution, ExecutionStatus
from executions.runner_steps import canceling_among, claim_scheduled, reap_abandoned
from executions.runners import get_runner
from executions.runners.base import RunContext, RunOutcome
from executions.runners.processes import become_subreaper

log = logging.getLogger(__name__)
S = ExecutionStatus

# Output batches are written by this many threads at most (one database connection each);
# the control thread (claims, heartbeats, cancel checks) has its own so a busy writer can
# never delay a heartbeat into a false `abandoned`.
DATA_DB_THREADS = 4
# The nudge listener joins its group again at least this often: Redis may have restarted (and
# forgotten the membership) while the listener was idle. A join is one cheap Redis command.
NUDGE_REJOIN_SECONDS = 30
# While the layer is away the listener tries again this often (a refused connect is cheap), so
# live nudges are back within about this long of Redis returning.
NUDGE_RETRY_SECONDS = 1.0
# Recording an outcome is retried this often (doubling to the max) while the database is
# away: the action is over, only the database can end the wait.
RECORD_RETRY_FIRST_SECONDS = 0.2
RECORD_RETRY_MAX_SECONDS = 5.0
# A heartbeat step later than planned, or a control database call slower, than this share of the
# abandon grace means this process or the database was held up (a starved CPU, a paused VM, a
# stalled disk): the runners it would judge were most likely held up too, and their beats are
# late for the same reason. It judges none until it has run on time for a whole grace again.
HELD_UP_SHARE_OF_GRACE = 0.25
# On shutdown, what a canceled run still has pending gets this long to be stored.
SHUTDOWN_DRAIN_SECONDS = 10.0
# The last line of a run its runner stopped (SIGTERM past RUNNER_SHUTDOWN_GRACE_SECONDS).
SHUTDOWN_MESSAGE = "the runner shut down before the action finished; the action was stopped"
# The last line of a workflow's child stopped because its workflow ended first (its writer
# failed, or it was canceled from above).
STOPPED_MESSAGE = "the run was stopped because its workflow ended"


def _db_call(fn, *args, **kwargs):
    close_old_connections()  # drops a connection past CONN_MAX_AGE or one that went bad
    return fn(*args, **kwargs)


async def _drain_writer(writer: asyncio.Task, timeout: float) -> None:
    """Let the writer store what is pending, for at most `timeout` (shutdown must end)."""
    done, _ = await asyncio.wait({writer}, timeout=timeout)
    if not done:
        writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)


async def _drained(writer: asyncio.Task, outcome: RunOutcome) -> RunOutcome:
    """The outcome once the writer stored everything; `failed` if it could not."""
    try:
        await writer
    except OutputLost as exc:
        if outcome.error == str(exc):
            return outcome  # the action was stopped because of this very failure
        return RunOutcome(S.FAILED, outcome.exit_code, outcome.result, str(exc))
    except Exception as exc:
        log.exception("output writer failed")
        return RunOutcome(S.FAILED, outcome.exit_code, outcome.result, f"output writer: {exc}")
    return outcome


async def _guarded(step, failing: bool) -> bool:
    """Run one loop step; whether it failed. A database outage is logged in one line when it
    starts and one when it ends (it is expected); any other failure with its traceback."""
    try:
        await step()
    except Exception as exc:
        if not storage.is_transient(exc):
            log.exception("runner step %s failed", step.__name__)
        elif not failing:
            log.warning("runner step %s: database unavailable (%r)", step.__name__, exc)
        return True
    if failing:
        log.info("runner step %s works again", step.__name__)
    return False


class RunnerService:
    def __init__(self, concurrency: int | None = None, runner_id: str | None = None):
        self.concurrency = concurrency or settings.RUNNER_CONCURRENCY
        self.runner_id = runner_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.running: dict[str, tuple[asyncio.Task, asyncio.Event]] = {}
        self.stopping = False
        self._nudged = asyncio.Event()
        self._control = ThreadPoolExecutor(1, thread_name_prefix="tailgate-control")
        self._data = ThreadPoolExecutor(DATA_DB_THREADS, thread_name_prefix="tailgate-data")
        self._tasks: list[asyncio.Task] = []
        self._db_down = False
        # As if it had run on time for a whole grace: a fresh runner may reap at once.
        self._on_time_since = time.monotonic() - settings.RUNNER_ABANDON_GRACE_SECONDS
        self._next_beat_due: float | None = None

    async def control_db(self, fn, *args, **kwargs) -> Any:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            result = await loop.run_in_executor(
                self._control, lambda: _db_call(fn, *args, **kwargs)
            )
        except Exception as exc:
            if storage.is_transient(exc):
                self._db_down = True
            raise
        if self._db_down:
            self._db_down = False
            self._held_up("the database is back")
        elif time.monotonic() - started > self._held_up_seconds():
            self._held_up("a database call was slow")
        return result

    async def data_db(self, fn, *args, **kwargs) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._data, lambda: _db_call(fn, *args, **kwargs))

    # --- one step of each loop ----------------------------------------------------------
    async def claim_step(self) -> list[str]:
        free = self.concurrency - len(self.running)
        if free <= 0 or self.stopping:
            return []
        claimed = await self.control_db(claim_scheduled, self.runner_id, free)
        for execution in claimed:
            self.start(execution)
        return [e.id for e in claimed]

    async def heartbeat_step(self) -> None:
        grace = settings.RUNNER_ABANDON_GRACE_SECONDS
        now = time.monotonic()
        if self._next_beat_due is not None and now - self._next_beat_due > self._held_up_seconds():
            self._held_up("this process was held up")
        try:
            if self.running:
                await self.control_db(services.heartbeat, self.runner_id, list(self.running))
            if self.on_time_for() >= grace:
                # Its own runs are alive whatever their beats say: it is running them.
                await self.control_db(reap_abandoned, grace, list(self.running))
        finally:
            self._next_beat_due = time.monotonic() + settings.RUNNER_HEARTBEAT_SECONDS

    def on_time_for(self) -> float:
        """Seconds this runner has run on time: its database calls working and quick, its
        heartbeat steps when planned.

        A runner that was cut off from the database, or held up itself, must not judge others
        by their heartbeats at once: they were most likely cut off or held up too and have not
        had the chance to beat again.
        """
        return time.monotonic() - self._on_time_since

    def _held_up_seconds(self) -> float:
        return settings.RUNNER_ABANDON_GRACE_SECONDS * HELD_UP_SHARE_OF_GRACE

    def _held_up(self, why: str) -> None:
        if self.on_time_for() >= settings.RUNNER_ABANDON_GRACE_SECONDS:
            log.info("runner %s judges no heartbeats for a while: %s", self.runner_id, why)
        self._on_time_since = time.monotonic()

    async def cancel_step(self) -> None:
        if not self.running:
            return
        for execution_id in await self.control_db(canceling_among, list(self.running)):
            if execution_id in self.running:
                self.running[execution_id][1].set()

    # --- running one execution ------------------------------------------------------------
    def start(self, execution: Execution) -> asyncio.Task:
        canceled = asyncio.Event()
        task = asyncio.create_task(self.execute(execution, canceled), name=f"run {execution.id}")
        self.running[execution.id] = (task, canceled)
        task.add_done_callback(lambda t: self._finished(execution.id, t))
        return task

    def _finished(self, execution_id: str, task: asyncio.Task) -> None:
        self.running.pop(execution_id, None)
        self._nudged.set()  # a slot is free
        if not task.cancelled() and task.exception() is not None:
            # execute() records every outcome itself; this is a bug, said at once and loudly.
            log.error("execution %s: run failed", execution_id, exc_info=task.exception())

    def _writer(self, execution: Execution):
        async def write(batch: Batch) -> None:
            retry = batch.attempts > 0
            await self.data_db(storage.store_batch, batch.execution_id, batch.rows, retry=retry)
            await services.publish_output(execution, batch)

        return write

    async def execute(
        self, execution: Execution, canceled: asyncio.Event, inherited: Sequence[Any] = ()
    ) -> Execution | None:
        """Run one claimed execution to its end and record the outcome (always).

        `inherited`: secret values of the workflows above it, masked here too.
        """
        secrets = [*services.execution_secrets(execution), *inherited]
        sink = OutputSink(
            execution.id,
            self._writer(execution),
            secrets=secrets,
            max_chunk_bytes=settings.MAX_CHUNK_BYTES,
            first_seq=execution.last_seq + 1,
            outage_limit=settings.RUNNER_DB_OUTAGE_SECONDS,
            retryable=storage.is_transient,
        )
        writer = asyncio.create_task(sink.run(), name=f"write {execution.id}")
        ctx = RunContext(
            execution, sink, canceled, run_child=self.run_child, db=self.control_db, secrets=secrets
        )
        try:
            outcome = await self._run_action(ctx, writer)
        except asyncio.CancelledError:
            why = SHUTDOWN_MESSAGE if self.stopping else STOPPED_MESSAGE
            sink.add_text("stderr", f"tailgate: {why}\n")
            sink.close_streams()
            await _drain_writer(writer, SHUTDOWN_DRAIN_SECONDS)
            raise
        sink.close_streams()
        outcome = await _drained(writer, outcome)
        return await self._record(execution, outcome, Masker(secrets))

    async def _run_action(self, ctx: RunContext, writer: asyncio.Task) -> RunOutcome:
        """The runner's outcome, or `failed` at once if the writer fails first (it is watched
        alongside the action, so a lost database stops the action instead of hanging it)."""
        action: asyncio.Future[RunOutcome] = asyncio.ensure_future(
            get_runner(ctx.execution.runner_type)(ctx)
        )
        try:
            await asyncio.wait({action, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not action.done():
                action.cancel()
            await asyncio.gather(action, return_exceptions=True)
        if writer.done() and (writer.cancelled() or writer.exception() is not None):
            return RunOutcome(S.FAILED, error=ctx.sink.failure or "the output writer stopped")
        try:
            return action.result()
        except asyncio.CancelledError:
            return RunOutcome(S.FAILED, error="the runner stopped unexpectedly")
        except Exception as exc:
            log.exception("execution %s: runner error", ctx.execution.id)
            ctx.sink.add_text("stderr", f"tailgate: runner error: {exc}\n")
            return RunOutcome(S.FAILED, error=f"runner error: {exc}")

    async def _record(
        self, execution: Execution, outcome: RunOutcome, masker: Masker
    ) -> Execution | None:
        """services.finish, retried until the database takes it (it may be coming back)."""
        delay = RECORD_RETRY_FIRST_SECONDS
        while True:
            try:
                return await self.control_db(
                    services.finish,
                    execution.id,
                    outcome.status,
                    exit_code=outcome.exit_code,
                    result=masker.value(outcome.result),
                    error=masker.text(outcome.error or ""),
                )
            except Exception as exc:
                if not storage.is_transient(exc):
                    raise
                if delay == RECORD_RETRY_FIRST_SECONDS:
                    log.warning(
                        "execution %s: recording the outcome failed (%r); retrying until the "
                        "database takes it",
                        execution.id,
                        exc,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECORD_RETRY_MAX_SECONDS)

    async def run_child(self, child: Execution, inherited: Sequence[Any] = ()) -> Execution:
        """Run a workflow's child here (it holds no slot of its own: no deadlock).

        `inherited`: the workflow's secret values; the child masks them too."""
        claimed = await self.control_db(services.claim, child.id, self.runner_id)
        if claimed is None:  # canceled before it started
            return await self.control_db(Execution.objects.get, pk=child.id)
        _ = await self.control_db(lambda: claimed.action)
        canceled = asyncio.Event()
        task = asyncio.create_task(self.execute(claimed, canceled, list(inherited)))
        self.running[claimed.id] = (task, canceled)
        try:
            done = await task
        finally:
            self.running.pop(claimed.id, None)
        return done or await self.control_db(Execution.objects.get, pk=child.id)

    # --- the service ----------------------------------------------------------------------
    async def _every(self, seconds: float, step) -> None:
        failing = False
        while True:
            failing = await _guarded(step, failing)
            await asyncio.sleep(seconds)

    async def _claim_loop(self) -> None:
        failing = False
        while not self.stopping:
            # Cleared before the claim, not after: a nudge that comes while the claim runs
            # (after its query found nothing) must start another claim, not wait for the poll.
            self._nudged.clear()
            failing = await _guarded(self.claim_step, failing)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudged.wait(), settings.RUNNER_POLL_SECONDS)

    async def _listen_for_nudges(self) -> None:
        """Wake the claim loop when an execution is created (polling is the fallback).

        The group is joined again before every wait: a Redis that restarted between two
        receives forgot the membership without our connection noticing. A failing layer is
        logged once, in one line (it is an expected outage, not a bug), and again when back.
        """
        layer = get_channel_layer()
        if layer is None:
            return
        channel = await layer.new_channel()
        failing = False
        try:
            while True:
                try:
                    await layer.group_add(publish.RUNNER_GROUP, channel)
                    if failing:
                        log.info("runner nudge channel is back")
                        failing = False
                        self._nudged.set()  # claim what was created meanwhile
                    async with asyncio.timeout(NUDGE_REJOIN_SECONDS):
                        await layer.receive(channel)
                    self._nudged.set()
                except TimeoutError:  # our own re-join timer: the idle case
                    pass
                except Exception as exc:
                    if not failing:
                        log.warning("runner nudge channel failed (%r); polling only", exc)
                    failing = True
                    await asyncio.sleep(NUDGE_RETRY_SECONDS)
        finally:
            with contextlib.suppress(Exception):
                await layer.group_discard(publish.RUNNER_GROUP, channel)

    async def start_service(self) -> None:
        become_subreaper()
        publish.set_home_loop(asyncio.get_running_loop())
        self._tasks = [
            asyncio.create_task(self._claim_loop()),
            asyncio.create_task(self._listen_for_nudges()),
            asyncio.create_task(
                self._every(settings.RUNNER_HEARTBEAT_SECONDS, self.heartbeat_step)
            ),
            asyncio.create_task(
                self._every(min(1.0, settings.RUNNER_POLL_SECONDS), self.cancel_step)
            ),
        ]
        log.info("runner %s started (concurrency %d)", self.runner_id, self.concurrency)

    async def stop(self, grace_seconds: float | None = None) -> None:
        """Stop claiming, let running executions finish within the grace, abandon the rest."""
        grace = settings.RUNNER_SHUTDOWN_GRACE_SECONDS if grace_seconds is None else grace_seconds
        self.stopping = True
        self._nudged.set()
        tasks = [task for task, _ in self.running.values()]
        if tasks:
            log.info("waiting up to %.0f s for %d running executions", grace, len(tasks))
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            left = [eid for eid, (task, _) in list(self.running.items()) if task in pending]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            reason = f"runner {self.runner_id} shut down before the execution finished"
            for execution_id in left:
                await self.control_db(services.abandon, execution_id, reason)
                await self.control_db(services.abandon_children, execution_id, reason)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.close()

    def close(self) -> None:
        """Release the database threads and their connections."""
        close_thread_connections(self._control, 1)
        close_thread_connections(self._data, DATA_DB_THREADS)
        self._control.shutdown(wait=True)
        self._data.shutdown(wait=True)

    async def run_forever(self, stop: asyncio.Event) -> None:
        await self.start_service()
        await stop.wait()
        await self.stop()
