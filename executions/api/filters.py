"""Query filters for the execution and action lists (django-filter).

Invalid values answer 422 naming `query.<name>`; so do the values django-filter would
otherwise ignore (a comma list with an empty item, `status=,,` or `status=`; an empty value;
a boolean other than `true`/`false`): a filter that is silently dropped looks like one that
works.
"""

import django_filters
from django.db.models import QuerySet
from django_filters.rest_framework import DjangoFilterBackend

from executions.api.problems import InvalidInput
from executions.models import Action, Execution, ExecutionStatus, RunnerType
from executions.problems import error

BOOLEANS = ("true", "false")


class StatusInFilter(django_filters.BaseInFilter, django_filters.ChoiceFilter):
    """`status=running,scheduled`: a comma list, each one checked against the statuses."""


class CharInFilter(django_filters.BaseInFilter, django_filters.CharFilter):
    pass


class ExecutionFilter(django_filters.FilterSet):
    status = StatusInFilter(choices=ExecutionStatus.choices, help_text="comma list of statuses")
    action = CharInFilter(field_name="action_ref", help_text="comma list of action refs")
    tenant = CharInFilter(field_name="tenant__slug", help_text="comma list of tenant slugs")
    parent = CharInFilter(field_name="parent_id", help_text="comma list of parent execution ids")
    ancestor = CharInFilter(
        method="filter_ancestor",
        help_text="comma list of execution ids: their descendants at every depth",
    )

    class Meta:
        model = Execution
        fields = ["status", "action", "tenant", "parent", "ancestor"]

    def filter_ancestor(self, queryset: QuerySet, name: str, value: list[str]) -> QuerySet:
        from streaming.family_reads import descendants_query

        return queryset.filter(pk__in=descendants_query({v.strip().upper() for v in value}))


class ActionFilter(django_filters.FilterSet):
    pack = django_filters.CharFilter()
    runner_type = django_filters.ChoiceFilter(choices=RunnerType.choices)
    enabled = django_filters.BooleanFilter(widget=django_filters.widgets.BooleanWidget)

    class Meta:
        model = Action
        fields = ["pack", "runner_type", "enabled"]


class FilterBackend(DjangoFilterBackend):
    """django-filter, with invalid values answered as a 422 problem naming `query.<name>`."""

    def filter_queryset(self, request, queryset: QuerySet, view) -> QuerySet:
        filterset = self.get_filterset(request, queryset, view)
        if filterset is None:
            return queryset
        errors = _empty_list_items(filterset, request.query_params)
        if not filterset.is_valid():
            errors += [
                error(f"query.{name}", message, request.query_params.get(name))
                for name, messages in filterset.errors.items()
                for message in messages
            ]
        if errors:
            raise InvalidInput(errors)
        return filterset.qs


def _shape_error(flt, value: str) -> str | None:
    """What django-filter would silently ignore: an empty value or item, a non-boolean."""
    if isinstance(flt, django_filters.BaseInFilter):
        if any(not item.strip() for item in value.split(",")):
            return "must be a comma list of non-empty values"
    elif isinstance(flt, django_filters.BooleanFilter):
        if value not in BOOLEANS:
            return "must be true or false"
    elif not value.strip():
        return "must not be empty (leave the parameter out to not filter)"
    return None


def _empty_list_items(filterset, query) -> list[dict]:
    return [
        error(f"query.{name}", message, query[name])
        for name, flt in filterset.filters.items()
        if name in query and (message := _shape_error(flt, query[name]))
    ]
