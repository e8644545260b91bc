"""Retention: delete old output (and, on request, old executions) in short batches.

Every batch is its own short transaction, so ingest and streaming go on between batches, and
on PostgreSQL every batch first locks the executions it works on with `FOR UPDATE SKIP
LOCKED`: two collectors running at once each take different executions, so they neither
delete the same rows twice nor wait on each other (no deadlock). The output rows of an
execution are only ever deleted by the transaction holding that execution's lock, so the
"is anything left?" check after a delete sees the truth and `output_purged_at` is set once.

Only executions in a finished status are ever touched, whatever their age or the cutoff.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from executions.models import Execution, ExecutionEvent, OutputChunk, Tenant
from executions.models.executions import FINISHED_STATUSES
from rbac.access import forget_execution_permissions

CHUNK_TABLE = OutputChunk._meta.db_table

DEFAULT_BATCH_SIZE = 10_000
# After each batch, rest this many times as long as the batch took: the purge then holds the
# database at most 1/(1+ratio) of the time, and live ingest keeps most of its rate (measured
# in bench/purge.py) while a retention pass still clears millions of rows a minute.
DEFAULT_PAUSE_RATIO = 1.0
# A batch locks at most this many executions: bounds the lock set (rows another collector
# must skip) and the id lists sent with each statement; executions of 50 lines or more still
# fill a default batch.
MAX_EXECUTIONS_PER_BATCH = 200


@dataclass(frozen=True)
class Criteria:
    """What a purge may touch. A cutoff of None switches that part off."""

    output_before: datetime | None = None
    executions_before: datetime | None = None
    tenant: Tenant | None = None
    action_ref: str | None = None

    @property
    def enabled(self) -> bool:
        return self.output_before is not None or self.executions_before is not None


@dataclass
class BatchResult:
    rows: int = 0  # output rows deleted
    purged: int = 0  # executions whose output is now all gone (output_purged_at set)
    deleted: int = 0  # whole executions deleted (workflow children included)
    locked: int = 0  # executions this batch held; 0 means nothing left it could take
    skipped: list[str] = field(default_factory=list)  # roots kept: a descendant is unfinished
    resume_at: datetime | None = None  # where the next output batch starts looking

    @property
    def progressed(self) -> bool:
        return bool(self.rows or self.purged or self.deleted or self.skipped)


@dataclass
class PassResult:
    rows: int = 0
    purged: int = 0
    deleted: int = 0
    batches: int = 0
    seconds: float = 0.0
    stopped: bool = False  # should_stop() ended the pass early
    events: int = 0  # lifecycle events pruned after the pass (prune_events)

    def add(self, batch: BatchResult) -> None:
        self.rows += batch.rows
        self.purged += batch.purged
        self.deleted += batch.deleted
        self.batches += 1

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Estimate:
    """What a pass would remove now (`--dry-run`)."""

    output_rows: int = 0
    output_executions: int = 0
    deleted_rows: int = 0
    deleted_executions: int = 0


# --- what is eligible -----------------------------------------------------------------------
def _finished(criteria: Criteria) -> QuerySet[Execution]:
    executions = Execution.objects.filter(status__in=FINISHED_STATUSES, finished_at__isnull=False)
    if criteria.tenant is not None:
        executions = executions.filter(tenant=criteria.tenant)
    if criteria.action_ref:
        executions = executions.filter(action_ref=criteria.action_ref)
    return executions


def output_scope(criteria: Criteria, since: datetime | None = None) -> QuerySet[Execution]:
    """Finished executions older than the output cutoff whose output is not purged yet."""
    if criteria.output_before is None:
        return Execution.objects.none()
    scope = _finished(criteria).filter(
        finished_at__lt=criteria.output_before, output_purged_at__isnull=True
    )
    if since is not None:
        scope = scope.filter(finished_at__gte=since)
    return scope


def deletable_roots(criteria: Criteria) -> QuerySet[Execution]:
    """Top-level executions older than the execution cutoff; children go with their root."""
    if criteria.executions_before is None:
        return Execution.objects.none()
    unfinished_child = Execution.objects.filter(parent=OuterRef("pk")).exclude(
        status__in=FINISHED_STATUSES
    )
    return (
        _finished(criteria)
        .filter(parent__isnull=True, finished_at__lt=criteria.executions_before)
        .exclude(Exists(unfinished_child))
    )


# --- the statements ---------------------------------------------------------------------------
# (id, finished_at, last_seq) of a locked execution; finished_at is never None here.
Locked = tuple[str, datetime | None, int]


def _lock(executions: QuerySet[Execution], limit: int) -> list[Locked]:
    """Up to `limit` of `executions`, oldest first, locked for this transaction.

    SKIP LOCKED: rows another collector holds are left to it rather than waited for.
    SQLite has no row locks; its IMMEDIATE transactions already run one writer at a time.
    """
    ordered = executions.order_by("finished_at", "pk")
    if connection.vendor == "postgresql":
        ordered = ordered.select_for_update(skip_locked=True)
    return list(ordered.values_list("pk", "finished_at", "last_seq")[:limit])


def _delete_chunks(executions: list[tuple[str, int]], limit: int) -> tuple[int, int]:
    """Delete at most `limit` output rows of these (id, last_seq) executions, in order.

    Each statement names only as many executions as their last_seq (an upper bound of what
    is left) says it takes to fill the batch: with a short list the planner reads the
    (execution, seq) index; with a long one it reads the whole table. Returns the rows
    deleted and how many executions, from the front, the statements named (the rest were
    not reached and still have their output).
    """
    deleted, start = 0, 0
    while deleted < limit and start < len(executions):
        end, expected = start, 0
        while end < len(executions) and expected < limit - deleted:
            expected += executions[end][1]
            end += 1
        deleted += _delete_some([pk for pk, _ in executions[start:end]], limit - deleted)
        start = end
    return deleted, start


def _delete_some(execution_ids: list[str], limit: int) -> int:
    if connection.vendor == "postgresql":
        # Raw: the ORM's `id IN (subquery)` gets a hash join over the whole table, while
        # `= ANY(ARRAY(subquery))` looks the picked ids up in the primary key.
        with connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {CHUNK_TABLE} WHERE id = ANY(ARRAY("
                f"SELECT id FROM {CHUNK_TABLE} WHERE execution_id = ANY(%s) LIMIT %s))",
                [execution_ids, limit],
            )
            return cursor.rowcount
    doomed = OutputChunk.objects.filter(execution_id__in=execution_ids).order_by()
    deleted, _ = OutputChunk.objects.filter(pk__in=doomed.values("pk")[:limit]).delete()
    return deleted


def _without_output(execution_ids: list[str]) -> list[str]:
    has_output = OutputChunk.objects.filter(execution_id=OuterRef("pk"))
    empty = Execution.objects.filter(pk__in=execution_ids).exclude(Exists(has_output))
    return list(empty.order_by().values_list("pk", flat=True))


def _mark_purged(execution_ids: list[str], now: datetime) -> tuple[set[str], int]:
    """Set output_purged_at on those of these (locked) executions that have no output left.

    Returns the ids found empty and how many this call marked (not those marked before).
    """
    emptied = _without_output(execution_ids)
    marked = Execution.objects.filter(pk__in=emptied, output_purged_at__isnull=True).update(
        output_purged_at=now
    )
    return set(emptied), marked


def _family(root_ids: list[str]) -> dict[str, list[tuple[str, str, int]]]:
    """Each root's descendants as (id, status, last_seq), level by level (workflows nest)."""
    family: dict[str, list[tuple[str, str, int]]] = {root: [] for root in root_ids}
    root_of = {root: root for root in root_ids}
    level = list(root_ids)
    while level:
        children = Execution.objects.filter(parent_id__in=level).order_by()
        rows = list(children.values_list("pk", "parent_id", "status", "last_seq"))
        for pk, parent_id, status, last_seq in rows:
            root_of[pk] = root_of[parent_id]
            family[root_of[pk]].append((pk, status, last_seq))
        level = [pk for pk, _, _, _ in rows]
    return family


