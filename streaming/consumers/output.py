"""One execution's output: as plain text, and as Server-Sent Events.

    GET /api/v1/executions/{id}/output?type=            text/plain, from the first chunk
    GET /api/v1/executions/{id}/output/stream?from=&replay_limit=&type=   (+ Last-Event-ID)

Both are an OutputCursor over the execution's log, written in two formats.
"""

import asyncio
import contextlib
from dataclasses import dataclass

from executions import publish
from executions.models import OutputType
from rbac.access import NotVisible, access_execution, still_allowed
from streaming import sse
from streaming.consumers.base import StreamEndpoint
from streaming.db import run_db
from streaming.frames import OUTPUT_EVENT, Frame
from streaming.live import LiveFeed
from streaming.output_cursor import AccessRevoked, OutputCursor
from streaming.params import (
    OutputWindow,
    Source,
    execution_id_or_404,
    last_event_id,
    not_found,
    output_window,
)
from streaming.replay import OutputState, output_state


@dataclass(frozen=True)
class OutputRequest:
    user: object
    execution_id: str
    window: OutputWindow


class OutputEndpoint(StreamEndpoint):
    """What both formats share: find the execution, subscribe, run the cursor."""

    def window(self, source: Source) -> OutputWindow:
        raise NotImplementedError

    def headers(self, state: OutputState) -> list[tuple[bytes, bytes]]:
        raise NotImplementedError

    async def send_frames(self, frames: list[Frame]) -> None:
        raise NotImplementedError

    async def prepare(self, user) -> OutputRequest:
        requested = self.scope["url_route"]["kwargs"]["execution_id"]
        source = Source.from_query(self.scope)
        window = self.window(source)
        source.check()
        execution_id = execution_id_or_404(requested)
        try:
            execution = await run_db(access_execution, user, execution_id)
        except NotVisible:
            raise not_found(requested) from None
        return OutputRequest(user, execution.id, window)

    async def stream(self, request: OutputRequest) -> None:
        live = LiveFeed()
        await live.open([publish.execution_group(request.execution_id)])
        try:
            state = await run_db(output_state, request.execution_id)  # read after subscribing
            if state is None:
                raise not_found(request.execution_id)
            await self.start(self.headers(state))
            await self.run_cursor(request, state, live)
        finally:
            await live.close()

    async def run_cursor(self, request: OutputRequest, state: OutputState, live: LiveFeed):
        api_key = self.scope.get("api_key")

        def allowed() -> bool:
            return still_allowed(request.user, execution_id=state.execution_id, api_key=api_key)

        cursor = OutputCursor(state, request.window, live, self.send_frames, allowed)
        with contextlib.suppress(AccessRevoked):  # ends the response; a reconnect gets 404
            await cursor.run()


class OutputTextConsumer(OutputEndpoint):
    """`text/plain`: every chunk's text from the first, live, ending when the execution ends."""

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

    async def send_frames(self, frames: list[Frame]) -> None:
        await self.write(
            "".join(frame.data["data"] for frame in frames if frame.event == OUTPUT_EVENT).encode()
        )


class OutputStreamConsumer(OutputEndpoint):
    """SSE: `execution.output__create` (id = seq), `gap`, then `done`; keep-alive comments."""

    def window(self, source: Source) -> OutputWindow:
        return output_window(source, last_event_id(self.scope, source))

    def headers(self, state: OutputState) -> list[tuple[bytes, bytes]]:
        return [*sse.HEADERS, (b"x-execution-id", state.execution_id.encode())]

    async def send_frames(self, frames: list[Frame]) -> None:
        await self.write(sse.encode_all(frames))

    async def run_cursor(self, request: OutputRequest, state: OutputState, live: LiveFeed):
        await self.write(sse.preamble())
        keepalive = asyncio.create_task(sse.keep_alive(self.write))
        try:
            await super().run_cursor(request, state, live)
        finally:
            keepalive.cancel()
            await asyncio.gather(keepalive, return_exceptions=True)
