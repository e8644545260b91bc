"""One execution's output: as plain text, and as Server-Sent Events.

    GET /api/v1/executions/{id}/output?type=&include_children=   text/plain, from the start
    GET /api/v1/executions/{id}/output/stream?from=&replay_limit=&type=   (+ Last-Event-ID)
    GET /api/v1/executions/{id}/output/stream?include_children=true&type=  (+ Last-Event-ID)

Both are an OutputCursor over the execution's log, written in two formats; with
`include_children` a FamilyCursor over its family's logs (docs/streaming-family.md).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

from executions.models import OutputType
from executions.problems import error
from streaming import sse
from streaming.direct import DirectSink
from streaming.endpoints.base import StreamEndpoint
from streaming.family_ids import Resume, parse_cursor
from streaming.frames import OUTPUT_EVENT, Frame
from streaming.output_cursor import AccessRevoked
from streaming.pages import SSE, TEXT, ChunkPage
from streaming.params import OutputWindow, Source, header, last_event_id, output_window
from streaming.replay import OutputState

TRUE_WORDS = ("true", "1")
FALSE_WORDS = ("false", "0", "")


@dataclass(frozen=True)
class OutputRequest:
    execution_id: str
    window: OutputWindow
    include_children: bool = False
    resume: Resume | None = field(default=None, compare=False)


def include_children(source: Source) -> bool:
    """`include_children=true` (or 1); false, 0 or empty: no. Anything else is an error."""
    value = source.get("include_children")
    if value is None or value is False:
        return False
    if value is True:
        return True
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    source.error("include_children", "must be true or false (or 1 or 0)", value)
    return False


def family_cursor(source: Source, raw: str | None, location: str) -> Resume | None:
    """A family stream's resume cursor (the id of the last event received); None: none."""
    if raw is None or not str(raw).strip():
        return None
    if not isinstance(raw, str):
        source.errors.append(error(location, "must be the id of a family event", raw))
        return None
    try:
        return parse_cursor(raw)
    except ValueError as exc:
        source.errors.append(error(location, str(exc), raw))
        return None


class OutputEndpoint(StreamEndpoint):
    """What both formats share: find the execution, then the session's output stream."""

    __slots__ = ()
    has_keepalive = False  # plain text has no comment syntax to keep a quiet stream open
    page_kind: str | None = None  # how the log is read for this format (streaming/pages.py)

    def window(self, source: Source) -> OutputWindow:
        raise NotImplementedError

    def family_resume(self, source: Source) -> Resume | None:
        return None

    def headers(self, state: OutputState) -> list[tuple[bytes, bytes]]:
        raise NotImplementedError

    async def send_frames(self, frames: Sequence[Frame | ChunkPage]) -> None:
        raise NotImplementedError

    async def opened(self, state: OutputState) -> None:
        await self.start(self.headers(state))

    async def revoked(self, reason: str) -> None:
        """The caller lost access mid-stream: the response ends (a reconnect gets 404)."""

    async def keepalive(self) -> None:
        return None

    async def prepare(self, user) -> OutputRequest:
        requested = self.scope["url_route"]["kwargs"]["execution_id"]
        source = Source.from_query(self.scope)
        if include_children(source):
            window = OutputWindow(output_type=source.choice("type", OutputType.values))
            resume = self.family_resume(source)
            source.check()
            execution_id = await self.session.visible_execution_id(requested)
            return OutputRequest(execution_id, window, True, resume)
        window = self.window(source)
        source.check()
        execution_id = await self.session.visible_execution_id(requested)
        return OutputRequest(execution_id, window)

    def encode_frames(self, frames: list[Frame]) -> bytes:
        """Live frames as this format writes them (the hub's direct path)."""
        raise NotImplementedError

    def sink(self) -> DirectSink | None:
        """What lets the hub write live output for this stream: only with the transport."""
        if self.flow is None or self.page_kind is None:
            return None
        return DirectSink(self.page_kind, self.encode_frames, self.flow, self.keepalive_clock)

    async def stream(self, request: OutputRequest) -> None:
        keepalive = self.keepalive_clock if self.has_keepalive else None
        try:
            if request.include_children:
                await self.session.family_output(
                    request.execution_id,
                    request.resume,
                    request.window.output_type,
                    self.send_frames,
                    self.opened,
                    keepalive,
                )
                return
            await self.session.output(
                request.execution_id,
                request.window,
                self.send_frames,
                self.opened,
                keepalive,
                self.page_kind,
                self.sink(),
            )
        except AccessRevoked as exc:
            await self.revoked(str(exc))


