"""The runner service: claims scheduled executions and runs them on asyncio.

Used by `manage.py actionrunner` (cluster mode) and inside the daphne process by
`manage.py serve` (embedded mode). Each loop is one step function plus a sleep, so tests
can drive a single step.
"""

import asyncio
import contextlib
import logging
import os
import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections, connection, connections, transaction
from django.utils import timezone

from executions import publish, services, storage
from executions.capture import Batch, OutputSink
from executions.models import Execution, ExecutionStatus
from executions.runners import get_runner
from executions.runners.base import RunContext, RunOutcome, become_subreaper

log = logging.getLogger(__name__)
S = ExecutionStatus

# Output batches are written by this many threads at most (one database connection each);
# the control thread (claims, heartbeats, cancel checks) has its own so a busy writer can
# never delay a heartbeat into a false `abandoned`.
DATA_DB_THREADS = 4


def close_thread_connections(executor: ThreadPoolExecutor, threads: int) -> None:
    """Close the database connection of every thread of `executor`.

    Connections are per thread; a barrier makes each of the `threads` tasks land on its own
    thread, so none is left open (PostgreSQL would refuse to drop a test database otherwise).
    """
    barrier = threading.Barrier(threads)

    def close() -> None:
        connections.close_all()
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=5)

    for future in [executor.submit(close) for _ in range(threads)]:
        future.result()


def _db_call(fn, *args, **kwargs):
    close_old_connections()  # drops a connection past CONN_MAX_AGE or one that went bad
    return fn(*args, **kwargs)


def claim_scheduled(runner_id: str, limit: int) -> list[Execution]:
    """Claim up to `limit` scheduled executions, oldest first.

    On PostgreSQL the candidates are locked with SKIP LOCKED so runners do not queue on each
    other; everywhere the claim itself is a compare-and-set, so no two runners win one row.
    """
    claimed = []
    with transaction.atomic():
        candidates = Execution.objects.filter(status=S.SCHEDULED, parent__isnull=True)
        candidates = candidates.order_by("created_at")
        if connection.vendor == "postgresql":
            candidates = candidates.select_for_update(skip_locked=True)
        for execution_id in list(candidates.values_list("pk", flat=True)[:limit]):
            execution = services.claim(execution_id, runner_id)
            if execution is not None:
                claimed.append(execution)
    for execution in claimed:  # read the action now, not in the event loop
        _ = execution.action
    return claimed


def canceling_among(execution_ids: list[str]) -> list[str]:
    return list(
        Execution.objects.filter(pk__in=execution_ids, status=S.CANCELING).values_list(
            "pk", flat=True
        )
    )


