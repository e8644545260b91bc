"""Who may see and do what: the one place every view, consumer, page and admin asks.

An execution the caller may not see is reported exactly like a missing one (`NotVisible`,
answered 404), so existence never leaks. Every filter here is one SQL query built from
subqueries on the user's id, so a list of any length costs the same, and open streams can
re-check cheaply (`still_allowed`, `stream_scope`) to make revocation live.
"""

import logging
from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.db.models.expressions import RawSQL

from executions.models import Action, Execution, Tenant
from rbac.models import (
    ActionGroupObjectPermission,
    ActionUserObjectPermission,
    ApiKey,
    ExecutionGroupObjectPermission,
    ExecutionUserObjectPermission,
    Role,
    TenantGrant,
)

log = logging.getLogger(__name__)

OPERATE_ROLES = (Role.OPERATOR, Role.ADMIN)
GRANT_ROLES = (Role.ADMIN,)
EXECUTION_VIEW = "view_execution"
ACTION_EXECUTE = "execute_action"
# A stream keeps the ids of single executions granted to its caller (and their workflow
# children) in memory; a caller granted more than this many should get a tenant grant.
STREAM_SCOPE_MAX_EXECUTIONS = 50_000
# Set on a user object authenticated by an API key (see `bind_api_key`).
API_KEY_ATTRIBUTE = "rbac_api_key_id"


class NotVisible(Exception):
    """No such execution, or the caller may not see it (the same answer on purpose)."""


def _is_active_user(user) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active)


def _group_ids(user_id: int) -> QuerySet:
    return get_user_model().groups.through.objects.filter(user_id=user_id).values("group_id")


def _grants(user_id: int, roles: tuple[str, ...] | None = None) -> QuerySet[TenantGrant]:
    grants = TenantGrant.objects.filter(Q(user_id=user_id) | Q(group_id__in=_group_ids(user_id)))
    return grants.filter(role__in=roles) if roles else grants


def tenant_scope(user, roles: tuple[str, ...] | None = None) -> Q | None:
    """A Q over `tenant_id` for the tenants granted to `user`; None means all tenants."""
    grants = _grants(user.pk, roles)
    if grants.filter(tenant__isnull=True).exists():
        return None
    return Q(tenant_id__in=grants.values("tenant_id"))


def _granted_tree_sql(user_id: int) -> RawSQL:
    """Ids of the executions granted to the user or their groups, and all their descendants.

    A recursive CTE, so a workflow's children, grandchildren and so on inherit a grant on
    the workflow, at any depth, still inside one query (SQLite and PostgreSQL both run it).
    """
    granted_to_user = ExecutionUserObjectPermission.objects.filter(
        user_id=user_id, permission__codename=EXECUTION_VIEW
    ).values("content_object_id")
    granted_to_groups = ExecutionGroupObjectPermission.objects.filter(
        group_id__in=_group_ids(user_id), permission__codename=EXECUTION_VIEW
    ).values("content_object_id")
    # Roots straight from the permission tables (indexed by user / group), so the planner
    # starts from the few granted rows instead of scanning executions.
    roots_sql, params = granted_to_user.union(granted_to_groups).query.sql_with_params()
    q = connection.ops.quote_name
    table = q(Execution._meta.db_table)
    sql = (
        f"WITH RECURSIVE granted_tree(id) AS ("
        f"SELECT roots.{q('content_object_id')} FROM ({roots_sql}) roots "
        f"UNION SELECT child.{q('id')} FROM {table} child "
        f"JOIN granted_tree ON child.{q('parent_id')} = granted_tree.id) "
        f"SELECT id FROM granted_tree"
    )
    return RawSQL(sql, params)


def _visible_q(user_id: int) -> Q:
    """Executions visible through grants and object permissions (not superuser status)."""
    grants = _grants(user_id)
    return (
        Q(Exists(grants.filter(tenant__isnull=True)))
        | Q(tenant_id__in=grants.values("tenant_id"))
        | Q(pk__in=_granted_tree_sql(user_id))
    )