class OutputTextEndpoint(OutputEndpoint):
    """`text/plain`: every chunk's text from the first, live, ending when the execution ends.

    With `include_children`, each line starts with its execution's task path in brackets
    (`[deploy.build] …`); a line continued by a later chunk is prefixed once."""

    __slots__ = ("_at_line_start",)
    page_kind = TEXT

    def __init__(self, scope, receive, send):
        super().__init__(scope, receive, send)
        # (execution id, output type) → the last chunk of that stream ended its line
        self._at_line_start: dict[tuple[str, str], bool] = {}

    def window(self, source: Source) -> OutputWindow:
        output_type = source.choice("type", OutputType.values)
        return OutputWindow(from_seq=0, replay_limit=None, output_type=output_type)

    def headers(self, state: OutputState) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            (b"x-execution-id", state.execution_id.encode()),
        ]
        if state.output_purged_at is not None:
            # The body is empty because the output is gone, not because there was none.
            headers.append((b"x-output-purged-at", state.output_purged_at.isoformat().encode()))
        return headers

    async def send_frames(self, frames: Sequence[Frame | ChunkPage]) -> None:
        if len(frames) == 1 and isinstance(frames[0], ChunkPage):
            await self.write(frames[0].body)  # a replay page: no copy
            return
        await self.write(b"".join(self._text(item) for item in frames))

    def encode_frames(self, frames: list[Frame]) -> bytes:
        return b"".join(self._text(frame) for frame in frames)

    def _text(self, item: Frame | ChunkPage) -> bytes:
        if isinstance(item, ChunkPage):
            return item.body
        return self._frame_text(item).encode() if item.event == OUTPUT_EVENT else b""

    def _frame_text(self, frame: Frame) -> str:
        chunk = frame.data
        if "path" not in chunk:
            return chunk["data"]
        stream = (chunk["execution_id"], chunk["output_type"])
        prefix = f"[{chunk['path']}] " if self._at_line_start.get(stream, True) else ""
        self._at_line_start[stream] = chunk["data"].endswith("\n")
        return prefix + chunk["data"]


class OutputSSEEndpoint(OutputEndpoint):
    """SSE: `execution.output__create` (id = seq), `gap`, then `done`; keep-alive comments."""

    __slots__ = ()
    has_keepalive = True
    page_kind = SSE

    def window(self, source: Source) -> OutputWindow:
        return output_window(source, last_event_id(self.scope, source))

    def family_resume(self, source: Source) -> Resume | None:
        raw = header(self.scope, b"last-event-id")
        return family_cursor(source, raw, "header.Last-Event-ID")

    def headers(self, state: OutputState) -> list[tuple[bytes, bytes]]:
        return [*sse.HEADERS, (b"x-execution-id", state.execution_id.encode())]

    async def send_frames(self, frames: Sequence[Frame | ChunkPage]) -> None:
        if len(frames) == 1 and isinstance(frames[0], ChunkPage):
            await self.write(frames[0].body)  # a replay page: no copy
            return
        await self.write(b"".join(_sse(item) for item in frames))

    def encode_frames(self, frames: list[Frame]) -> bytes:
        return sse.encode_all(frames)

    async def opened(self, state: OutputState) -> None:
        await super().opened(state)
        await self.write(sse.preamble())

    async def keepalive(self) -> None:
        await self.write(sse.KEEPALIVE)

    async def revoked(self, reason: str) -> None:
        await self.send_frames([sse.revoked_frame(reason)])


def _sse(item: Frame | ChunkPage) -> bytes:
    return item.body if isinstance(item, ChunkPage) else sse.encode(item)
