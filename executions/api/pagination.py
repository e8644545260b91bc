from rest_framework.pagination import LimitOffsetPagination

# A page is built in memory and serialized in one response; 500 executions stay well under
# a megabyte, and a client that wants more pages through `next`.
MAX_PAGE_SIZE = 500


class Pagination(LimitOffsetPagination):
    """`?limit=&offset=`; the response holds `count`, `next`, `previous` and `results`."""

    default_limit = 50
    max_limit = MAX_PAGE_SIZE
