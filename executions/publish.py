"""Channel-layer group names and messages: the doorbell side of the one rule.

Every message here is a hint. A consumer that misses one catches up from the database
(OutputChunk.seq for output, ExecutionEvent.id for lifecycle events).
"""

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

if TYPE_CHECKING:
    from executions.capture import Batch
    from executions.models import Execution

log = logging.getLogger(__name__)

RUNNER_GROUP = "actionrunner"
# Above this many characters of output in one batch, the live message carries only the seq
# range and consumers read the chunks from the database: keeps layer messages small.
MAX_INLINE_BATCH_CHARS = 256 * 1024
# Likewise above this many lines: a batch that big only forms when output floods in faster
# than it is written, and then building and encoding thousands of chunk dicts per batch (per
# group) would slow ingest down, while the streams catch up from the database just as well.
MAX_INLINE_BATCH_LINES = 500


def execution_group(execution_id: str) -> str:
    return f"execution.{execution_id}"


def tenant_events_group(tenant_id: int) -> str:
    return f"events.tenant.{tenant_id}"


def tenant_output_group(tenant_id: int) -> str:
    return f"output.tenant.{tenant_id}"


def output_batch_message(
    execution_id: str,
    first_seq: int,
    last_seq: int,
    chunks: list[dict[str, Any]] | None,
    tenant_id: int | None = None,
) -> dict[str, Any]:
    """An "output.batch" ring: the seq range stored, and the chunks themselves when small."""
    return {
        "type": "output.batch",
        "execution_id": execution_id,
        "first_seq": first_seq,
        "last_seq": last_seq,
        "chunks": chunks,
        "tenant_id": tenant_id,
    }


def stored_batch_message(execution: "Execution", batch: "Batch") -> dict[str, Any]:
    """The ring for a batch the runner stored: chunks inline only below the inline bounds."""
    inline = len(batch.rows) <= MAX_INLINE_BATCH_LINES and batch.chars() <= MAX_INLINE_BATCH_CHARS
    chunks = batch.as_messages(execution.action_ref, execution.runner_type) if inline else None
    return output_batch_message(
        execution.id, batch.first_seq, batch.last_seq, chunks, execution.tenant_id
    )


def output_groups(execution: "Execution") -> list[str]:
    """Who hears of new output: the execution's own streams and its tenant's global streams."""
    return [execution_group(execution.id), tenant_output_group(execution.tenant_id)]


def event_message(
    event_id: int, event: str, payload: dict[str, Any], tenant_id: int
) -> dict[str, Any]:
    return {
        "type": "execution.event",
        "id": event_id,
        "event": event,
        "payload": payload,
        "tenant_id": tenant_id,
    }


# A ring is worth little once late (streams re-check the log on their own), so a send waits
# CHANNEL_LAYER_SEND_TIMEOUT_SECONDS at most: redis-py retries a refused connection for
# seconds, and the runner's writer must go on storing output while Redis is down. After a
# failed send, sends are skipped for CHANNEL_LAYER_SEND_COOLDOWN_SECONDS instead of each waiting
# out the timeout: an outage costs the writer one timeout per cooldown, not one per batch.


class _LayerHealth:
    """Whether the layer failed lately; logs an outage once when it starts and once at its end."""

    def __init__(self) -> None:
        self.failed_at: float | None = None

    def cooling_down(self, now: float) -> bool:
        cooldown = settings.CHANNEL_LAYER_SEND_COOLDOWN_SECONDS
        return self.failed_at is not None and now - self.failed_at < cooldown

    def failed(self, now: float, group: str, exc: BaseException) -> None:
        if self.failed_at is None:
            log.warning(
                "channel layer send to %s failed (%r); rings are skipped until it is back",
                group,
                exc,
            )
        self.failed_at = now

    def succeeded(self) -> None:
        if self.failed_at is not None:
            log.info("channel layer sends work again")
        self.failed_at = None


_health = _LayerHealth()


def forget_layer_failures() -> None:
    """Ring again at once, cooldown or not (after the layer was reconfigured; tests)."""
    _health.failed_at = None


async def agroup_send(group: str, message: dict[str, Any]) -> None:
    """Ring `group`; never raises (the layer is a doorbell: a failed ring must not fail work)."""
    layer = get_channel_layer()
    if layer is None:
        return
    now = time.monotonic()
    if _health.cooling_down(now):
        return
    try:
        async with asyncio.timeout(settings.CHANNEL_LAYER_SEND_TIMEOUT_SECONDS):
            await layer.group_send(group, message)
    except Exception as exc:  # TimeoutError included
        _health.failed(time.monotonic(), group, exc)
    else:
        _health.succeeded()


_home_loop: asyncio.AbstractEventLoop | None = None


def set_home_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    """Route sync publishes from worker threads to `loop` (the server's or runner's loop).

    The in-memory layer's queues belong to one event loop, and channels-redis keeps its
    connections per loop: sending from the loop that owns them is both correct and cheap.
    """
    global _home_loop
    _home_loop = loop


def group_send(group: str, message: dict[str, Any]) -> None:
    """Send from sync code (services run in threads); never raises. Rings to one group leave
    in the order of the calls (a lifecycle `running` must not overtake its `scheduled`)."""
    loop = _home_loop
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is not None and loop.is_running() and running is not loop:
        # call_soon_threadsafe keeps the callers' order; a coroutine per call would not.
        loop.call_soon_threadsafe(_send_in_order, group, message)
        return
    if running is not None:
        # Sync code on a thread whose own loop is running (async_to_sync cannot work there).
        _send_in_order(group, message)
        return
    async_to_sync(agroup_send)(group, message)


# The newest send scheduled per (loop, group): each send waits for the one before it. Two
# concurrent layer.group_send calls take separate Redis connections and can land either way
# round. Entries leave when their send is done; the tasks are referenced here until then.
_tails: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Task] = {}


def _send_in_order(group: str, message: dict[str, Any]) -> None:
    """On the loop: schedule the ring after the group's previous one."""
    loop = asyncio.get_running_loop()
    key = (loop, group)
    task = loop.create_task(_after(_tails.get(key), group, message))
    _tails[key] = task

    def forget(done: asyncio.Task) -> None:
        if _tails.get(key) is done:
            del _tails[key]

    task.add_done_callback(forget)


async def _after(previous: asyncio.Task | None, group: str, message: dict[str, Any]) -> None:
    if previous is not None:
        await asyncio.wait([previous])  # agroup_send never raises; wait() would not either
    await agroup_send(group, message)
