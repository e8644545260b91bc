"""Actions and executions. Each view parses, calls `services` / `rbac.access`, and answers.

Every view refuses query parameters it does not read (422 naming them) and parses JSON bodies
with `SafeJSONParser`: both through their base, `executions.api.base.StrictQuery`.
"""

from django.db.models import Prefetch, QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import exceptions, mixins, viewsets
from rest_framework.decorators import action as route
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from executions import services
from executions.api.base import StrictQuery
from executions.api.filters import ActionFilter, ExecutionFilter, FilterBackend
from executions.api.permissions import CanOperate
from executions.api.problems import Conflict, InvalidInput
from executions.api.schema import PagedActionsSchema, list_and_detail, problems
from executions.api.serializers import (
    ActionSerializer,
    ExecutionCreateSerializer,
    ExecutionSerializer,
)
from executions.models import Action, Execution, Tenant
from executions.problems import Problem, error, execution_ref
from rbac.access import NotVisible, access_execution, can_run, visible_executions, visible_tenants

EXECUTION_ID = OpenApiParameter(
    "id",
    OpenApiTypes.STR,
    OpenApiParameter.PATH,
    description="Execution id (ULID), or `last` for the newest execution you may see.",
)


@extend_schema_view(
    **list_and_detail(ActionSerializer, "List registered actions", "One action by ref (pack.name)")
)
class ActionViewSet(StrictQuery, viewsets.ReadOnlyModelViewSet):
    """Actions registered from the server's packs (read-only), by ref (`pack.name`)."""

    queryset = Action.objects.all()
    serializer_class = ActionSerializer
    lookup_field = "ref"
    lookup_value_regex = r"[^/]+"  # refs hold a dot (pack.name)
    filter_backends = [FilterBackend]
    filterset_class = ActionFilter
    not_found_detail = "There is no action {}."


@extend_schema_view(
    **list_and_detail(
        ExecutionSerializer,
        "List the executions you may see, newest first",
        "One execution",
        EXECUTION_ID,
    ),
    create=extend_schema(
        summary="Run an action",
        request=ExecutionCreateSerializer,
        responses={201: ExecutionSerializer, **problems(400, 403, 404, 415, 422)},
    ),
    cancel=extend_schema(
        summary="Cancel (kills the whole process tree)",
        parameters=[EXECUTION_ID],
        request=None,
        responses={200: ExecutionSerializer, **problems(403, 404, 409)},
    ),
    re_run=extend_schema(
        summary="Run again with the same parameters",
        parameters=[EXECUTION_ID],
        request=None,
        responses={201: ExecutionSerializer, **problems(403, 404, 409)},
    ),
    children=extend_schema(
        summary="A workflow's child executions, oldest first (paginated, filterable)",
        parameters=[EXECUTION_ID],
        responses={200: ExecutionSerializer(many=True), **problems(404, 422)},
    ),
)
class ExecutionViewSet(
    StrictQuery,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    """Runs of actions. Ids are ULIDs; `last` names the newest execution you may see."""

    serializer_class = ExecutionSerializer
    schema = PagedActionsSchema()
    lookup_field = "id"
    filter_backends = [FilterBackend]
    filterset_class = ExecutionFilter
    not_found_detail = "There is no execution {}."

    def get_permissions(self):
        if self.action in ("cancel", "re_run"):
            return [IsAuthenticated(), CanOperate()]
        return super().get_permissions()

    def get_queryset(self) -> QuerySet[Execution]:
        visible = visible_executions(self.request.user)
        # One query for every row's children, already filtered by visibility.
        children = visible.order_by("created_at", "id").only("id", "parent_id")
        return visible.select_related("tenant").prefetch_related(
            Prefetch("children", queryset=children, to_attr="visible_children")
        )

    def get_object(self) -> Execution:
        try:
            execution = access_execution(self.request.user, execution_ref(self.lookup_value()))
        except (Problem, NotVisible):  # not an id (nor `last`), missing or hidden
            raise self.not_found() from None
        self.check_object_permissions(self.request, execution)
        return execution

    def create(self, request, *args, **kwargs) -> Response:
        given = ExecutionCreateSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        ref = given.validated_data["action"]
        try:
            action = services.get_action(ref)
        except services.ActionUnavailable as exc:
            raise InvalidInput([error("body.action", str(exc), ref)]) from None
        tenant = self._tenant(given.validated_data.get("tenant"))
        if not can_run(request.user, action, tenant):
            raise exceptions.PermissionDenied(f"You may not run {ref} in tenant {tenant.slug}.")
        try:
            execution = services.create_execution(
                action, given.validated_data["parameters"], tenant=tenant, user=request.user
            )
        except services.ParameterError as exc:
            raise InvalidInput(exc.errors) from None  # secret values come masked
        return self._created(execution)

    @route(detail=True, methods=["post"])
    def cancel(self, request, id: str) -> Response:
        try:
            execution = services.cancel(self.get_object())
        except services.NotCancelable as exc:
            raise Conflict(str(exc)) from None
        return Response(self.get_serializer(execution).data)

    @route(detail=True, methods=["post"], url_path="re-run")
    def re_run(self, request, id: str) -> Response:
        try:
            execution = services.re_run(self.get_object(), user=request.user)
        except services.ActionUnavailable as exc:
            raise Conflict(f"Cannot run it again: {exc}.") from None
        return self._created(execution)

    @route(detail=True, methods=["get"])
    def children(self, request, id: str) -> Response:
        parent = self.get_object()
        children = self.filter_queryset(self.get_queryset().filter(parent=parent))
        page = self.paginate_queryset(children.order_by("created_at", "id"))
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    def _tenant(self, slug: str | None) -> Tenant:
        if slug is None:
            return Tenant.default()
        # A tenant the caller sees nothing in answers like a missing one: names never leak.
        try:
            return visible_tenants(self.request.user).get(slug=slug)
        except Tenant.DoesNotExist:
            raise exceptions.NotFound(f"There is no tenant {slug}.") from None

    def _created(self, execution: Execution) -> Response:
        data = self.get_serializer(execution).data
        return Response(data, status=201, headers={"Location": data["links"]["self"]})
