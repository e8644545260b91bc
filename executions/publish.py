"""Channel-layer group names and messages: the doorbell side of the one rule.

Every message here is a hint. A consumer that misses one catches up from the database
(OutputChunk.seq for output, ExecutionEvent.id for lifecycle events).
"""

import asyncio
import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

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
    execution_id: str, first_seq: int, last_seq: int, chunks: list[dict[str, Any]] | None
) -> dict[str, Any]:
    return {
        "type": "output.batch",
        "execution_id": execution_id,
        "first_seq": first_seq,
        "last_seq": last_seq,
        "chunks": chunks,
    }


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


async def agroup_send(group: str, message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(group, message)
    except Exception:  # the layer is a doorbell: a failed ring must not fail the work
        log.warning("channel layer send to %s failed", group, exc_info=True)


_home_loop: asyncio.AbstractEventLoop | None = None


def set_home_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    """Route sync publishes from worker threads to `loop` (the server's or runner's loop).

    The in-memory layer's queues belong to one event loop, and channels-redis keeps its
    connections per loop: sending from the loop that owns them is both correct and cheap.
    """
    global _home_loop
    _home_loop = loop


def group_send(group: str, message: dict[str, Any]) -> None:
    """Send from sync code (services run in threads); never raises."""
    loop = _home_loop
    if loop is not None and loop.is_running():
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not loop:
            asyncio.run_coroutine_threadsafe(agroup_send(group, message), loop)
            return
    async_to_sync(agroup_send)(group, message)