def _lock_ids(execution_ids: list[str]) -> set[str]:
    if connection.vendor != "postgresql" or not execution_ids:
        return set(execution_ids)
    held = Execution.objects.filter(pk__in=execution_ids).order_by()
    held = held.select_for_update(skip_locked=True)
    return set(held.values_list("pk", flat=True))


def _delete_executions(execution_ids: list[str], root_ids: list[str]) -> int:
    """Delete these families: events, object permissions (generic ones too) and the rows."""
    ExecutionEvent.objects.filter(execution_id__in=execution_ids).delete()
    forget_execution_permissions(execution_ids)
    # The ORM cascade removes children and the direct-FK guardian rows with their root.
    _, per_model = Execution.objects.filter(pk__in=root_ids).delete()
    return per_model.get(Execution._meta.label, 0)


# --- one batch of each kind -------------------------------------------------------------------
def purge_output_batch(
    criteria: Criteria, batch_size: int, since: datetime | None = None
) -> BatchResult:
    """One transaction: delete up to `batch_size` output rows of eligible executions.

    `since` skips executions finished earlier (pass the previous batch's `resume_at`), so a
    pass does not walk again over the history it has already purged.
    """
    with transaction.atomic():
        locked = _lock(output_scope(criteria, since), min(batch_size, MAX_EXECUTIONS_PER_BATCH))
        if not locked:
            return BatchResult(resume_at=since)
        rows, reached = _delete_chunks([(pk, seq) for pk, _, seq in locked], batch_size)
        reached_ids = [pk for pk, _, _ in locked[:reached]]
        emptied, marked = _mark_purged(reached_ids, timezone.now())
    unfinished = [finished_at for pk, finished_at, _ in locked if pk not in emptied]
    resume_at = unfinished[0] if unfinished else locked[-1][1]
    return BatchResult(rows=rows, purged=marked, locked=len(locked), resume_at=resume_at)


