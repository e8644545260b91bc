from typing import Any

from django.conf import settings
from django.db import models
from ulid import ULID

from executions.models.actions import Action, RunnerType, mask_parameters
from executions.models.tenants import Tenant


def new_execution_id() -> str:
    return str(ULID())


class ExecutionStatus(models.TextChoices):
    REQUESTED = "requested"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELING = "canceling"
    CANCELED = "canceled"
    ABANDONED = "abandoned"


FINISHED_STATUSES = frozenset(
    {
        ExecutionStatus.SUCCEEDED,
        ExecutionStatus.FAILED,
        ExecutionStatus.TIMEOUT,
        ExecutionStatus.CANCELED,
        ExecutionStatus.ABANDONED,
    }
)


class Execution(models.Model):
    id = models.CharField(primary_key=True, max_length=26, default=new_execution_id, editable=False)
    action = models.ForeignKey(Action, null=True, on_delete=models.SET_NULL, related_name="+")
    # Frozen at creation: the action may be edited or removed later.
    action_ref = models.CharField(max_length=255)
    runner_type = models.CharField(max_length=32, choices=RunnerType.choices)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="executions")
    parameters = models.JSONField(default=dict, blank=True)
    # Names of the parameters that were secret when the execution was created.
    secret_parameters = models.JSONField(default=list, blank=True)
    status = models.CharField(
        max_length=16, choices=ExecutionStatus.choices, default=ExecutionStatus.REQUESTED
    )
    exit_code = models.IntegerField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    task_name = models.CharField(max_length=150, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    runner_id = models.CharField(max_length=100, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # The highest seq stored for this execution; the runner advances it with each batch.
    last_seq = models.BigIntegerField(default=0)
    output_purged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # Execution list, newest first, per tenant: `WHERE tenant_id IN … ORDER BY created_at`.
            models.Index(fields=["tenant", "-created_at"], name="exec_tenant_created"),
            # Status filter and the runner's claim: `WHERE status='scheduled' ORDER BY created_at`.
            models.Index(fields=["status", "created_at"], name="exec_status_created"),
            # Action filter: `WHERE action_ref=… ORDER BY created_at DESC`.
            models.Index(fields=["action_ref", "-created_at"], name="exec_action_created"),
            # Purge by execution age: `WHERE finished_at < cutoff` (with --executions).
            models.Index(fields=["finished_at"], name="exec_finished"),
            # Output purge: `WHERE finished_at < cutoff AND output_purged_at IS NULL`, without
            # walking the whole purged history first.
            models.Index(
                fields=["finished_at"],
                condition=models.Q(output_purged_at__isnull=True),
                name="exec_unpurged_finished",
            ),
            # Reaper: `WHERE status IN (running, canceling) AND heartbeat_at < …`.
            models.Index(fields=["status", "heartbeat_at"], name="exec_status_heartbeat"),
        ]

    def __str__(self) -> str:
        return f"{self.action_ref} {self.id}"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def masked_parameters(self) -> dict[str, Any]:
        return mask_parameters(self.parameters, self.secret_parameters)
