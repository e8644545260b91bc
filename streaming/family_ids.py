"""The ids of a family stream's events: what the client has, written so it can resume.

    01ROOT…:120,~01J4…K.37.9f3a61c2,01J5…A:12,01J5…B:0,01J4…Z:40!
    └ root: seq sent ┘└ watermark ──────┘└ members listed: seq sent, `!` = child_finished sent ┘

Per-execution `seq` is the only order the log keeps that no later commit can break (runners
commit when they can, and their clocks are their own), so the cursor is a position per
member. To keep ids short whatever the family's size, the members closed in one run from the
oldest (by id, i.e. creation) are folded into a watermark `~<last id>.<count>.<digest>`:
"every member up to this id that is not listed is closed: `count` of them, these ones (the
digest of their ids)". Listed are the root, the members running or closed out of turn, and
any member created late below the watermark. So an id grows with the members running at
once, not with the family.

On resume, the candidates for the watermark are the finished members up to its id that are
not listed; a member created below it after the id was sent and finished since is the one
way they differ from what the client has, and the digest says which (`match_watermark`).
"""

import hashlib
import itertools
from dataclasses import dataclass, field

from executions.problems import is_ulid

WATERMARK = "~"
CLOSED = "!"
# Members created below the watermark after the id was sent (and finished since) that a
# resume still sorts out by the digest; past it the cursor is answered with `reset`.
LATE_MEMBERS_SEARCHED = 2
# Longest id accepted back: a few hundred listed members (each about 30 characters).
MAX_CURSOR_CHARS = 16 * 1024


@dataclass
class Position:
    seq: int = 0
    closed: bool = False  # `child_finished` was sent


@dataclass(frozen=True)
class Watermark:
    below: str  # the highest member id folded in
    count: int
    digest: str


@dataclass
class Resume:
    """A parsed id: listed positions, and the watermark (None: nothing folded)."""

    positions: dict[str, Position] = field(default_factory=dict)
    watermark: Watermark | None = None


def digest(member_ids) -> str:
    return hashlib.sha256(",".join(sorted(member_ids)).encode()).hexdigest()[:8]


def parse_cursor(text: str) -> Resume:
    """An event id back into a Resume; ValueError (with a message for the client) if it is
    not one."""
    if len(text) > MAX_CURSOR_CHARS:
        raise ValueError(f"is longer than {MAX_CURSOR_CHARS} characters")
    resume = Resume()
    for entry in text.strip().split(","):
        if entry.startswith(WATERMARK):
            resume.watermark = _parse_watermark(entry[1:])
            continue
        member, sep, seq = entry.partition(":")
        closed = seq.endswith(CLOSED)
        seq = seq.removesuffix(CLOSED)
        if not sep or not is_ulid(member) or not seq.isdigit() or len(seq) > 18:
            raise ValueError("is not the id of a family event (execution:seq,…)")
        resume.positions[member.upper()] = Position(int(seq), closed)
    return resume


def _parse_watermark(text: str) -> Watermark:
    below, _, rest = text.partition(".")
    count, _, hashed = rest.partition(".")
    if not is_ulid(below) or not count.isdigit() or len(count) > 9 or len(hashed) != 8:
        raise ValueError("has a watermark that is not one (~id.count.digest)")
    return Watermark(below.upper(), int(count), hashed.lower())


def fold(root_id: str, member_ids, positions: dict[str, Position]) -> tuple[frozenset[str], str]:
    """The members to fold (closed, in one run from the oldest of all the members the stream
    knows, heard of or not) and the watermark entry."""
    run: list[str] = []
    for member_id in sorted(m for m in member_ids if m != root_id):
        position = positions.get(member_id)
        if position is None or not position.closed:
            break
        run.append(member_id)
    if not run:
        return frozenset(), ""
    return frozenset(run), f"{WATERMARK}{run[-1]}.{len(run)}.{digest(run)}"


def format_cursor(
    root_id: str, positions: dict[str, Position], folded: frozenset[str], mark: str
) -> str:
    root = positions[root_id]
    parts = [f"{root_id}:{root.seq}"]
    if mark:
        parts.append(mark)
    parts += [
        f"{member_id}:{p.seq}{CLOSED if p.closed else ''}"
        for member_id, p in positions.items()
        if member_id != root_id and member_id not in folded
    ]
    return ",".join(parts)


def match_watermark(mark: Watermark, candidates: list[str]) -> list[str] | None:
    """The members the watermark folded, among the candidates; None when no subset fits."""
    extra = len(candidates) - mark.count
    if extra < 0 or extra > LATE_MEMBERS_SEARCHED:
        return None
    for folded in itertools.combinations(sorted(candidates), mark.count):
        if digest(folded) == mark.digest:
            return list(folded)
    return None
