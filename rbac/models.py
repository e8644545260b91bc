"""Access control's tables: tenant grants (roles), django-guardian object permissions with
direct foreign keys, and API keys (only their hash is stored)."""

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.utils import timezone
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


API_KEY_PREFIX = "tg"
# 12 hex characters: the key's public id, unique and indexed, so authentication is one
# lookup by id followed by one constant-time hash comparison.
API_KEY_ID_BYTES = 6
# 256 bits of randomness: a key this strong needs no slow hash (brute force is hopeless),
# so SHA-256 suits it and authentication stays cheap enough for every stream connect.
API_KEY_SECRET_BYTES = 32
# last_used_at is written at most this often per key, so busy clients do not write per request.
LAST_USED_RESOLUTION = timedelta(minutes=5)


def hash_api_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def split_api_key(raw_key: str) -> str | None:
    """The public key id inside `raw_key` (`tg_<id>_<secret>`), or None when malformed."""
    prefix, _, rest = raw_key.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != API_KEY_PREFIX or len(key_id) != API_KEY_ID_BYTES * 2 or not secret:
        return None
    return key_id


class ApiKeyQuerySet(models.QuerySet):
    def usable(self) -> "ApiKeyQuerySet":
        """Keys that authenticate now: not revoked, not expired, owned by an active user."""
        now = timezone.now()
        return self.filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now),
            revoked_at__isnull=True,
            user__is_active=True,
        )


class ApiKey(models.Model):
    """A bearer credential for programs. Only a SHA-256 hash of the key is stored.

    The key reads `tg_<key_id>_<secret>`; `key_id` is not secret (it names the key in the
    admin and in logs), the whole string is, and it is shown once, when it is created.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=100, blank=True, help_text="what the key is for")
    key_id = models.CharField(max_length=32, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="empty: never expires")
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.key_id} ({self.name})" if self.name else self.key_id

    @classmethod
    def issue(
        cls, user, *, name: str = "", expires_in: timedelta | None = None
    ) -> tuple["ApiKey", str]:
        """Create a key for `user`; returns the row and the key itself (shown once)."""
        key = cls(user=user, name=name)
        raw_key = key.set_new_key()
        if expires_in is not None:
            key.expires_at = timezone.now() + expires_in
        key.save()
        return key, raw_key

    def set_new_key(self) -> str:
        """Give this (unsaved) row a fresh key; returns the key, which is not stored."""
        self.key_id = secrets.token_hex(API_KEY_ID_BYTES)
        raw_key = f"{API_KEY_PREFIX}_{self.key_id}_{secrets.token_urlsafe(API_KEY_SECRET_BYTES)}"
        self.key_hash = hash_api_key(raw_key)
        return raw_key

    @classmethod
    def authenticate(cls, raw_key: str) -> "ApiKey | None":
        """The usable key matching `raw_key` (with its user loaded), else None."""
        key_id = split_api_key(raw_key)
        if key_id is None:
            return None
        key = cls.objects.usable().select_related("user").filter(key_id=key_id).first()
        if key is None or not hmac.compare_digest(key.key_hash, hash_api_key(raw_key)):
            return None
        key.touch()
        return key

    def touch(self) -> None:
        now = timezone.now()
        if self.last_used_at is None or now - self.last_used_at > LAST_USED_RESOLUTION:
            ApiKey.objects.filter(pk=self.pk).update(last_used_at=now)
            self.last_used_at = now

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])
