"""The log side of every stream: plain synchronous reads, run in the stream pool (`run_db`).

Output is read by `seq` from OutputChunk, lifecycle events by `id` from ExecutionEvent, one
page at a time, so a 50,000-chunk replay never sits in memory at once.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Max
from django.utils import timezone

from executions.models import Execution, ExecutionEvent, OutputChunk, Tenant
from executions.models.executions import FINISHED_STATUSES

# Rows per replay or backfill read: big enough to amortise the query, small enough to bound
# a stream's memory and the time one read holds a pool thread.
PAGE_ROWS = 1000


@dataclass(frozen=True)
class OutputState:
    """What a stream needs to know about an execution, read fresh from its row."""

    execution_id: str
    tenant_id: int
    status: str
    exit_code: int | None
    last_seq: int
    output_purged_at: datetime | None
    action_ref: str
    runner_ref: str

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    def done_data(self) -> dict[str, Any]:
        """The `done` event: the log's true last seq and how the execution ended."""
        data: dict[str, Any] = {
            "final_seq": self.last_seq,
            "status": self.status,
            "exit_code": self.exit_code,
        }
        if self.output_purged_at is not None:
            data["output_purged_at"] = self.output_purged_at.isoformat()
        return data


_STATE_FIELDS = (
    "id",
    "tenant_id",
    "status",
    "exit_code",
    "last_seq",
    "output_purged_at",
    "action_ref",
    "runner_type",
)


def output_state(execution_id: str) -> OutputState | None:
    """The execution's current state; None when it no longer exists."""
    row = Execution.objects.filter(pk=execution_id).values_list(*_STATE_FIELDS).first()
    return None if row is None else OutputState(*row)


def output_states(execution_ids: frozenset[str]) -> dict[str, OutputState]:
    """The current state of each execution that still exists, in one query."""
    rows = Execution.objects.filter(pk__in=execution_ids).values_list(*_STATE_FIELDS)
    return {row[0]: OutputState(*row) for row in rows}


def chunk_payload(
    state: OutputState, seq: int, output_type: str, data: str, timestamp: datetime
) -> dict[str, Any]:
    """A chunk as events carry it: the same fields as the runner's live messages."""
    return {
        "seq": seq,
        "execution_id": state.execution_id,
        "output_type": output_type,
        "data": data,
        "timestamp": timestamp.isoformat(),
        "action_ref": state.action_ref,
        # The runner names itself by its type in live messages; replay says the same.
        "runner_ref": state.runner_ref,
    }


def read_chunks(
    state: OutputState, after: int, upto: int, output_type: str | None
) -> list[dict[str, Any]]:
    """One page of chunks with `after < seq <= upto`, in seq order (one type, if given)."""
    chunks = OutputChunk.objects.filter(
        execution_id=state.execution_id, seq__gt=after, seq__lte=upto
    )
    if output_type:
        chunks = chunks.filter(output_type=output_type)
    rows = chunks.order_by("seq").values_list("seq", "output_type", "data", "timestamp")
    return [chunk_payload(state, *row) for row in rows[:PAGE_ROWS]]


# --- lifecycle events -----------------------------------------------------------------------


@dataclass(frozen=True)
class EventRow:
    id: int
    event: str
    tenant_id: int
    payload: dict[str, Any]


def latest_event_id() -> int:
    return ExecutionEvent.objects.aggregate(latest=Max("id"))["latest"] or 0


def earliest_event_id() -> int:
    """The first id `Last-Event-ID` can resume from: the oldest event within retention.

    With no event inside the retention window, the next id to come.
    """
    cutoff = timezone.now() - timedelta(hours=settings.EVENT_RETENTION_HOURS)
    kept = ExecutionEvent.objects.filter(created_at__gte=cutoff).order_by("id")
    earliest = kept.values_list("id", flat=True).first()
    return earliest if earliest is not None else latest_event_id() + 1


def _events_after(after: int, tenant_ids: frozenset[int] | None):
    events = ExecutionEvent.objects.filter(id__gt=after)
    if tenant_ids is not None:
        events = events.filter(tenant_id__in=tenant_ids)
    return events


def read_events(after: int, tenant_ids: frozenset[int] | None) -> list[EventRow]:
    """One page of events with `id > after` in these tenants (None: all), in id order."""
    rows = (
        _events_after(after, tenant_ids)
        .order_by("id")
        .values_list("id", "event", "tenant_id", "payload")
    )
    return [EventRow(*row) for row in rows[:PAGE_ROWS]]


def events_after_exist(after: int, tenant_ids: frozenset[int] | None) -> bool:
    """Is there an event past `after` in these tenants? (An index range probe: cheap.)"""
    return _events_after(after, tenant_ids).exists()


def tenant_slugs() -> dict[int, str]:
    return dict(Tenant.objects.values_list("id", "slug"))


def execution_meta(execution_id: str) -> tuple[str, str | None] | None:
    """(action_ref, parent_id) of an execution, for filtering its output; None if gone."""
    return Execution.objects.filter(pk=execution_id).values_list("action_ref", "parent_id").first()
