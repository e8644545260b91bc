"""`?limit=&offset=` pagination: invalid values answer 422 naming them, never a silent default."""

from rest_framework.pagination import LimitOffsetPagination

from executions.api.problems import InvalidInput
from executions.problems import error

DEFAULT_PAGE_SIZE = 50
# A page is built in memory and serialized in one response; 500 executions stay well under
# a megabyte, and a client that wants more pages through `next`.
MAX_PAGE_SIZE = 500
# Both databases take a 64-bit OFFSET, but no installation holds 2^31 executions: the bound
# keeps `offset + limit` far from any integer limit and is documented in the schema.
MAX_OFFSET = 2**31 - 1
_DIGITS = 10  # enough for MAX_OFFSET; longer strings are refused before int() is called


def _bounded_int(request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    text = raw.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= _DIGITS) or not (
        low <= int(text) <= high
    ):
        message = f"must be an integer between {low} and {high}"
        raise InvalidInput([error(f"query.{name}", message, raw)])
    return int(text)


class Pagination(LimitOffsetPagination):
    """`?limit=&offset=`; the response holds `count`, `next`, `previous` and `results`."""

    default_limit = DEFAULT_PAGE_SIZE
    max_limit = MAX_PAGE_SIZE

    def get_limit(self, request) -> int:
        return _bounded_int(request, self.limit_query_param, self.default_limit, 1, MAX_PAGE_SIZE)

    def get_offset(self, request) -> int:
        return _bounded_int(request, self.offset_query_param, 0, 0, MAX_OFFSET)

    def get_schema_operation_parameters(self, view) -> list[dict]:
        limit, offset = super().get_schema_operation_parameters(view)
        limit["schema"] = {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_PAGE_SIZE,
            "default": DEFAULT_PAGE_SIZE,
        }
        offset["schema"] = {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0}
        return [limit, offset]