def bind_api_key(user, api_key) -> None:
    """Mark `user` as authenticated by `api_key` (the middleware and DRF do).

    Every visibility check then re-validates the key and the user's status in the same
    query, so a long-lived connection holding this user object (a WebSocket) cannot open
    anything new once the key is revoked or the user deactivated.
    """
    setattr(user, API_KEY_ATTRIBUTE, api_key.pk)


def _api_key_id(user, api_key=None) -> int | None:
    return api_key.pk if api_key is not None else getattr(user, API_KEY_ATTRIBUTE, None)


def visible_executions(user) -> QuerySet[Execution]:
    """Every execution `user` may see, as one filtered query (no per-row checks).

    The user's status (active, superuser) and their API key are read fresh in that query,
    not taken from the (possibly long-lived) user object.
    """
    executions = Execution.objects.all()
    if not _is_active_user(user):
        return executions.none()
    principal = _principal(user.pk, _api_key_id(user))
    granted = Q(Exists(principal)) & _visible_q(user.pk)
    if user.is_superuser:
        return executions.filter(Q(Exists(principal.filter(is_superuser=True))) | granted)
    return executions.filter(granted)


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


def _has_tenant_role(user, tenant_id: int, roles: tuple[str, ...]) -> bool:
    return _grants(user.pk, roles).filter(Q(tenant__isnull=True) | Q(tenant_id=tenant_id)).exists()


def can_operate(user, execution: Execution) -> bool:
    """May `user` cancel or re-run `execution` (operator or admin on its tenant)?"""
    if not _is_active_user(user):
        return False
    return user.is_superuser or _has_tenant_role(user, execution.tenant_id, OPERATE_ROLES)


def can_grant(user, tenant: Tenant | None) -> bool:
    """May `user` give others access to `tenant` (None: to every tenant, `*`)?"""
    if not _is_active_user(user):
        return False
    if user.is_superuser:
        return True
    grants = _grants(user.pk, GRANT_ROLES)
    if tenant is None:
        return grants.filter(tenant__isnull=True).exists()
    return grants.filter(Q(tenant__isnull=True) | Q(tenant_id=tenant.pk)).exists()


def visible_tenants(user) -> QuerySet[Tenant]:
    """The tenants `user` sees anything in (a grant, or a granted execution), one query.

    Answer a tenant outside this set like a missing one (404), as for executions.
    """
    if not _is_active_user(user):
        return Tenant.objects.none()
    if user.is_superuser:
        return Tenant.objects.all()
    grants = _grants(user.pk)
    granted_executions = Execution.objects.filter(pk__in=_granted_tree_sql(user.pk))
    return Tenant.objects.filter(
        Q(Exists(grants.filter(tenant__isnull=True)))
        | Q(pk__in=grants.values("tenant_id"))
        | Q(pk__in=granted_executions.values("tenant_id"))
    )


def granted_tenants(user) -> QuerySet[Tenant] | None:
    """The tenants `user` sees anything in; None means every tenant (a superuser, or a grant
    on every tenant): a list then needs no tenant filter."""
    if user.is_superuser or tenant_scope(user) is None:
        return None
    return visible_tenants(user)


def granting_tenants(user) -> QuerySet[Tenant]:
    """The tenants `user` may give others access to (admin role), as one query."""
    if not _is_active_user(user):
        return Tenant.objects.none()
    if user.is_superuser:
        return Tenant.objects.all()
    grants = _grants(user.pk, GRANT_ROLES)
    return Tenant.objects.filter(
        Q(Exists(grants.filter(tenant__isnull=True))) | Q(pk__in=grants.values("tenant_id"))
    )


