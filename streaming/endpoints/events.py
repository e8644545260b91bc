"""`GET /api/v1/stream`: Server-Sent Events of every execution event the caller may see.

Query filters (optional, AND-combined, comma lists): `events` (names or `*` globs; output
is opt-in), `tenant`, `action`, `status`, `execution`, `parent`, `ancestor`. `Last-Event-ID` resumes
from the durable event log.
"""

from dataclasses import dataclass

from streaming import sse
from streaming.endpoints.base import StreamEndpoint
from streaming.event_feed import CredentialsGone
from streaming.filters import EventFilter, event_filter, load_descendants
from streaming.frames import Frame
from streaming.output_cursor import AccessRevoked
from streaming.params import Problem, Source, last_event_id


@dataclass(frozen=True, slots=True)
class EventsRequest:
    filter: EventFilter
    resume_after: int | None


class EventSSEEndpoint(StreamEndpoint):
    __slots__ = ()

    async def prepare(self, user) -> EventsRequest:
        source = Source.from_query(self.scope)
        flt = event_filter(source)
        resume_after = last_event_id(self.scope, source)
        source.check()
        return EventsRequest(flt, resume_after)

    async def send_frames(self, frames: list[Frame]) -> None:
        await self.write(sse.encode_all(frames))

    async def opened(self) -> None:
        await self.start(sse.HEADERS)
        await self.write(sse.preamble())

    async def keepalive(self) -> None:
        await self.write(sse.KEEPALIVE)

    async def stream(self, request: EventsRequest) -> None:
        async def opened() -> None:
            # Subscribed, nothing read yet: a child created from now on comes as an event.
            await load_descendants(request.filter)
            await self.opened()

        try:
            await self.session.events(
                request.filter, request.resume_after, self.send_frames, opened, self.keepalive_clock
            )
        except CredentialsGone:
            raise Problem(401, "Your credentials are no longer valid.") from None
        except AccessRevoked as exc:
            await self.send_frames([sse.revoked_frame(str(exc))])
