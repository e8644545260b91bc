"""Every state change of an execution goes through here, and so does every publish.

Each change writes its ExecutionEvent row in the same transaction and rings the channel
layer only after commit, so a subscriber never hears of a row it cannot read.
"""

import logging
from typing import TYPE_CHECKING, Any

from django.db import connection, transaction
from django.utils import timezone

from executions import publish
from executions.masking import Masker, parameter_secrets
from executions.models import Action, Execution, ExecutionEvent, ExecutionStatus, Tenant
from executions.models.executions import FINISHED_STATUSES
from executions.parameters import ParameterError, validate_parameters

if TYPE_CHECKING:
    from executions.capture import Batch

log = logging.getLogger(__name__)

S = ExecutionStatus
CANCELABLE = (S.REQUESTED, S.SCHEDULED, S.RUNNING)


class ActionUnavailable(Exception):
    """The action does not exist or is disabled."""


class NotCancelable(Exception):
    """The execution already finished."""


def mask_value(value: Any, secrets: list[Any]) -> Any:
    """`value` (any JSON) with every secret hidden, walked so it stays valid JSON
    (executions/masking.py). `secrets` are secret values of any JSON type."""
    return Masker(secrets).value(value)


def execution_secrets(execution: Execution) -> list[Any]:
    """The execution's secret parameter values, typed as the run got them."""
    return parameter_secrets(execution.parameters, execution.secret_parameters)


def execution_payload(execution: Execution) -> dict[str, Any]:
    """What events and API answers say about an execution: metadata, secrets masked."""

    def stamp(value):
        return value.isoformat() if value else None

    return {
        "id": execution.id,
        "action_ref": execution.action_ref,
        "runner_type": execution.runner_type,
        "tenant": execution.tenant.slug,
        "status": execution.status,
        "exit_code": execution.exit_code,
        "result": mask_value(execution.result, execution_secrets(execution)),
        "error": mask_value(execution.error, execution_secrets(execution)) or "",
        "parameters": execution.masked_parameters(),
        "parent": execution.parent_id,
        "task_name": execution.task_name,
        "created_at": stamp(execution.created_at),
        "started_at": stamp(execution.started_at),
        "finished_at": stamp(execution.finished_at),
        "last_seq": execution.last_seq,
        "output_purged_at": stamp(execution.output_purged_at),
    }


# Event ids must commit in id order, or a `Last-Event-ID` resume could skip one that committed
# late: on PostgreSQL event writers take this transaction-scoped advisory lock (SQLite already
# has a single writer). Lifecycle transactions are short, so the queue is too.
EVENT_ORDER_LOCK = 0x7461696C  # "tail"