def reap_abandoned(grace_seconds: float) -> list[str]:
    """Mark running executions whose runner stopped heartbeating as `abandoned`."""
    cutoff = timezone.now() - timedelta(seconds=grace_seconds)
    stale = Execution.objects.filter(
        status__in=(S.RUNNING, S.CANCELING), heartbeat_at__lt=cutoff
    ).values_list("pk", "runner_id", "heartbeat_at")
    reaped = []
    for execution_id, runner_id, beat in list(stale):
        reason = f"runner {runner_id} stopped heartbeating (last at {beat:%Y-%m-%d %H:%M:%S} UTC)"
        if services.abandon(execution_id, reason):
            reaped.append(execution_id)
    return reaped


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

    async def control_db(self, fn, *args, **kwargs) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._control, lambda: _db_call(fn, *args, **kwargs))

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
        if self.running:
            await self.control_db(services.heartbeat, self.runner_id, list(self.running))
        await self.control_db(reap_abandoned, settings.RUNNER_ABANDON_GRACE_SECONDS)

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
        task.add_done_callback(lambda _t: self._finished(execution.id))
        return task

    def _finished(self, execution_id: str) -> None:
        self.running.pop(execution_id, None)
        self._nudged.set()  # a slot is free

    def _writer(self, execution: Execution):
        groups = [
            publish.execution_group(execution.id),
            publish.tenant_output_group(execution.tenant_id),
        ]

        async def write(batch: Batch) -> None:
            await self.data_db(storage.store_batch, batch.execution_id, batch.rows)
            inline = (
                len(batch.rows) <= publish.MAX_INLINE_BATCH_LINES
                and batch.chars() <= publish.MAX_INLINE_BATCH_CHARS
            )
            chunks = (
                batch.as_messages(execution.action_ref, execution.runner_type) if inline else None
            )
            message = publish.output_batch_message(
                execution.id, batch.first_seq, batch.last_seq, chunks
            )
            message["tenant_id"] = execution.tenant_id
            for group in groups:
                await publish.agroup_send(group, message)

        return write

    async def execute(self, execution: Execution, canceled: asyncio.Event) -> Execution | None:
        """Run one claimed execution to its end and record the outcome."""
        sink = OutputSink(
            execution.id,
            self._writer(execution),
            secrets=execution.secret_values(),
            max_chunk_bytes=settings.MAX_CHUNK_BYTES,
            first_seq=execution.last_seq + 1,
        )
        writer = asyncio.create_task(sink.run())
        ctx = RunContext(execution, sink, canceled, run_child=self.run_child, db=self.control_db)
        try:
            outcome = await get_runner(execution.runner_type)(ctx)
        except asyncio.CancelledError:
            sink.close_streams()
            await writer
            raise
        except Exception as exc:
            log.exception("execution %s: runner error", execution.id)
            sink.add_text("stderr", f"tailgate: runner error: {exc}\n")
            outcome = RunOutcome(S.FAILED, error=f"runner error: {exc}")
        sink.close_streams()
        await writer
        secrets = execution.secret_values()
        return await self.control_db(
            services.finish,
            execution.id,
            outcome.status,
            exit_code=outcome.exit_code,
            result=services.mask_value(outcome.result, secrets),
            error=services.mask_value(outcome.error, secrets) or "",
        )

    async def run_child(self, child: Execution) -> Execution:
        """Run a workflow's child here (it holds no slot of its own: no deadlock)."""
        claimed = await self.control_db(services.claim, child.id, self.runner_id)
        if claimed is None:  # canceled before it started
            return await self.control_db(Execution.objects.get, pk=child.id)
        _ = await self.control_db(lambda: claimed.action)
        canceled = asyncio.Event()
        task = asyncio.create_task(self.execute(claimed, canceled))
        self.running[claimed.id] = (task, canceled)
        try:
            done = await task
        finally:
            self.running.pop(claimed.id, None)
        return done or await self.control_db(Execution.objects.get, pk=child.id)

    # --- the service ----------------------------------------------------------------------
    async def _every(self, seconds: float, step) -> None:
        while True:
            try:
                await step()
            except Exception:
                log.exception("runner step %s failed", step.__name__)
            await asyncio.sleep(seconds)

    async def _claim_loop(self) -> None:
        while not self.stopping:
            try:
                await self.claim_step()
            except Exception:
                log.exception("claim failed")
            self._nudged.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudged.wait(), settings.RUNNER_POLL_SECONDS)

    async def _listen_for_nudges(self) -> None:
        """Wake the claim loop when an execution is created (polling is the fallback)."""
        layer = get_channel_layer()
        if layer is None:
            return
        channel = await layer.new_channel()
        while True:
            try:
                await layer.group_add(publish.RUNNER_GROUP, channel)
                await asyncio.wait_for(layer.receive(channel), timeout=60)
                self._nudged.set()
            except TimeoutError:
                continue
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await layer.group_discard(publish.RUNNER_GROUP, channel)
                raise
            except Exception:
                log.warning("runner nudge channel failed; polling only", exc_info=True)
                await asyncio.sleep(settings.RUNNER_POLL_SECONDS)

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
            for execution_id in left:
                await self.control_db(
                    services.abandon,
                    execution_id,
                    f"runner {self.runner_id} shut down before the execution finished",
                )
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
