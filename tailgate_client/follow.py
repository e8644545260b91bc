"""Following an execution's output from its first line, and its descendants' at every depth.

    follow(E):
      open E's output stream from seq 1 (after a drop or a descent: Last-Event-ID = last seq)
      each event:
        output ─▶ yield it
                  E is a parent (PARENT_RUNNERS) and the line names children not
                  followed yet?
                    close E's stream (its position is kept)
                    each child it names: child_started, follow(child), child_finished
                    reopen E's stream after its last seq
        gap    ─▶ yield it (`reason`: from, replay_limit or purged)
        done   ─▶ follow the children still not followed, then yield done

A workflow writes a progress line naming each child's id right after creating it
(`Task T started (pack.action, execution 01J…)`), as a multi-host remote run does for
each host (`Host H: execution 01J…`), so a child is followed at the line that
names it, and the story prints in the order it happened even when the tail starts late and
later children already exist. The id (a ULID) is the anchor, not the wording; a child no
line names is followed when its workflow ends. Children are shown one after another, each
whole, so the story reads in order even when children run side by side.

Output of a workflow is read whole and filtered by `type` here: its progress lines are
`other`, and they are what reveals the children.
"""

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tailgate_client.streams import StreamEvent

if TYPE_CHECKING:
    from tailgate_client.client import Client

OUTPUT = "execution.output__create"
# Runners whose executions have children to follow: a workflow's tasks, and a remote run's
# hosts when it has several (its `Host H: execution 01J…` lines name them).
PARENT_RUNNERS = frozenset({"workflow", "remote-shell-cmd", "remote-shell-script"})
# The API's largest replay window: from the first line in as few round trips as possible.
REPLAY_LIMIT = 50_000
# An execution id: 26 Crockford base32 characters, on word boundaries.
ULID_RE = re.compile(r"\b[0-9A-HJKMNP-TV-Z]{26}\b", re.IGNORECASE)


def follow(
    client: "Client", execution_id: str, type: str | None = None, include_children: bool = False
) -> Iterator[StreamEvent]:
    """Output events of `execution_id` (and its descendants), `done` last."""
    execution = client.executions.get(execution_id)
    return _follow(client, execution, type, include_children, depth=0)


def _follow(
    client: "Client", execution: dict[str, Any], type: str | None, children: bool, depth: int
) -> Iterator[StreamEvent]:
    workflow = children and execution["runner_type"] in PARENT_RUNNERS
    params = {"from": 1, "replay_limit": REPLAY_LIMIT, "type": None if workflow else type}
    stream = client.stream(f"/executions/{execution['id']}/output/stream", params, end="done")
    followed: set[str] = set()
    while True:
        events = iter(stream)
        new: list[dict[str, Any]] = []
        for event in events:
            if event.event == OUTPUT:
                if type is None or event.data.get("output_type") == type:
                    yield event
                if workflow and (new := _named_children(client, execution["id"], event, followed)):
                    break
            elif event.event == "done":
                if workflow:
                    for child in _new_children(client, execution["id"], followed):
                        yield from _follow_child(client, child, type, depth + 1)
                yield event
                return
            else:
                yield event
        events.close()  # pauses this stream while its children are followed
        for child in new:
            yield from _follow_child(client, child, type, depth + 1)


def _named_children(
    client: "Client", execution_id: str, event: StreamEvent, followed: set[str]
) -> list[dict[str, Any]]:
    """Children not followed yet whose id this output line names, in the line's order."""
    ids = [i.upper() for i in ULID_RE.findall(event.data.get("data", ""))]
    if not set(ids) - followed:
        return []  # most lines name no new child: no request
    children = {c["id"]: c for c in client.executions.children(execution_id)}
    named = [children[i] for i in dict.fromkeys(ids) if i in children and i not in followed]
    followed.update(c["id"] for c in named)
    return named


def _new_children(client: "Client", execution_id: str, followed: set[str]) -> list[dict[str, Any]]:
    new = [c for c in client.executions.children(execution_id) if c["id"] not in followed]
    followed.update(c["id"] for c in new)
    return new


def _follow_child(
    client: "Client", child: dict[str, Any], type: str | None, depth: int
) -> Iterator[StreamEvent]:
    about = {
        "execution_id": child["id"],
        "parent": child["parent"],
        "task_name": child.get("task_name") or child["action_ref"],
        "action_ref": child["action_ref"],
        "depth": depth,
    }
    yield StreamEvent("child_started", None, about)
    final: dict[str, Any] = {}
    for event in _follow(client, child, type, True, depth):
        if event.event == "done":
            final = event.data
        else:
            yield event
    finished = {**about, "status": final.get("status"), "exit_code": final.get("exit_code")}
    yield StreamEvent("child_finished", None, finished)
