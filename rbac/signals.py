"""Access doorbells: any change that can take access away rings, after commit.

    grant / object permission / group membership / API key / user (active, superuser,
    password) / logout / a new tenant ──on_commit──▶ group "access": {"type": "access.changed", ...}
      ──▶ every web process's hub ──▶ the access guard re-checks the affected principals'
          streams at once (streaming/guard.py)

The message names the users affected (`user_ids`; null: anyone, e.g. a `*` grant or a
group's grant), and, for a logout, the session that ended (`session_key`), whose streams end
without a database read (the session row may not be deleted yet when the bell arrives).
Like every doorbell it may be lost; the guard's periodic safety re-check covers that.
"""

from collections.abc import Iterable

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save

from executions import publish

ACCESS_GROUP = "access"
ACCESS_MESSAGE = "access.changed"


def access_message(user_ids: Iterable[int] | None, session_key: str | None = None) -> dict:
    return {
        "type": ACCESS_MESSAGE,
        "user_ids": None if user_ids is None else sorted(set(user_ids)),
        "session_key": session_key,
    }


def ring(user_ids: Iterable[int] | None, session_key: str | None = None) -> None:
    """Ring the access doorbell once the current transaction commits (now, outside one)."""
    message = access_message(user_ids, session_key)
    transaction.on_commit(lambda: publish.group_send(ACCESS_GROUP, message))


def _group_members(group_id: int) -> list[int]:
    return list(get_user_model().objects.filter(groups=group_id).values_list("pk", flat=True))


def _grant_changed(sender, instance, **kwargs) -> None:
    if instance.user_id is not None:
        ring([instance.user_id])
    elif instance.group_id is not None:
        ring(_group_members(instance.group_id))
    else:
        ring(None)  # a grant to everyone


def _user_permission_changed(sender, instance, **kwargs) -> None:
    ring([instance.user_id])


def _group_permission_changed(sender, instance, **kwargs) -> None:
    ring(_group_members(instance.group_id))


def _user_changed(sender, instance, **kwargs) -> None:
    ring([instance.pk])


def _api_key_changed(sender, instance, **kwargs) -> None:
    ring([instance.user_id])


def _membership_changed(sender, instance, action, reverse, pk_set, **kwargs) -> None:
    if action not in ("post_add", "post_remove", "post_clear", "pre_clear"):
        return
    if not reverse:  # user.groups.…: the user changed
        ring([instance.pk])
    elif pk_set:  # group.user_set.…: these users changed
        ring(pk_set)
    else:  # group.user_set.clear(): we no longer know whom; everyone re-checks
        ring(None)


def _tenant_created(sender, instance, created, **kwargs) -> None:
    if created:  # streams of callers who see every tenant must follow this one too
        ring(None)


def _logged_out(sender, request, user, **kwargs) -> None:
    session = getattr(request, "session", None)
    session_key = getattr(session, "session_key", None)
    ring([user.pk] if user is not None else [], session_key)


def connect() -> None:
    from executions.models import Tenant
    from rbac.models import (
        ApiKey,
        ExecutionGroupObjectPermission,
        ExecutionUserObjectPermission,
        TenantGrant,
    )

    user_model = get_user_model()
    for signal in (post_save, post_delete):
        signal.connect(_grant_changed, sender=TenantGrant, dispatch_uid="access-grant")
        signal.connect(
            _user_permission_changed, sender=ExecutionUserObjectPermission, dispatch_uid="acc-up"
        )
        signal.connect(
            _group_permission_changed,
            sender=ExecutionGroupObjectPermission,
            dispatch_uid="access-gp",
        )
        signal.connect(_user_changed, sender=user_model, dispatch_uid="access-user")
        signal.connect(_api_key_changed, sender=ApiKey, dispatch_uid="access-key")
    post_save.connect(_tenant_created, sender=Tenant, dispatch_uid="access-tenant")
    m2m_changed.connect(
        _membership_changed, sender=user_model.groups.through, dispatch_uid="access-members"
    )
    user_logged_out.connect(_logged_out, dispatch_uid="access-logout")
