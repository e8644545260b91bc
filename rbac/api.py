"""`/api/v1/tenants/` and `/api/v1/keys/`: the tenants a caller sees, and their own API keys.

Each view parses, asks `rbac.access` (or the caller's own rows), and answers. A tenant the
caller may not see, and another user's key, answer 404 exactly like missing ones.

Keys are created only from a logged-in session, or by a superuser: a key that could create
keys would let whoever stole it mint fresh ones that outlive its revocation. A key may list
its owner's keys and revoke them (itself included).
"""

from datetime import timedelta
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone
from django_filters import FilterSet
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import exceptions, mixins, serializers
from rest_framework.decorators import action as route
from rest_framework.response import Response
from rest_framework.reverse import reverse

from executions.api.base import StrictQuery
from executions.api.problems import Conflict
from executions.api.schema import list_and_detail, problems
from executions.api.serializers import KnownFieldsOnly
from executions.models import Tenant
from rbac.access import visible_tenants
from rbac.models import ApiKey, ApiKeyQuerySet, Role, TenantGrant

# Roles from least to most: a caller holding several (own and groups') has the highest.
ROLE_ORDER = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)
# A key is a credential to keep track of; past this many usable keys, revoke one first.
MAX_USABLE_KEYS_PER_USER = 100
# The longest life a key can be given through the API (ten years): `expires_in_days` beyond
# it is refused, so the expiry date stays a real date on every database.
MAX_KEY_DAYS = 3650
KEY_NAME_MAX_CHARS = ApiKey._meta.get_field("name").max_length


def tenant_roles(user) -> dict[int | None, str | None]:
    """The caller's highest granted role per tenant id (`None`: every tenant), one query."""
    grants = TenantGrant.objects.filter(Q(user_id=user.pk) | Q(group__user__pk=user.pk))
    roles: dict[int | None, str | None] = {}
    for tenant_id, role in grants.values_list("tenant_id", "role"):
        roles[tenant_id] = _highest(roles.get(tenant_id), role)
    return roles


def _highest(*roles: str | None) -> str | None:
    held = [role for role in roles if role is not None]
    return max(held, key=ROLE_ORDER.index) if held else None


class NoFilters(FilterSet):
    """These lists take no filters: only `limit` and `offset` (anything else is a 422)."""


class TenantSerializer(serializers.Serializer):
    slug = serializers.SlugField()
    name = serializers.CharField()
    role = serializers.ChoiceField(
        choices=Role.choices,
        allow_null=True,
        help_text="your highest role granted there (to you, a group of yours, or on every "
        "tenant); null when you see it only through single executions, or as a superuser "
        "without a grant",
    )

    def to_representation(self, tenant: Tenant) -> dict[str, Any]:
        roles = self.context["roles"]
        role = _highest(roles.get(tenant.pk), roles.get(None))
        return {"slug": tenant.slug, "name": tenant.name, "role": role}


TENANT_SLUG = OpenApiParameter("slug", str, OpenApiParameter.PATH, description="Tenant slug.")


@extend_schema_view(
    **list_and_detail(
        TenantSerializer,
        "List the tenants you may see",
        "One tenant you may see, with your role there",
        TENANT_SLUG,
    )
)
class TenantViewSet(StrictQuery, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """Tenants you may see: granted to you, a group of yours, or through an execution."""

    serializer_class = TenantSerializer
    filterset_class = NoFilters
    lookup_field = "slug"
    not_found_detail = "There is no tenant {}."

    def get_queryset(self) -> QuerySet[Tenant]:
        return visible_tenants(self.request.user).order_by("slug")

    def get_serializer_context(self) -> dict[str, Any]:
        return {**super().get_serializer_context(), "roles": tenant_roles(self.request.user)}


# --- API keys --------------------------------------------------------------------------


class ApiKeySerializer(serializers.Serializer):
    id = serializers.CharField(help_text="the key's public id: the 12 hex digits after `tg_`")
    name = serializers.CharField(allow_blank=True)
    state = serializers.ChoiceField(choices=["active", "expired", "revoked"])
    current = serializers.BooleanField(help_text="true for the key this request came with")
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True, help_text="null: never expires")
    last_used_at = serializers.DateTimeField(
        allow_null=True, help_text="recorded at most every 5 minutes"
    )
    revoked_at = serializers.DateTimeField(allow_null=True)

    def to_representation(self, key: ApiKey) -> dict[str, Any]:
        request = self.context["request"]
        current = isinstance(request.auth, ApiKey) and request.auth.pk == key.pk
        return {
            "id": key.key_id,
            "name": key.name,
            "state": _key_state(key),
            "current": current,
            "created_at": _iso(key.created_at),
            "expires_at": _iso(key.expires_at),
            "last_used_at": _iso(key.last_used_at),
            "revoked_at": _iso(key.revoked_at),
        }


