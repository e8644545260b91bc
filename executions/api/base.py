"""The base every Tailgate viewset stands on (actions, executions, tenants, API keys).

- Query parameters an action does not read answer 422 naming them, after authentication
  (401 comes first); JSON bodies go through `SafeJSONParser` (see `executions.api.edge`).
- One object by its lookup, or 404 with a sentence that names what was asked for: the same
  answer whether the object is missing or hidden from the caller, so existence never leaks.
"""

from collections.abc import Sequence
from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django_filters import FilterSet
from rest_framework import exceptions, viewsets
from rest_framework.parsers import BaseParser

from executions.api.edge import SafeJSONParser
from executions.api.pagination import Pagination
from executions.api.problems import InvalidInput
from executions.api.schema import PagedActionsSchema
from executions.problems import error

# Actions that answer a page: they read the filters and `limit`/`offset`.
LIST_ACTIONS = PagedActionsSchema.paged_actions


class StrictQuery(viewsets.GenericViewSet):
    """Our viewsets' base: query parameters this action does not read answer 422 naming
    them, JSON bodies go through SafeJSONParser, and a missing or hidden object answers 404
    with `not_found_detail` (formatted with the value looked up)."""

    parser_classes: Sequence[type[BaseParser]] = [SafeJSONParser]

    filterset_class: type[FilterSet]
    # "There is no tenant {}.": what a 404 says, given the value the caller looked up.
    not_found_detail: str

    def known_query_params(self) -> set[str]:
        paginator = self.paginator
        if self.action not in LIST_ACTIONS or not isinstance(paginator, Pagination):
            return set()
        known = set(self.filterset_class.base_filters)
        return known | {paginator.limit_query_param, paginator.offset_query_param}

    def initial(self, request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)  # authentication first: 401 before 422
        if self.action in (None, "metadata"):
            return  # a method this route does not serve (405) or OPTIONS: no query is read
        known = self.known_query_params()
        unknown = sorted(set(request.query_params) - known)
        if unknown:
            message = f"is not a known parameter (known here: {', '.join(sorted(known)) or 'none'})"
            raise InvalidInput(
                [error(f"query.{name}", message, request.query_params[name]) for name in unknown]
            )

    def lookup_value(self) -> str:
        return self.kwargs[self.lookup_url_kwarg or self.lookup_field]

    def not_found(self) -> exceptions.NotFound:
        """The 404 for this request's lookup value, missing or hidden alike."""
        return exceptions.NotFound(self.not_found_detail.format(self.lookup_value()))

    def get_object(self) -> Any:
        try:
            found = self.get_queryset().get(**{self.lookup_field: self.lookup_value()})
        except ObjectDoesNotExist:
            raise self.not_found() from None
        self.check_object_permissions(self.request, found)
        return found