def can_run(user, action: Action, tenant: Tenant) -> bool:
    """May `user` run `action` in `tenant`?

    Operators and admins of the tenant may run any action there; anyone else who sees the
    tenant (a viewer) may run an action they hold `execute_action` on, directly or through
    a group. Nobody runs an action in a tenant they cannot see.
    """
    if not _is_active_user(user):
        return False
    if user.is_superuser or _has_tenant_role(user, tenant.pk, OPERATE_ROLES):
        return True
    if not _has_tenant_role(user, tenant.pk, tuple(Role.values)):
        return False
    by_user = ActionUserObjectPermission.objects.filter(
        user_id=user.pk, content_object=action, permission__codename=ACTION_EXECUTE
    )
    by_group = ActionGroupObjectPermission.objects.filter(
        group_id__in=_group_ids(user.pk), content_object=action, permission__codename=ACTION_EXECUTE
    )
    return Action.objects.filter(Q(Exists(by_user)) | Q(Exists(by_group)), pk=action.pk).exists()


# --- live re-checks for open streams ----------------------------------------------------


def _principal(user_id: int, api_key_id: int | None) -> QuerySet:
    """The user row, only while the user is active and (if given) the API key still usable."""
    users = get_user_model().objects.filter(pk=user_id, is_active=True)
    if api_key_id is not None:
        users = users.filter(
            Exists(ApiKey.objects.usable().filter(pk=api_key_id, user=OuterRef("pk")))
        )
    return users


def still_allowed(user, *, execution_id: str | None = None, api_key=None) -> bool:
    """Is the stream opened by `user` (with `api_key`, if any) still allowed? One query.

    Reads everything fresh from the database: the user still active (and still superuser if
    that is what lets them see), the key neither revoked nor expired, and, for a stream of
    one execution, that execution still visible through a grant or permission. Streams call
    it every STREAM_ACCESS_RECHECK_SECONDS and stop delivering when it turns False.
    """
    if user is None or not user.is_authenticated:
        return False
    principal = _principal(user.pk, _api_key_id(user, api_key))
    if execution_id is not None:
        visible = Execution.objects.filter(_visible_q(user.pk), pk=execution_id)
        principal = principal.filter(Q(is_superuser=True) | Q(Exists(visible)))
    return principal.exists()


@dataclass
class StreamScope:
    """What a stream of many executions may carry, decided before anything is sent.

    `allows()` answers per event without a query. It learns the ids of new workflow
    children of granted executions from their `execution__create` events (which name the
    parent), so a grant on a workflow follows the children it starts after the snapshot.
    """

    all_tenants: bool = False
    tenant_ids: frozenset[int] = frozenset()
    execution_ids: set[str] = field(default_factory=set)
    # Tenants of the individually granted executions: their groups must be followed too.
    granted_tenant_ids: frozenset[int] = frozenset()

    def allows(self, tenant_id: int | None, execution_id: str | None, parent_id=None) -> bool:
        if self.all_tenants or tenant_id in self.tenant_ids:
            return True
        if execution_id in self.execution_ids:
            return True
        if execution_id is not None and parent_id is not None and parent_id in self.execution_ids:
            if len(self.execution_ids) < STREAM_SCOPE_MAX_EXECUTIONS:
                self.execution_ids.add(execution_id)
            return True
        return False

    def learn(self, execution_id: str) -> None:
        """Remember an execution a read found visible (a child whose creation came late)."""
        if len(self.execution_ids) < STREAM_SCOPE_MAX_EXECUTIONS:
            self.execution_ids.add(execution_id)

    def followed_tenant_ids(self) -> frozenset[int]:
        """The tenants whose groups a stream joins (all of them for `*` and superusers)."""
        if self.all_tenants:
            return frozenset(Tenant.objects.values_list("pk", flat=True))
        return self.tenant_ids | self.granted_tenant_ids


