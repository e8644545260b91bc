"""The hub's direct path: on its tick, the hub writes a caught-up stream's live output itself.

    hub dispatch (many streams) ─▶ a message of a group with such streams is kept once per
      group for the tick, not put into each stream's inbox
    hub tick ─▶ for each such stream of a group that got messages since the last tick:
      parked in its inbox's `get` with nothing in the inbox, no control waiting, transport
      under the buffer bound ─▶ the leading output batches that continue its position
      (chunks inline): encode (once per tick for every stream at the same position, filter
      and format), write to the transport at once, advance the position
      the rest (a lifecycle event, a gap to backfill), or all of them for a busy, paused or
      closing stream ─▶ into the stream's inbox, and wake its task, which handles them the
      usual way

With a thousand viewers of a busy execution, waking each stream's task for each tick (a
future, a task step, the cursor's loop, an ASGI `send` awaited, a drain check) was most of
the web process's CPU (docs/benchmarks-fanout.md); so was putting each message into each
inbox for the tick to take it out again. The direct path is one function call and one
transport write per stream per tick. It needs the transport (`FlowControl`, set up
by `manage.py serve`); without it (another server, tests' communicators) streams wake as
before. Exactness is the cursor's rule, applied here with the same function
(`batch_frames`): a batch at or below the position is dropped, one past position + 1
goes back to the stream's task, which reads the log.
"""

from collections.abc import Callable
from dataclasses import dataclass

from streaming.flow import FlowControl
from streaming.frames import Frame, live_output_frames
from streaming.live import KeepAlive, Message


@dataclass(frozen=True, slots=True)
class DirectSink:
    """How a stream's format writes for the hub: `format` names the encoding (equal formats
    share a tick's encoding), `encode` makes the bytes, `flow` writes them."""

    format: str
    encode: Callable[[list[Frame]], bytes]
    flow: FlowControl
    clock: KeepAlive


def continues(message: Message, position: int) -> bool:
    """Whether a live batch can be sent from its message alone to a stream at `position`: its
    chunks came inline (not too big) and no batch is missing before it."""
    return message["chunks"] is not None and message["first_seq"] <= position + 1


def batch_frames(message: Message, position: int, wanted: str | None) -> list[Frame] | None:
    """A live batch's frames past `position` (of type `wanted`, if given); None when the log
    must be read instead: no chunks inline (too big) or a batch missing before it."""
    if not continues(message, position):
        return None
    frames = live_output_frames(message)
    if message["first_seq"] <= position or wanted is not None:
        frames = [
            frame
            for frame in frames
            if frame.data["seq"] > position
            and (wanted is None or frame.data["output_type"] == wanted)
        ]
    return frames


def continuing(messages: list[Message], position: int) -> tuple[int, int]:
    """How many leading `messages` are output batches that continue `position` (duplicates at
    or below it count: they are dropped), and the position after them."""
    for index, message in enumerate(messages):
        if message.get("type") != "output.batch":
            return index, position
        last = message["last_seq"]
        if last > position:
            if not continues(message, position):
                return index, position
            position = last
    return len(messages), position


def encode_batches(
    sink: DirectSink, messages: list[Message], start: int, wanted: str | None, shared: dict
) -> bytes:
    """The bytes of `messages` for a stream at `start`: made once per tick for every stream
    with the same format, position and type filter (`shared` lives for one tick)."""
    key = (sink.format, start, wanted, *map(id, messages))
    body = shared.get(key)
    if body is None:
        frames: list[Frame] = []
        position = start
        for message in messages:
            frames += batch_frames(message, position, wanted) or ()
            # Never backwards: a batch the stream already has (it read the log meanwhile) may
            # come before one that continues it.
            position = max(position, message["last_seq"])
        body = shared[key] = sink.encode(frames) if frames else b""
    return body