def _families_to_delete(
    roots: list[Locked],
) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
    """Split locked roots into families ready to go ({root: [(id, last_seq)]}) and roots to
    skip for this pass (a descendant is not finished: the family stays whole)."""
    family = _family([pk for pk, _, _ in roots])
    held = _lock_ids([pk for members in family.values() for pk, _, _ in members])
    ready: dict[str, list[tuple[str, int]]] = {}
    skipped: list[str] = []
    for (root, _, last_seq), members in zip(roots, family.values(), strict=True):
        if any(status not in FINISHED_STATUSES for _, status, _ in members):
            skipped.append(root)
        elif all(pk in held for pk, _, _ in members):  # else another collector has one
            ready[root] = [(root, last_seq), *((pk, seq) for pk, _, seq in members)]
    return ready, skipped


def delete_executions_batch(
    criteria: Criteria, batch_size: int, skip: frozenset[str] = frozenset()
) -> BatchResult:
    """One transaction: delete up to `batch_size` output rows of whole old executions (and
    their workflow children), then delete those families that have no output left."""
    with transaction.atomic():
        roots = _lock(
            deletable_roots(criteria).exclude(pk__in=skip),
            min(batch_size, MAX_EXECUTIONS_PER_BATCH),
        )
        if not roots:
            return BatchResult()
        ready, skipped = _families_to_delete(roots)
        members = [member for family in ready.values() for member in family]
        rows, reached = _delete_chunks(members, batch_size)
        empty = set(_without_output([pk for pk, _ in members[:reached]]))
        done = [root for root, family in ready.items() if all(pk in empty for pk, _ in family)]
        done_ids = [pk for root in done for pk, _ in ready[root]]
        deleted = _delete_executions(done_ids, done) if done else 0
    return BatchResult(rows=rows, deleted=deleted, locked=len(roots), skipped=skipped)


