"""Query filters for the execution and action lists (django-filter)."""

import django_filters
from django.db.models import QuerySet
from django_filters.rest_framework import DjangoFilterBackend

from executions.api.problems import InvalidInput
from executions.models import Action, Execution, ExecutionStatus, RunnerType


class StatusInFilter(django_filters.BaseInFilter, django_filters.ChoiceFilter):
    """`status=running,scheduled`: a comma list, each one checked against the statuses."""


class CharInFilter(django_filters.BaseInFilter, django_filters.CharFilter):
    pass


class ExecutionFilter(django_filters.FilterSet):
    status = StatusInFilter(choices=ExecutionStatus.choices, help_text="comma list of statuses")
    action = CharInFilter(field_name="action_ref", help_text="comma list of action refs")
    tenant = CharInFilter(field_name="tenant__slug", help_text="comma list of tenant slugs")
    parent = CharInFilter(field_name="parent_id", help_text="comma list of parent execution ids")

    class Meta:
        model = Execution
        fields = ["status", "action", "tenant", "parent"]


class ActionFilter(django_filters.FilterSet):
    pack = django_filters.CharFilter()
    runner_type = django_filters.ChoiceFilter(choices=RunnerType.choices)
    enabled = django_filters.BooleanFilter()

    class Meta:
        model = Action
        fields = ["pack", "runner_type", "enabled"]


class FilterBackend(DjangoFilterBackend):
    """django-filter, with invalid values answered as a 422 problem naming `query.<name>`."""

    def filter_queryset(self, request, queryset: QuerySet, view) -> QuerySet:
        filterset = self.get_filterset(request, queryset, view)
        if filterset is None:
            return queryset
        if not filterset.is_valid():
            raise InvalidInput(
                [
                    {
                        "location": f"query.{name}",
                        "message": message,
                        "value": request.query_params.get(name),
                    }
                    for name, messages in filterset.errors.items()
                    for message in messages
                ]
            )
        return filterset.qs