class CreatedApiKeySerializer(ApiKeySerializer):
    key = serializers.CharField(help_text="the key itself; shown in this answer only, never again")


class ApiKeyCreateSerializer(KnownFieldsOnly):
    """A new API key: what it is for, how long it works. An unknown key is refused (422)."""

    # Not trimmed: a name of spaces is a name, as the schema's minLength says.
    name = serializers.CharField(
        min_length=1,
        max_length=KEY_NAME_MAX_CHARS,
        trim_whitespace=False,
        help_text="what the key is for",
    )
    expires_in_days = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_KEY_DAYS,
        help_text="the key stops working after this many days; left out: it never expires",
    )


def _own_keys(user) -> ApiKeyQuerySet:
    return ApiKey.objects.filter(user=user)


def _key_state(key: ApiKey) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= timezone.now():
        return "expired"
    return "active"


def _iso(moment) -> str | None:
    return serializers.DateTimeField().to_representation(moment) if moment else None


KEY_ID = OpenApiParameter("id", str, OpenApiParameter.PATH, description="The key's public id.")


@extend_schema_view(
    **list_and_detail(
        ApiKeySerializer,
        "List your API keys, newest first (revoked and expired ones too)",
        "One of your API keys",
        KEY_ID,
    ),
    create=extend_schema(
        summary="Create an API key (from a session, or as a superuser); the key is shown once",
        request=ApiKeyCreateSerializer,
        responses={201: CreatedApiKeySerializer, **problems(400, 403, 409, 415, 422)},
    ),
    revoke=extend_schema(
        summary="Revoke one of your API keys; its open streams end",
        parameters=[KEY_ID],
        request=None,
        responses={200: ApiKeySerializer, **problems(404)},
    ),
)
class ApiKeyViewSet(StrictQuery, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """Your own API keys; another user's key answers 404 like a missing one."""

    serializer_class = ApiKeySerializer
    filterset_class = NoFilters
    lookup_field = "key_id"
    lookup_url_kwarg = "id"
    not_found_detail = "You have no API key {}."  # another user's key: like a missing one

    def get_queryset(self) -> QuerySet[ApiKey]:
        return _own_keys(self.request.user).order_by("-created_at", "-pk")

    def create(self, request, *args, **kwargs) -> Response:
        if isinstance(request.auth, ApiKey) and not request.user.is_superuser:
            raise exceptions.PermissionDenied(
                "An API key cannot create API keys (a stolen key could mint keys that outlive "
                "its revocation): create it logged in, or ask a superuser."
            )
        given = ApiKeyCreateSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        if _own_keys(request.user).usable().count() >= MAX_USABLE_KEYS_PER_USER:
            raise Conflict(
                f"You hold {MAX_USABLE_KEYS_PER_USER} usable API keys; revoke one first."
            )
        days = given.validated_data.get("expires_in_days")
        key, raw_key = ApiKey.issue(
            request.user,
            name=given.validated_data["name"],
            expires_in=None if days is None else timedelta(days=days),
        )
        data = {**self.get_serializer(key).data, "key": raw_key}
        location = reverse("apikey-detail", kwargs={"id": key.key_id}, request=request)
        return Response(data, status=201, headers={"Location": location})

    @route(detail=True, methods=["post"])
    def revoke(self, request, id: str) -> Response:
        """Revoking rings the access doorbell (rbac/signals.py): the key's streams end."""
        key = self.get_object()
        key.revoke()
        return Response(self.get_serializer(key).data)
