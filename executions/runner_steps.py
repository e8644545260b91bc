"""The runner's database steps, each one call in the control thread: claim, cancel check, reap.

claim_scheduled    scheduled top-level executions → running (SKIP LOCKED on PostgreSQL)
canceling_among    which of this runner's executions were asked to cancel
reap_abandoned     running executions whose runner stopped heartbeating → abandoned,
                   with their unfinished workflow children; and children left queued
                   under a finished workflow (nothing would ever run them)
"""

from collections.abc import Sequence
from datetime import timedelta

from django.db import connection, transaction
from django.utils import timezone

from executions import services
from executions.models import Execution, ExecutionStatus

S = ExecutionStatus


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


def reap_abandoned(grace_seconds: float, alive: Sequence[str] = ()) -> list[str]:
    """Mark running executions whose runner stopped heartbeating as `abandoned`, with their
    unfinished workflow children; the ids. `alive`: executions known to be running (the
    caller's own), never reaped."""
    cutoff = timezone.now() - timedelta(seconds=grace_seconds)
    stale = (
        Execution.objects.filter(status__in=(S.RUNNING, S.CANCELING), heartbeat_at__lt=cutoff)
        .exclude(pk__in=alive)
        .values_list("pk", "runner_id", "heartbeat_at")
    )
    reaped = []
    for execution_id, runner_id, beat in list(stale):
        reason = f"runner {runner_id} stopped heartbeating (last at {beat:%Y-%m-%d %H:%M:%S} UTC)"
        if services.abandon(execution_id, reason, stale_before=cutoff):
            reaped.append(execution_id)
            reaped += services.abandon_children(
                execution_id, f"its workflow was abandoned: {reason}"
            )
    return reaped + reap_orphaned_children()


def reap_orphaned_children() -> list[str]:
    """Children left unfinished under a finished workflow (queued when its runner shut down or
    died, or stopped with it): nothing would ever run or finish them."""
    parents = (
        Execution.objects.filter(
            status__in=services.UNFINISHED,
            parent__isnull=False,
            parent__finished_at__isnull=False,
        )
        .values_list("parent_id", flat=True)
        .distinct()
    )
    reaped = []
    for parent_id in list(parents):
        reaped += services.abandon_children(parent_id, "its workflow ended before it did")
    return reaped