def _record_event(execution: Execution, event: str) -> None:
    """Write the event row now and publish it once the surrounding transaction commits."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [EVENT_ORDER_LOCK])
    payload = execution_payload(execution)
    row = ExecutionEvent.objects.create(
        event=event, execution=execution, tenant_id=execution.tenant_id, payload=payload
    )
    message = publish.event_message(row.id, event, payload, execution.tenant_id)

    def ring() -> None:
        publish.group_send(publish.tenant_events_group(execution.tenant_id), message)
        publish.group_send(publish.execution_group(execution.id), message)

    transaction.on_commit(ring)


def get_action(ref: str) -> Action:
    try:
        action = Action.objects.get(ref=ref)
    except Action.DoesNotExist:
        raise ActionUnavailable(f"action {ref!r} is not registered") from None
    if not action.enabled:
        raise ActionUnavailable(f"action {ref!r} is disabled")
    return action


def create_execution(
    action: Action,
    parameters: dict[str, Any] | None = None,
    *,
    tenant: Tenant | None = None,
    user=None,
    parent: Execution | None = None,
    task_name: str = "",
    secret_names: set[str] | frozenset[str] = frozenset(),
) -> Execution:
    """Validate the parameters and schedule a run; raises ParameterError or ActionUnavailable.

    `secret_names`: parameters to treat as secret besides those the action declares (a
    workflow task's parameters rendered from a secret of the workflow).
    """
    if not action.enabled:
        raise ActionUnavailable(f"action {action.ref!r} is disabled")
    cleaned = validate_parameters(action.parameters, parameters)
    if tenant is None:
        tenant = parent.tenant if parent else Tenant.default()
    with transaction.atomic():
        execution = Execution.objects.create(
            action=action,
            action_ref=action.ref,
            runner_type=action.runner_type,
            tenant=tenant,
            parameters=cleaned,
            secret_parameters=sorted(action.secret_parameter_names() | set(secret_names)),
            status=S.SCHEDULED,
            parent=parent,
            task_name=task_name,
            created_by=user if user is not None and user.is_authenticated else None,
        )
        _record_event(execution, ExecutionEvent.CREATE)
        transaction.on_commit(
            lambda: publish.group_send(publish.RUNNER_GROUP, {"type": "runner.nudge"})
        )
    return execution


def re_run(execution: Execution, *, user=None) -> Execution:
    """A new execution of the same action with the same parameters."""
    action = get_action(execution.action_ref)
    return create_execution(action, execution.parameters, tenant=execution.tenant, user=user)


def transition(
    execution_id: str,
    to: str,
    *,
    allowed_from: tuple[str, ...],
    where: dict[str, Any] | None = None,
    **fields: Any,
) -> Execution | None:
    """Move an execution to `to` if it is in one of `allowed_from` (and matches `where`);
    None when it was not.

    A compare-and-set UPDATE, so two processes racing on one execution cannot both win.
    """
    with transaction.atomic():
        candidates = Execution.objects.filter(pk=execution_id, status__in=allowed_from)
        changed = candidates.filter(**(where or {})).update(status=to, **fields)
        if not changed:
            return None
        execution = Execution.objects.select_related("tenant").get(pk=execution_id)
        _record_event(execution, ExecutionEvent.UPDATE)
    return execution


def claim(execution_id: str, runner_id: str) -> Execution | None:
    now = timezone.now()
    return transition(
        execution_id,
        S.RUNNING,
        allowed_from=(S.SCHEDULED,),
        runner_id=runner_id,
        started_at=now,
        heartbeat_at=now,
    )


def finish(
    execution_id: str,
    status: str,
    *,
    exit_code: int | None = None,
    result: Any = None,
    error: str = "",
) -> Execution | None:
    """Record the end of a run (any finished status)."""
    assert status in FINISHED_STATUSES, status
    return transition(
        execution_id,
        status,
        allowed_from=(S.REQUESTED, S.SCHEDULED, S.RUNNING, S.CANCELING),
        exit_code=exit_code,
        result=result,
        error=error,
        finished_at=timezone.now(),
    )


def cancel(execution: Execution) -> Execution:
    """Ask for a cancel: a queued execution ends at once, a running one goes `canceling`."""
    if execution.status in (S.REQUESTED, S.SCHEDULED):
        done = transition(
            execution.id,
            S.CANCELED,
            allowed_from=(S.REQUESTED, S.SCHEDULED),
            finished_at=timezone.now(),
        )
        if done:
            return done
        execution.refresh_from_db()
    if execution.status == S.RUNNING:
        done = transition(execution.id, S.CANCELING, allowed_from=(S.RUNNING,))
        if done:
            return done
        execution.refresh_from_db()
    if execution.status == S.CANCELING:
        return execution
    raise NotCancelable(f"execution {execution.id} already finished ({execution.status})")


async def publish_output(execution: Execution, batch: "Batch") -> None:
    """Ring the output groups for a batch the caller has committed (storage.store_batch).

    Awaited by the runner's writer before the next batch is written, so rings go out in seq
    order; a ring that fails is only logged (streams catch up from the log).
    """
    message = publish.stored_batch_message(execution, batch)
    for group in publish.output_groups(execution):
        await publish.agroup_send(group, message)


def advance_last_seq(execution_id: str, last_seq: int, *, beat: bool = False) -> None:
    """Move last_seq forward; `beat`: the runner storing output is alive, say so too (a busy
    writer must never look dead while its heartbeat waits behind its own writes)."""
    fields: dict[str, Any] = {"last_seq": last_seq}
    if beat:
        fields["heartbeat_at"] = timezone.now()
    Execution.objects.filter(pk=execution_id, last_seq__lt=last_seq).update(**fields)


def heartbeat(runner_id: str, execution_ids: list[str]) -> None:
    Execution.objects.filter(pk__in=execution_ids, runner_id=runner_id).update(
        heartbeat_at=timezone.now()
    )


def abandon(execution_id: str, reason: str, *, stale_before=None) -> Execution | None:
    """End a run whose runner is gone. `stale_before`: only if its heartbeat is still older
    than that when the update runs (the runner may have beaten since it was found stale)."""
    return transition(
        execution_id,
        S.ABANDONED,
        allowed_from=(S.RUNNING, S.CANCELING),
        where={"heartbeat_at__lt": stale_before} if stale_before else None,
        error=reason,
        finished_at=timezone.now(),
    )


# A workflow's unfinished children end with it: they run only inside their parent's runner
# (runners claim top-level executions only), so once it is gone nothing would ever run them.
UNFINISHED = (S.REQUESTED, S.SCHEDULED, S.RUNNING, S.CANCELING)


def abandon_children(parent_id: str, reason: str) -> list[str]:
    """Abandon every unfinished descendant of a finished workflow; their ids."""
    abandoned = []
    children = Execution.objects.filter(parent_id=parent_id, status__in=UNFINISHED)
    for child_id in list(children.values_list("pk", flat=True)):
        done = transition(
            child_id,
            S.ABANDONED,
            allowed_from=UNFINISHED,
            error=reason,
            finished_at=timezone.now(),
        )
        if done:
            abandoned.append(child_id)
        abandoned += abandon_children(child_id, reason)
    return abandoned


__all__ = [
    "ActionUnavailable",
    "NotCancelable",
    "ParameterError",
    "abandon",
    "abandon_children",
    "cancel",
    "claim",
    "create_execution",
    "execution_payload",
    "execution_secrets",
    "finish",
    "heartbeat",
    "mask_value",
    "publish_output",
    "re_run",
    "transition",
]
