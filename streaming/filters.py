"""The global stream's filters: parsed once, applied alike to live messages and log rows.

Every filter is optional; given ones combine with AND, and each takes a comma list (OR
within it). `events` takes names or `*` globs; output events are opt-in, as in StackStorm.
"""

import fnmatch
from dataclasses import dataclass
from typing import Any

from executions.models import ExecutionStatus
from streaming.frames import ALL_EVENTS, LIFECYCLE_EVENTS, OUTPUT_EVENT
from streaming.params import ULID_RE, Source

DEFAULT_EVENTS = frozenset(LIFECYCLE_EVENTS)


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

    @property
    def wants_output(self) -> bool:
        return OUTPUT_EVENT in self.events

    @property
    def wants_lifecycle(self) -> bool:
        return not self.events.isdisjoint(LIFECYCLE_EVENTS)

    @property
    def needs_parent(self) -> bool:
        """Output chunks do not name their parent: matching them needs a lookup."""
        return self.parents is not None

    def matches_event(self, event: str, payload: dict[str, Any]) -> bool:
        return (
            event in self.events
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
        )


def _event_names(source: Source) -> frozenset[str]:
    patterns = source.names("events")
    if patterns is None:
        return DEFAULT_EVENTS
    names: set[str] = set()
    for pattern in sorted(patterns):
        matched = fnmatch.filter(ALL_EVENTS, pattern)
        if not matched:
            source.error("events", f"{pattern!r} names no event ({', '.join(ALL_EVENTS)})", pattern)
        names.update(matched)
    return frozenset(names)


def _execution_ids(source: Source, name: str) -> frozenset[str] | None:
    ids = source.names(name)
    if ids is None:
        return None
    for value in sorted(ids):
        if not ULID_RE.fullmatch(value):
            source.error(name, "must be execution ids (26-character ULIDs)", value)
    return frozenset(value.upper() for value in ids)


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
    )
