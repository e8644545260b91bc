"""Search over stored logs, in bounded steps: one execution's, or a family's (the execution and
its visible descendants, the sections of its page).

    one      scan seqs [from, from + SEARCH_SCAN_ROWS) of the execution
             ─▶ matches (seqs), scanned_to: ask again from scanned_to + 1 until last_seq
    family   members: the execution, then its visible descendants by id (creation order)
             scan from (member `in`, seq `from`) on, member after member, SEARCH_SCAN_ROWS
             seqs in all ─▶ matches ({execution, seq}), next: the cursor to ask with, or null

Each request reads at most SEARCH_SCAN_ROWS stored lines and answers at most
SEARCH_MAX_MATCHES matches, whatever the size of the log or of the family.
"""

from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet

from executions.models import Execution, OutputChunk

# Seqs one request scans (an index range read plus a substring test per row: tens of
# milliseconds on SQLite), so a request's work is bounded whatever the log's size; the page
# asks for the next range until the end of the log.
SEARCH_SCAN_ROWS = 100_000
# Match seqs one search answer carries; a range with more ends early at the last one.
SEARCH_MAX_MATCHES = 1000
# A search text longer than any line worth finding is a mistake.
SEARCH_MAX_CHARS = 200
# Members of a family search: the execution and the descendants its page shows as sections
# (execution.js MAX_TASKS). A request queries at most one range per member.
FAMILY_MAX_MEMBERS = 501


@dataclass(frozen=True)
class Query:
    text: str  # case-insensitive substring; "" for any line
    kind: str  # one output type; "" for any


def _matching(rows: QuerySet[OutputChunk], query: Query) -> QuerySet[OutputChunk]:
    if query.text:
        rows = rows.filter(data__icontains=query.text)
    if query.kind:
        rows = rows.filter(output_type=query.kind)
    return rows


def _scan(execution_id: str, query: Query, first: int, end: int, limit: int) -> list[int]:
    """Seqs of matching lines in [first, end], at most `limit`."""
    rows = OutputChunk.objects.filter(execution_id=execution_id, seq__gte=first, seq__lte=end)
    return list(_matching(rows, query).order_by("seq").values_list("seq", flat=True)[:limit])


def search_one(execution: Execution, query: Query, first: int) -> dict[str, Any]:
    """One execution's matches from seq `first`: `matches`, `scanned_to`, `last_seq`."""
    end = min(first + SEARCH_SCAN_ROWS - 1, execution.last_seq)
    matches = _scan(execution.id, query, first, end, SEARCH_MAX_MATCHES + 1)
    scanned_to = end
    if len(matches) > SEARCH_MAX_MATCHES:
        matches = matches[:SEARCH_MAX_MATCHES]
        scanned_to = matches[-1]
    return {"matches": matches, "scanned_to": scanned_to, "last_seq": execution.last_seq}


def family_members(execution: Execution, visible: QuerySet[Execution]) -> list[tuple[str, int]]:
    """(id, last_seq) of the execution, then of its descendants in `visible`, oldest first."""
    from streaming.family_reads import descendants_query

    descendants = visible.filter(pk__in=descendants_query([execution.id])).order_by("id")
    rows = descendants.values_list("id", "last_seq")[: FAMILY_MAX_MEMBERS - 1]
    return [(execution.id, execution.last_seq), *rows]


def search_family(
    members: list[tuple[str, int]], query: Query, start: str, first: int
) -> dict[str, Any]:
    """Matches from (member `start`, seq `first`) on: `matches` ({execution, seq}) and `next`
    ({in, from}: where the next request starts; null once every member was read)."""
    ids = [member_id for member_id, _ in members]
    budget = SEARCH_SCAN_ROWS
    matches: list[dict[str, Any]] = []
    for member_id, last_seq in members[ids.index(start) :]:
        room = SEARCH_MAX_MATCHES - len(matches)
        if budget <= 0 or room <= 0:
            return {"matches": matches, "next": {"in": member_id, "from": first}}
        end = min(first + budget - 1, last_seq)
        found = _scan(member_id, query, first, end, room + 1) if end >= first else []
        if len(found) > room:  # full: the next request starts after the last match kept
            kept = found[:room]
            matches += [{"execution": member_id, "seq": seq} for seq in kept]
            return {"matches": matches, "next": {"in": member_id, "from": kept[-1] + 1}}
        matches += [{"execution": member_id, "seq": seq} for seq in found]
        budget -= max(0, end - first + 1)
        if end < last_seq:  # the budget ran out inside this member
            return {"matches": matches, "next": {"in": member_id, "from": end + 1}}
        first = 1
    return {"matches": matches, "next": None}
