"""What streams send, independent of the transport (SSE, plain text, WebSocket)."""

from dataclasses import dataclass, field
from typing import Any

OUTPUT_EVENT = "execution.output__create"
CREATE_EVENT = "execution__create"
UPDATE_EVENT = "execution__update"
LIFECYCLE_EVENTS = (CREATE_EVENT, UPDATE_EVENT)
ALL_EVENTS = (*LIFECYCLE_EVENTS, OUTPUT_EVENT)


@dataclass(frozen=True)
class Frame:
    """One event: its name, its cursor (`id`, when it moves one) and its JSON data."""

    event: str
    data: dict[str, Any]
    id: int | str | None = None  # a seq or event token; a family position (family_ids.py)
    execution: str | None = None
    # Encodings of this frame by format (SSE bytes, WebSocket text): a live batch's frames
    # are shared by every local stream, so each is encoded once per process, not per viewer.
    encoded: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


def output_frame(chunk: dict[str, Any], *, with_id: bool = True) -> Frame:
    """A chunk; its `id` is its seq on a per-execution stream (the global stream has none)."""
    return Frame(
        OUTPUT_EVENT, chunk, id=chunk["seq"] if with_id else None, execution=chunk["execution_id"]
    )


def gap_frame(execution_id: str, from_seq: int, to_seq: int, reason: str) -> Frame:
    """Chunks `from_seq..to_seq` will not be sent: `reason` is `from`, `replay_limit` or `purged`."""
    data = {"execution_id": execution_id, "from_seq": from_seq, "to_seq": to_seq, "reason": reason}
    return Frame("gap", data, execution=execution_id)


def done_frame(execution_id: str, data: dict[str, Any]) -> Frame:
    return Frame("done", data, execution=execution_id)


def live_output_frames(message: dict[str, Any], *, with_id: bool = True) -> list[Frame]:
    """The frames of a live output batch, made once and shared by every stream of the
    process that receives this message (the hub hands all of them the same dict)."""
    key = "_frames" if with_id else "_frames_no_id"
    frames = message.get(key)
    if frames is None:
        frames = message[key] = [output_frame(c, with_id=with_id) for c in message["chunks"]]
    return frames
