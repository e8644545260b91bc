"""One client's cursor over a whole family: an execution and its descendants at every depth.

    subscribe (the root's group, and its tenant's events group: new children announce
      themselves there) ─▶ snapshot the family (states first, then the descendants, so a
      child created before a finished parent's end is always found) ─▶ follow every
      member's group ─▶ `child_started` for members the client has not heard of, the
      members' stored output merged by (timestamp, execution_id, seq), `child_finished` for
      the finished and drained ones
      ─▶ live batches of any member, in arrival (commit) order; a seq jump backfills that
         member from the log; a lifecycle event of the family, a resync, an overflowing
         inbox or an access verdict ─▶ snapshot again (new members join the same way)
      ─▶ the root finished, every member finished and everything sent ─▶ `done`

The cursor is a position per member the client has heard of (streaming/family_ids.py): the
highest seq sent, and whether its `child_finished` was. Every event's id is that cursor, so a
client resuming with its last id gets exactly the rest whatever the runners' clocks and
commit order (docs/streaming-family.md says why no single number can do that with today's
log). A member is announced (`child_started`) once it left `scheduled`.
"""

import heapq
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from executions import publish
from executions.models.executions import ExecutionStatus
from streaming.db import run_db
from streaming.family_ids import Position, Resume, fold, format_cursor, match_watermark
from streaming.family_reads import (
    MAX_MEMBERS,
    MemberRow,
    TooBig,
    family_snapshot,
    name_of,
    read_member_page,
)
from streaming.frames import OUTPUT_EVENT, Frame, done_frame, live_output_frames
from streaming.live import Control, LiveFeed, Message, Overflow
from streaming.output_cursor import AccessRevoked
from streaming.params import Problem
from streaming.replay import PAGE_ROWS, OutputState
from streaming.shared_reads import shared_page

Send = Callable[[list[Frame]], Awaitable[None]]

CHILD_STARTED = "child_started"
CHILD_FINISHED = "child_finished"
# Not yet announced: a member waiting for a runner may never start (canceled first).
WAITING = frozenset({ExecutionStatus.REQUESTED, ExecutionStatus.SCHEDULED})
# A merge holds a page of each member with output to send: with many such members, pages
# shrink (to this at the least) so the merge holds about PAGE_ROWS chunks, not one page each.
MIN_MEMBER_PAGE_ROWS = 50
TOO_BIG = f"The family has more than {MAX_MEMBERS} executions: follow a part of it."


# --- the stream -----------------------------------------------------------------------------


@dataclass
class Member:
    row: MemberRow
    path: str
    state: OutputState | None = None
    buffer: deque[Frame] = field(default_factory=deque)  # a page being merged
    more: bool = False  # the page in `buffer` was full: more may follow up to the target


def _key(frame: Frame) -> tuple[datetime, str, int]:
    data = frame.data
    return datetime.fromisoformat(data["timestamp"]), data["execution_id"], data["seq"]