def stream_scope(user, *, api_key=None) -> StreamScope | None:
    """A fresh StreamScope for `user`, or None when the user or key no longer authenticates.

    Called when a stream opens and again every STREAM_ACCESS_RECHECK_SECONDS; the stream
    swaps in the new scope, so a removed grant stops delivery on the next check.
    """
    if user is None or not user.is_authenticated:
        return None
    principal = _principal(user.pk, _api_key_id(user, api_key))
    is_superuser = principal.values_list("is_superuser", flat=True).first()
    if is_superuser is None:
        return None
    if is_superuser:
        return StreamScope(all_tenants=True)
    tenant_ids = set(_grants(user.pk).values_list("tenant_id", flat=True))
    if None in tenant_ids:
        return StreamScope(all_tenants=True)
    granted = Execution.objects.filter(pk__in=_granted_tree_sql(user.pk)).values_list(
        "id", "tenant_id"
    )
    rows = list(granted[:STREAM_SCOPE_MAX_EXECUTIONS])
    if len(rows) == STREAM_SCOPE_MAX_EXECUTIONS:
        log.warning("user %s: more than %s granted executions", user.pk, len(rows))
    return StreamScope(
        tenant_ids=frozenset(tenant_ids),
        execution_ids={execution_id for execution_id, _ in rows},
        granted_tenant_ids=frozenset(tenant_id for _, tenant_id in rows),
    )


def stream_tenant_ids(user) -> frozenset[int | None]:
    """The tenants a stream of `user` counts against for connection limits.

    The tenants granted to the user and their groups; `None` stands for "every tenant"
    (superusers and `*` grants share that one bucket); a user with only single-execution
    permissions counts against the tenants of those executions; empty when none of these.
    """
    if not _is_active_user(user) or user.is_superuser:
        return frozenset({None})
    tenant_ids = set(_grants(user.pk).values_list("tenant_id", flat=True))
    if None in tenant_ids:
        return frozenset({None})
    if tenant_ids:
        return frozenset(tenant_ids)
    granted = Execution.objects.filter(pk__in=_granted_tree_sql(user.pk))
    return frozenset(granted.values_list("tenant_id", flat=True).distinct())


def visible_among(user, execution_ids: frozenset[str], *, api_key=None) -> frozenset[str]:
    """Which of `execution_ids` the caller (with `api_key`) may still see. One query, fresh:
    the user active, the key usable, and a grant, permission or superuser status."""
    if not execution_ids:
        return frozenset()
    principal = _principal(user.pk, _api_key_id(user, api_key))
    visible = Execution.objects.filter(pk__in=execution_ids).filter(
        Q(Exists(principal.filter(is_superuser=True)))
        | (Q(Exists(principal)) & _visible_q(user.pk))
    )
    return frozenset(visible.values_list("pk", flat=True))


def session_still_valid(user_id: int, session_key: str) -> bool:
    """Does the session still exist, unexpired, for this user, with the current password?

    The test Django's auth middleware applies on each request, applied to a stream that
    outlives its request: logout deletes the session, a password change alters the hash.
    """
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY
    from django.utils.crypto import constant_time_compare

    data = import_module(settings.SESSION_ENGINE).SessionStore(session_key).load()
    if str(data.get(SESSION_KEY)) != str(user_id):
        return False
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    session_hash = data.get(HASH_SESSION_KEY)
    if user is None or not session_hash:
        return False
    hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
    return any(constant_time_compare(session_hash, known) for known in hashes)


def credentials_expire_at(*, session_key: str | None = None, api_key_id: int | None = None):
    """When a session or an API key ends by itself (None: never, or it is gone). Sessions
    live in the database (rbac/sessions.py): the row's `expire_date`, moved on each save."""
    from django.contrib.sessions.models import Session

    from rbac.models import ApiKey

    if api_key_id is not None:
        keys = ApiKey.objects.filter(pk=api_key_id).values_list("expires_at", flat=True)
        return keys.first()
    if session_key is not None:
        rows = Session.objects.filter(session_key=session_key)
        return rows.values_list("expire_date", flat=True).first()
    return None


def forget_execution_permissions(execution_ids: list[str]) -> None:
    """Delete guardian's generic permission rows on these executions (the direct-FK tables
    go with the rows by cascade): what purging executions must do, said where permissions
    are decided."""
    from django.contrib.contenttypes.models import ContentType
    from guardian.models import GroupObjectPermission, UserObjectPermission

    content_type = ContentType.objects.get_for_model(Execution)
    for generic in (UserObjectPermission, GroupObjectPermission):
        generic.objects.filter(content_type=content_type, object_pk__in=execution_ids).delete()
