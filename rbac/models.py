from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from executions.models import Action, Execution, Tenant


class Role(models.TextChoices):
    VIEWER = "viewer"  # sees the tenant's executions and their output
    OPERATOR = "operator"  # also runs actions, cancels and re-runs
    ADMIN = "admin"  # also grants access to others


class TenantGrant(models.Model):
    """Gives a user or a group a role on one tenant, or on all tenants (`tenant` empty = `*`)."""

    tenant = models.ForeignKey(
        Tenant,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="grants",
        help_text="empty means every tenant (*)",
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="tenant_grants",
    )
    group = models.ForeignKey(
        Group, null=True, blank=True, on_delete=models.CASCADE, related_name="tenant_grants"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(user__isnull=False, group__isnull=True)
                    | models.Q(user__isnull=True, group__isnull=False)
                ),
                name="grant_user_xor_group",
            ),
        ]

    def __str__(self) -> str:
        who = self.user or f"group {self.group}"
        return f"{who} → {self.tenant or '*'} ({self.role})"


# django-guardian with direct foreign keys: permission rows join on an indexed FK instead of
# a generic (content_type, object_pk text) pair, so a list filter is one indexed query.
class ExecutionUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(Execution, on_delete=models.CASCADE)


class ExecutionGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(Execution, on_delete=models.CASCADE)


class ActionUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(Action, on_delete=models.CASCADE)


class ActionGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(Action, on_delete=models.CASCADE)
