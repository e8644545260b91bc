"""The global stream's filters: parsed once, applied alike to live messages and log rows.

Every filter is optional; given ones combine with AND, and each takes a comma list (OR
within it). `events` takes names or `*` globs; output events are opt-in, as in StackStorm.
`parent` matches direct children, `ancestor` descendants at every depth.
StackStorm's event names are accepted too: `st2.execution__create` is `execution__create`
(the `st2.` prefix is dropped), and `action_refs` / `execution_ids` are aliases of `action` /
`execution` (folded in `streaming.params.QUERY_ALIASES`).
"""

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from executions.models import ExecutionStatus
from executions.problems import is_ulid
from streaming.db import run_db
from streaming.frames import ALL_EVENTS, LIFECYCLE_EVENTS, OUTPUT_EVENT
from streaming.params import Source

DEFAULT_EVENTS = frozenset(LIFECYCLE_EVENTS)
ST2_PREFIX = "st2."


def _allows(allowed: frozenset[str] | None, value: Any) -> bool:
    return allowed is None or value in allowed


@dataclass(frozen=True)
class EventFilter:
    events: frozenset[str] = DEFAULT_EVENTS  # concrete names, globs already expanded
    tenants: frozenset[str] | None = None  # slugs
    actions: frozenset[str] | None = None  # refs
    statuses: frozenset[str] | None = None
    executions: frozenset[str] | None = None
    parents: frozenset[str] | None = None
    ancestors: frozenset[str] | None = None  # descendants at every depth of these
    # The descendants of `ancestors` known so far: loaded when the stream opens
    # (`load_descendants`), then learned from each event whose parent is one of them.
    descendants: set[str] = field(default_factory=set, compare=False)

    def load_descendants(self) -> None:
        """Read the current descendants of `ancestors` (sync: run it in the stream pool)."""
        from streaming.family_reads import descendant_ids

        if self.ancestors is not None:
            self.descendants.update(descendant_ids(self.ancestors))

    def _in_family(self, execution_id: str | None, parent: str | None) -> bool:
        """Is the execution a descendant of an ancestor? (Learns it when its parent is.)"""
        if self.ancestors is None:
            return True
        if execution_id in self.descendants:
            return True
        if parent is not None and (parent in self.ancestors or parent in self.descendants):
            if execution_id is not None:
                self.descendants.add(execution_id)
            return True
        return False

    @property
    def wants_output(self) -> bool:
        return OUTPUT_EVENT in self.events

    @property
    def wants_lifecycle(self) -> bool:
        return not self.events.isdisjoint(LIFECYCLE_EVENTS)

    @property
    def needs_parent(self) -> bool:
        """Output chunks do not name their parent: matching them needs a lookup."""
        return self.parents is not None or self.ancestors is not None

    def matches_event(self, event: str, payload: dict[str, Any]) -> bool:
        in_family = self._in_family(payload.get("id"), payload.get("parent"))  # learns first
        return (
            in_family
            and event in self.events
            and _allows(self.tenants, payload.get("tenant"))
            and _allows(self.actions, payload.get("action_ref"))
            and _allows(self.statuses, payload.get("status"))
            and _allows(self.executions, payload.get("id"))
            and _allows(self.parents, payload.get("parent"))
        )

    def matches_output(
        self, tenant: str | None, execution_id: str, action_ref: str | None, parent: str | None
    ) -> bool:
        """`status` does not apply: output is produced while an execution runs."""
        return (
            self.wants_output
            and _allows(self.tenants, tenant)
            and _allows(self.actions, action_ref)
            and _allows(self.executions, execution_id)
            and _allows(self.parents, parent)
            and self._in_family(execution_id, parent)
        )


def _event_names(source: Source) -> frozenset[str]:
    patterns = source.names("events")
    if patterns is None:
        return DEFAULT_EVENTS
    names: set[str] = set()
    for given in sorted(patterns):
        pattern = given.removeprefix(ST2_PREFIX)
        matched = fnmatch.filter(ALL_EVENTS, pattern)
        if not matched:
            source.error("events", f"{given!r} names no event ({', '.join(ALL_EVENTS)})", given)
        names.update(matched)
    return frozenset(names)


def _execution_ids(source: Source, name: str) -> frozenset[str] | None:
    ids = source.names(name)
    if ids is None:
        return None
    for value in sorted(ids):
        if not is_ulid(value):
            source.error(name, "must be execution ids (26-character ULIDs)", value)
    return frozenset(value.upper() for value in ids)


async def load_descendants(flt: EventFilter) -> None:
    """Read the current descendants of an `ancestor` filter; call it once subscribed and
    before any event is handled (the stream's `started`), so none is missed."""
    if flt.ancestors is not None:
        await run_db(flt.load_descendants)


def event_filter(source: Source) -> EventFilter:
    """The filters in `source` (call `source.check()` after)."""
    statuses = source.names("status")
    for status in sorted(statuses or ()):
        if status not in ExecutionStatus.values:
            source.error("status", f"must be among {', '.join(ExecutionStatus.values)}", status)
    return EventFilter(
        events=_event_names(source),
        tenants=source.names("tenant"),
        actions=source.names("action"),
        statuses=statuses,
        executions=_execution_ids(source, "execution"),
        parents=_execution_ids(source, "parent"),
        ancestors=_execution_ids(source, "ancestor"),
    )