class FamilyCursor:
    """Runs one family's stream until `done` (returns) or revocation (AccessRevoked)."""

    def __init__(
        self,
        root: MemberRow,
        resume: Resume | None,
        output_type: str | None,
        send: Send,
        keepalive: Callable[[], Awaitable[None]] | None = None,
    ):
        self.root_id = root.id
        self.members: dict[str, Member] = {root.id: Member(root, name_of(root))}
        self.resume = resume or Resume()
        self.positions: dict[str, Position] = {
            root.id: self.resume.positions.get(root.id, Position())
        }
        self.folded: frozenset[str] = frozenset()  # closed members summed up by the watermark
        self.mark = ""
        self.output_type = output_type
        self.live: LiveFeed | None = None
        self.send = send
        self.keepalive = keepalive
        self._out: list[Frame] = []
        self._page_rows = PAGE_ROWS

    def accept(self, message: Message) -> bool:
        """In the hub's dispatch: of the tenant's lifecycle events, only the family's."""
        if message.get("type") != "execution.event":
            return True  # output comes only through the members' own groups
        payload = message.get("payload") or {}
        return payload.get("id") in self.members or payload.get("parent") in self.members

    async def run(self, live: LiveFeed, started: Callable[[OutputState], Awaitable[None]]) -> None:
        """`live` must follow the root's group and its tenant's events group already (with
        `accept` as its filter). Problem 422 (before `started`) when the family is too big."""
        self.live = live
        try:
            await self._discover()
        except TooBig:
            raise Problem(422, TOO_BIG) from None
        root = self.members[self.root_id].state
        assert root is not None
        exact = self._unfold_resume()
        await started(root)
        if not exact:
            self._emit("reset", {"reason": "The id cannot be resumed exactly: from the start."})
        await self._deliver()
        while not await self._finish_if_done():
            stale = False
            for item in await live.inbox.take(self.keepalive):
                stale = await self._handle(item) or stale
            if stale:  # one snapshot for a burst of lifecycle events, not one per event
                await self._refresh()
            await self._flush()

    async def _handle(self, item: Message | Overflow | Control) -> bool:
        """Handle one item; True when the family must be read again."""
        if isinstance(item, Control) and item.kind == "access":
            reason = item.value.revoked(self.root_id)
            if reason is not None:
                await self._flush()
                raise AccessRevoked(reason, 404 if item.value.allowed else 401)
            return True
        if isinstance(item, (Control, Overflow)) or item["type"] == "execution.event":
            return True
        if item["type"] == "output.batch":
            await self._on_batch(item)
        return False

    # --- frames -----------------------------------------------------------------------------
    def _emit(self, event: str, data: dict[str, Any]) -> None:
        cursor = format_cursor(self.root_id, self.positions, self.folded, self.mark)
        self._out.append(Frame(event, data, id=cursor, execution=self.root_id))

    async def _flush(self) -> None:
        if self._out:
            frames, self._out = self._out, []
            await self.send(frames)

    def _member_data(self, member: Member) -> dict[str, Any]:
        return {
            "execution_id": member.row.id,
            "parent": member.row.parent_id,
            "task_name": member.row.task_name,
            "path": member.path,
        }

    def _emit_chunk(self, member: Member, frame: Frame) -> None:
        self.positions[member.row.id].seq = frame.data["seq"]
        data = {**frame.data, "task_name": member.row.task_name, "path": member.path}
        self._emit(OUTPUT_EVENT, data)

    # --- snapshots --------------------------------------------------------------------------
    async def _refresh(self) -> None:
        """Read the family again: new members join, every member catches up, finished
        ones close."""
        try:
            await self._discover()
        except TooBig:
            await self._flush()
            raise AccessRevoked(TOO_BIG, 422) from None
        await self._deliver()

    async def _discover(self) -> None:
        """Snapshot the family; repeats while it finds members (joining their groups before
        reading their state again: subscribe first)."""
        while True:
            states, rows = await run_db(family_snapshot, self.root_id, frozenset(self.members))
            if self.root_id not in states:
                await self._flush()
                raise AccessRevoked("The execution no longer exists.")
            joined = [row for row in rows if row.id not in self.members]
            for row in joined:
                parent = self.members.get(row.parent_id or "")
                path = f"{parent.path}.{name_of(row)}" if parent else name_of(row)
                self.members[row.id] = Member(row, path)
            for member_id, state in states.items():
                if member_id in self.members:
                    self.members[member_id].state = state
            if not joined:
                return
            assert self.live is not None
            await self.live.set_groups(self._groups())

    async def _deliver(self) -> None:
        self._announce()
        await self._catch_up(
            {mid: m.state.last_seq for mid, m in self.members.items() if m.state is not None}
        )
        self._close_finished()

    def _groups(self) -> list[str]:
        root = self.members[self.root_id].state
        assert root is not None
        groups = [publish.execution_group(member_id) for member_id in self.members]
        return [*groups, publish.tenant_events_group(root.tenant_id)]

    def _unfold_resume(self) -> bool:
        """Give the members the resumed watermark folded their positions back (they are
        closed); False when that cannot be told exactly: the stream starts over."""
        mark = self.resume.watermark
        if mark is None:
            return True
        listed = self.resume.positions
        candidates = [
            member_id
            for member_id, member in self.members.items()
            if member_id != self.root_id
            and member_id <= mark.below
            and member_id not in listed
            and member.state is not None
            and member.state.finished
        ]
        folded = match_watermark(mark, candidates)
        if folded is None:
            self.resume = Resume()
            self.positions = {self.root_id: Position()}
            return False
        for member_id in folded:
            state = self.members[member_id].state
            assert state is not None
            listed[member_id] = Position(state.last_seq, closed=True)
        return True

    def _announce(self) -> None:
        """`child_started` for the members this client has not heard of (creation order),
        once they left `scheduled`."""
        for member_id, member in self.members.items():
            if member_id in self.positions or member.state is None:
                continue
            resumed = self.resume.positions.get(member_id)
            if resumed is None and member.state.status in WAITING:
                continue
            self.positions[member_id] = resumed if resumed is not None else Position()
            if resumed is None:
                data = self._member_data(member)
                data.update(action_ref=member.row.action_ref, status=member.state.status)
                self._emit(CHILD_STARTED, data)
        self.folded, self.mark = fold(self.root_id, self.members, self.positions)

    def _close_finished(self) -> None:
        for member_id, member in self.members.items():
            position = self.positions.get(member_id)
            state = member.state
            if member_id == self.root_id or position is None or position.closed:
                continue
            if state is None or not state.finished or position.seq < state.last_seq:
                continue
            position.closed = True
            data = self._member_data(member)
            data.update(status=state.status, exit_code=state.exit_code, final_seq=state.last_seq)
            self.folded, self.mark = fold(self.root_id, self.members, self.positions)
            self._emit(CHILD_FINISHED, data)

    # --- output -----------------------------------------------------------------------------
    async def _catch_up(self, targets: dict[str, int]) -> None:
        """Every chunk past each member's position up to its target, from the log, merged
        by (timestamp, execution_id, seq); each member's own chunks stay in seq order."""
        heads: list[tuple[tuple[datetime, str, int], str]] = []
        behind = sum(1 for m, upto in targets.items() if self._behind(m, upto))
        self._page_rows = max(MIN_MEMBER_PAGE_ROWS, PAGE_ROWS // max(1, behind))
        for member_id, upto in targets.items():
            member = self.members[member_id]
            if self._skip_purged(member, upto):
                continue
            if self.positions[member_id].seq < upto and await self._fill(member, upto):
                heapq.heappush(heads, (_key(member.buffer[0]), member_id))
        while heads:
            _, member_id = heapq.heappop(heads)
            member = self.members[member_id]
            self._emit_chunk(member, member.buffer.popleft())
            if len(self._out) >= PAGE_ROWS:
                await self._flush()  # a page at a time: memory stays bounded
            upto = targets[member_id]
            if not member.buffer and member.more:
                await self._fill(member, upto)
            if member.buffer:
                heapq.heappush(heads, (_key(member.buffer[0]), member_id))
            else:
                position = self.positions[member_id]
                position.seq = max(position.seq, upto)  # the rest is of another type
        await self._flush()

    async def _fill(self, member: Member, upto: int) -> bool:
        """The next page of `member` into its buffer; False (position moved to `upto`) when
        nothing is left (of the wanted type)."""
        assert member.state is not None
        position = self.positions[member.row.id]
        rows, wanted = self._page_rows, self.output_type
        if rows >= PAGE_ROWS:  # the page every viewer of this execution reads, read once
            frames = await shared_page(member.state, position.seq, upto, wanted)
        else:
            frames = await run_db(read_member_page, member.state, position.seq, upto, wanted, rows)
        member.more = len(frames) == rows
        member.buffer.extend(frames)
        if not frames:
            position.seq = max(position.seq, upto)
        return bool(frames)

    def _behind(self, member_id: str, upto: int) -> bool:
        position = self.positions.get(member_id)
        return position is not None and position.seq < upto

    def _skip_purged(self, member: Member, upto: int) -> bool:
        """True when the member's log cannot be read: unknown state, or purged (a `gap`)."""
        state, position = member.state, self.positions.get(member.row.id)
        if state is None or position is None:
            return True
        if state.output_purged_at is None:
            return False
        if position.seq < upto:
            gap = {"from_seq": position.seq + 1, "to_seq": upto, "reason": "purged"}
            position.seq = upto
            self._emit("gap", {**self._member_data(member), **gap})
        return True

    async def _on_batch(self, message: Message) -> None:
        member = self.members.get(message["execution_id"])
        position = self.positions.get(message["execution_id"])
        if member is None or position is None:
            return  # not announced yet: the snapshot that announces it reads its log
        first, last, chunks = message["first_seq"], message["last_seq"], message["chunks"]
        if last <= position.seq:
            return
        if chunks is None or first > position.seq + 1:
            await self._catch_up({member.row.id: last})  # too big to inline, or a lost batch
            return
        for frame in live_output_frames(message):
            seq = frame.data["seq"]
            if seq > position.seq and self.output_type in (None, frame.data["output_type"]):
                self._emit_chunk(member, frame)
        position.seq = last

    async def _finish_if_done(self) -> bool:
        root = self.members[self.root_id].state
        assert root is not None
        if not root.finished or self.positions[self.root_id].seq < root.last_seq:
            return False
        for member_id in self.members:
            position = self.positions.get(member_id)
            if member_id != self.root_id and (position is None or not position.closed):
                return False
        data = {**root.done_data(), "executions": len(self.members)}
        self._out.append(done_frame(self.root_id, data))
        await self._flush()
        return True