# --- a whole pass ---------------------------------------------------------------------------
def run_pass(
    criteria: Criteria,
    batch_size: int = DEFAULT_BATCH_SIZE,
    *,
    on_batch: Callable[[BatchResult, PassResult], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    pause_ratio: float = 0.0,
    sleep: Callable[[float], object] = time.sleep,
) -> PassResult:
    """Run batches until nothing eligible is left (whole executions first, then output).

    After each batch the pass rests `pause_ratio` times as long as the batch took (through
    `sleep`, which may return early), so the database has time for live work; the rest
    grows by itself when the database is busy and batches slow down. `should_stop` is asked
    between batches, never during one. A pass ends when a whole round makes no progress:
    what is left is held by another collector, which will finish it.
    """
    started = time.monotonic()
    total = PassResult()
    skip: set[str] = set()

    def batches(step: Callable[[BatchResult | None], BatchResult]) -> bool:
        """Batches of one kind until one gets nowhere; whether any got somewhere."""
        previous = None
        while not should_stop():
            batch_started = time.monotonic()
            batch = step(previous)
            skip.update(batch.skipped)
            if not batch.progressed:
                return previous is not None
            previous = batch
            total.add(batch)
            total.seconds = time.monotonic() - started
            if on_batch is not None:
                on_batch(batch, total)
            if pause_ratio > 0:
                sleep((time.monotonic() - batch_started) * pause_ratio)
        total.stopped = True
        return False

    def delete_step(previous: BatchResult | None) -> BatchResult:
        return delete_executions_batch(criteria, batch_size, frozenset(skip))

    def purge_step(previous: BatchResult | None) -> BatchResult:
        return purge_output_batch(criteria, batch_size, previous.resume_at if previous else None)

    # Rounds repeat while they get somewhere: a family another collector held in one round
    # (it was purging a child's output) is free in the next.
    while not total.stopped:
        deleted = batches(delete_step)
        purged = not total.stopped and batches(purge_step)
        if not (deleted or purged):
            break
    total.seconds = time.monotonic() - started
    return total


def estimate(criteria: Criteria) -> Estimate:
    """Counts for `--dry-run`. Output of executions that would be deleted whole is counted
    with the deletion; the output count leaves out everything older than the execution
    cutoff, so it is exact unless a workflow family is kept whole (a child still runs)."""
    found = Estimate()
    scope = output_scope(criteria)
    if criteria.executions_before is not None:
        # The deletion runs first: executions it takes are not there for the output purge.
        scope = scope.exclude(finished_at__lt=criteria.executions_before)
        roots = deletable_roots(criteria).order_by("pk").values_list("pk", flat=True)
        after = ""
        while page := list(roots.filter(pk__gt=after)[:MAX_EXECUTIONS_PER_BATCH]):
            after = page[-1]
            ids = [
                pk
                for root, members in _family(page).items()
                if all(status in FINISHED_STATUSES for _, status, _ in members)
                for pk in (root, *(pk for pk, _, _ in members))
            ]
            found.deleted_executions += len(ids)
            found.deleted_rows += OutputChunk.objects.filter(execution_id__in=ids).count()
    found.output_executions = scope.count()
    found.output_rows = OutputChunk.objects.filter(execution__in=scope).count()
    return found


# --- the event log --------------------------------------------------------------------------
def prune_events(older_than_hours: int, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
    """Delete lifecycle events older than the global stream's retention, in short batches.

    A `Last-Event-ID` older than what is left gets an explicit `reset` from the stream.
    0 hours keeps every event.
    """
    if older_than_hours <= 0:
        return 0
    cutoff = timezone.now() - timedelta(hours=older_than_hours)
    total = 0
    while True:
        with transaction.atomic():
            ids = list(
                ExecutionEvent.objects.filter(created_at__lt=cutoff)
                .order_by("id")
                .values_list("id", flat=True)[:batch_size]
            )
            if not ids:
                return total
            total += ExecutionEvent.objects.filter(id__in=ids).delete()[0]
