from django.db import models

from executions.models.executions import Execution
from executions.models.tenants import Tenant


class ExecutionEvent(models.Model):
    """The durable lifecycle event log; its `id` is the global stream's `Last-Event-ID`.

    Rows are written in the same transaction as the change they describe, and published
    after commit. Kept for EVENT_RETENTION_HOURS; an older cursor gets a `reset` event.
    """

    CREATE = "execution__create"
    UPDATE = "execution__update"

    id = models.BigAutoField(primary_key=True)
    event = models.CharField(max_length=40)
    execution = models.ForeignKey(
        Execution, null=True, on_delete=models.SET_NULL, related_name="events", db_constraint=False
    )
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    # Metadata only (masked parameters, status, timestamps); never runner internals.
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.id} {self.event}"
