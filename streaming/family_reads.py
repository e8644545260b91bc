"""The reads of family streams and `ancestor` filters (plain sync code: run them in the stream
pool, or in a request)."""

from collections.abc import Iterable
from dataclasses import dataclass

from django.db import connection
from django.db.models.expressions import RawSQL

from executions.models import Execution, OutputChunk
from streaming.frames import Frame, output_frame
from streaming.replay import OutputState, chunk_payload, output_states

# A family deeper than this is not a workflow anyone wrote: stop descending (and never loop).
MAX_DEPTH = 64
# Members one stream follows: each costs a group and a row in each snapshot. Past it, a 422
# before the stream starts (stream a subtree instead).
MAX_MEMBERS = 1000


class TooBig(Exception):
    """The family has more than MAX_MEMBERS members."""


@dataclass(frozen=True)
class MemberRow:
    id: str
    parent_id: str | None
    task_name: str
    action_ref: str


def name_of(row: MemberRow) -> str:
    return row.task_name or row.action_ref.rsplit(".", 1)[-1]


def descendants(root_id: str) -> list[MemberRow]:
    """Every descendant of `root_id`, parents before children, siblings in creation order."""
    rows: list[MemberRow] = []
    frontier = [root_id]
    for _ in range(MAX_DEPTH):
        level = (
            Execution.objects.filter(parent_id__in=frontier)
            .order_by("created_at", "id")
            .values_list("id", "parent_id", "task_name", "action_ref")
        )
        found = [MemberRow(*row) for row in level[: MAX_MEMBERS + 1 - len(rows)]]
        if not found:
            break
        rows += found
        if len(rows) > MAX_MEMBERS:
            raise TooBig()
        frontier = [row.id for row in found]
    return rows


def descendants_query(ancestor_ids: Iterable[str]) -> RawSQL:
    """The ids of every descendant of these executions, as one recursive query (SQLite and
    PostgreSQL), for `pk__in=`: the REST list's and the global stream's `ancestor` filter."""
    ids = sorted(ancestor_ids)
    q = connection.ops.quote_name
    table, pk, parent = q(Execution._meta.db_table), q("id"), q("parent_id")
    marks = ", ".join(["%s"] * len(ids))
    sql = (
        f"WITH RECURSIVE family_tree(id) AS ("
        f"SELECT {pk} FROM {table} WHERE {parent} IN ({marks}) "
        f"UNION SELECT child.{pk} FROM {table} child "
        f"JOIN family_tree ON child.{parent} = family_tree.id) "
        f"SELECT id FROM family_tree"
    )
    return RawSQL(sql, ids)


def descendant_ids(ancestor_ids: Iterable[str]) -> set[str]:
    """The ids of every descendant of these executions (one query)."""
    query = Execution.objects.filter(pk__in=descendants_query(ancestor_ids))
    return set(query.values_list("id", flat=True))


def family_snapshot(
    root_id: str, known: frozenset[str]
) -> tuple[dict[str, OutputState], list[MemberRow]]:
    """The states of the known members, read *before* the descendants: a member seen
    finished has all its children in the list. New members' states are read after."""
    states = output_states(known)
    rows = descendants(root_id)
    new = frozenset(row.id for row in rows) - known
    if new:
        states.update(output_states(new))
    return states, rows


def root_row(root_id: str) -> tuple[MemberRow, int] | None:
    """The stream's root and its tenant id; None when it no longer exists."""
    found = (
        Execution.objects.filter(pk=root_id)
        .values_list("id", "parent_id", "task_name", "action_ref", "tenant_id")
        .first()
    )
    return None if found is None else (MemberRow(*found[:4]), found[4])


def read_member_page(
    state: OutputState, after: int, upto: int, output_type: str | None, limit: int
) -> list[Frame]:
    """Like `read_chunks`, `limit` rows at most: a merge of many members holds a page of
    each at once, so their pages are smaller (FamilyCursor._page_rows)."""
    chunks = OutputChunk.objects.filter(
        execution_id=state.execution_id, seq__gt=after, seq__lte=upto
    )
    if output_type:
        chunks = chunks.filter(output_type=output_type)
    rows = chunks.order_by("seq").values_list("seq", "output_type", "data", "timestamp")
    return [output_frame(chunk_payload(state, *row)) for row in rows[:limit]]
