"""Who may see and do what: the one place every view, consumer and page asks.

An execution the caller may not see is reported exactly like a missing one (`NotVisible`,
answered 404), so existence never leaks.
"""

from django.db.models import Q, QuerySet

from executions.models import Action, Execution, Tenant
from rbac.models import (
    ExecutionGroupObjectPermission,
    ExecutionUserObjectPermission,
    Role,
    TenantGrant,
)

OPERATE_ROLES = (Role.OPERATOR, Role.ADMIN)


class NotVisible(Exception):
    """No such execution, or the caller may not see it (the same answer on purpose)."""


def _grants(user) -> QuerySet[TenantGrant]:
    return TenantGrant.objects.filter(Q(user=user) | Q(group__in=user.groups.all()))


def tenant_scope(user, roles: tuple[str, ...] | None = None) -> Q | None:
    """A Q over `tenant_id` for the tenants granted to `user`; None means all tenants."""
    grants = _grants(user)
    if roles:
        grants = grants.filter(role__in=roles)
    if grants.filter(tenant__isnull=True).exists():
        return None
    return Q(tenant_id__in=grants.values("tenant_id"))


def visible_executions(user) -> QuerySet[Execution]:
    """Every execution `user` may see, as one filtered query (no per-row checks)."""
    executions = Execution.objects.all()
    if not user.is_authenticated or not user.is_active:
        return executions.none()
    if user.is_superuser:
        return executions
    scope = tenant_scope(user)
    if scope is None:
        return executions
    granted = ExecutionUserObjectPermission.objects.filter(
        user=user, permission__codename="view_execution"
    ).values("content_object_id")
    granted_to_groups = ExecutionGroupObjectPermission.objects.filter(
        group__in=user.groups.all(), permission__codename="view_execution"
    ).values("content_object_id")
    direct = Q(pk__in=granted) | Q(pk__in=granted_to_groups)
    # A workflow's children inherit their parent's visibility.
    inherited = Q(parent_id__in=granted) | Q(parent_id__in=granted_to_groups)
    return executions.filter(scope | direct | inherited)


def access_execution(user, execution_id: str) -> Execution:
    """The execution if `user` may see it (`last` = the newest visible); else NotVisible."""
    executions = visible_executions(user).select_related("tenant", "action")
    try:
        if execution_id == "last":
            found = executions.order_by("-created_at", "-id").first()
            if found is None:
                raise NotVisible(execution_id)
            return found
        return executions.get(pk=execution_id)
    except (Execution.DoesNotExist, ValueError):
        raise NotVisible(execution_id) from None


def can_operate(user, execution: Execution) -> bool:
    """May `user` cancel or re-run `execution` (operator or admin on its tenant)?"""
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    scope = tenant_scope(user, OPERATE_ROLES)
    return scope is None or Execution.objects.filter(scope, pk=execution.pk).exists()


def can_run(user, action: Action, tenant: Tenant) -> bool:
    """May `user` run `action` in `tenant` (operator on the tenant, or execute_action on it)?"""
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    operating = _grants(user).filter(role__in=OPERATE_ROLES)
    if operating.filter(Q(tenant__isnull=True) | Q(tenant=tenant)).exists():
        return True
    return user.has_perm("executions.execute_action", action)
