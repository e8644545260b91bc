"""`GET /api/v1/stream`: Server-Sent Events of every execution event the caller may see.

Query filters (optional, AND-combined, comma lists): `events` (names or `*` globs; output
is opt-in), `tenant`, `action`, `status`, `execution`, `parent`. `Last-Event-ID` resumes
from the durable event log.
"""

import asyncio
import contextlib
from dataclasses import dataclass

from streaming import sse
from streaming.consumers.base import StreamEndpoint
from streaming.event_feed import EventFeed
from streaming.filters import EventFilter, event_filter
from streaming.frames import Frame
from streaming.output_cursor import AccessRevoked
from streaming.params import Problem, Source, last_event_id


@dataclass(frozen=True)
class EventsRequest:
    user: object
    filter: EventFilter
    resume_after: int | None


class EventStreamConsumer(StreamEndpoint):
    async def prepare(self, user) -> EventsRequest:
        source = Source.from_query(self.scope)
        flt = event_filter(source)
        resume_after = last_event_id(self.scope, source)
        source.check()
        return EventsRequest(user, flt, resume_after)

    async def send_frames(self, frames: list[Frame]) -> None:
        await self.write(sse.encode_all(frames))

    async def stream(self, request: EventsRequest) -> None:
        feed = EventFeed(
            request.user,
            self.scope.get("api_key"),
            request.filter,
            self.send_frames,
            request.resume_after,
        )
        keepalive = None
        try:
            if not await feed.open():
                raise Problem(401, "Your credentials are no longer valid.")
            await self.start(sse.HEADERS)
            await self.write(sse.preamble())
            keepalive = asyncio.create_task(sse.keep_alive(self.write))
            with contextlib.suppress(AccessRevoked):  # ends the response
                await feed.run()
        finally:
            if keepalive is not None:
                keepalive.cancel()
                await asyncio.gather(keepalive, return_exceptions=True)
            await feed.close()
