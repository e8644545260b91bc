"""Server-Sent Event streams that survive a dropped connection.

    open GET <stream> (Last-Event-ID: the last id seen, once there is one)
      ─▶ yield each event (the `retry:` hint alone is not an event: skipped)
      ─▶ connection dropped, read timed out, or closed before the end event?
           wait (backing off), open again from the last id seen
      ─▶ the end event (`done` for an execution's output): yield it, stop

The server replays from `Last-Event-ID + 1`, so nothing is lost; ids at or below the last one
seen (a replay overlapping what was already yielded) are skipped, so nothing is repeated.
"""

import json
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import connect_sse

from tailgate_client.errors import ServerError, StreamLost, TooManyRequests

# Reconnect delays after a dropped stream: doubled each time, capped; a connection that
# delivered an event starts again from the shortest.
RECONNECT_MIN_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 10.0
# Failed reconnects in a row before giving up (about three minutes at the cap).
RECONNECT_ATTEMPTS = 20
# Streams send a keep-alive every 15 s: twice that and a margin without a byte means the
# link is dead, whatever TCP thinks.
READ_TIMEOUT_SECONDS = 35.0
CONNECT_TIMEOUT_SECONDS = 10.0
STREAM_TIMEOUT = httpx.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)
# What a server restarting behind a proxy or load balancer answers for a moment.
RESTARTING = {502, 503, 504}
# What a dropped connection looks like to httpx (RemoteProtocolError: closed mid-chunk).
DROPPED = (httpx.TransportError,)


@dataclass
class StreamEvent:
    """One SSE event: its name, its id (None when it has none) and its JSON data."""

    event: str
    id: str | None
    data: dict[str, Any]


def _int_id(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


class ResumableStream:
    """An SSE endpoint read as one endless sequence of events, across reconnects.

    `open_response(url, params, headers)` is the client's way to open the request and raise
    its typed error for a non-2xx answer. `end` names the event after which the stream is
    complete (None: never; the caller stops reading); `ordered_ids` when ids only grow, so
    an id at or below the last one is a replay to skip. `last_id` is public: set it before
    iterating to resume from there, read it after to know where the stream stopped.
    """

    def __init__(
        self,
        http: httpx.Client,
        url: str,
        params: dict[str, Any],
        check: Callable[[httpx.Response], None],
        end: str | None = None,
        last_id: str | None = None,
        ordered_ids: bool = True,
    ):
        self.http = http
        self.url = url
        self.params = params
        self.check = check
        self.end = end
        self.last_id = last_id
        self.ordered_ids = ordered_ids

    def __iter__(self) -> Generator[StreamEvent, None, None]:
        delay, failures = RECONNECT_MIN_SECONDS, 0
        while True:
            try:
                for event in self._one_connection():
                    delay, failures = RECONNECT_MIN_SECONDS, 0
                    yield event
                    if event.event == self.end:
                        return
            except DROPPED:
                pass
            except ServerError as exc:
                if exc.status not in RESTARTING:
                    raise  # a bug on the server: retrying would only hide it

            except TooManyRequests as exc:
                delay = max(delay, exc.retry_after or delay)
            failures += 1
            if failures > RECONNECT_ATTEMPTS:
                raise StreamLost(self.url, self.last_id)
            time.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    def _one_connection(self) -> Iterator[StreamEvent]:
        headers = {"Last-Event-ID": self.last_id} if self.last_id is not None else {}
        with connect_sse(
            self.http, "GET", self.url, params=self.params, headers=headers, timeout=STREAM_TIMEOUT
        ) as source:
            self.check(source.response)
            for sse in source.iter_sse():
                if sse.event == "message" and not sse.data:
                    continue  # a `retry:` hint or an empty block, not an event
                if self._seen(sse.id):
                    continue
                if sse.id:
                    self.last_id = sse.id
                yield StreamEvent(sse.event, sse.id or None, json.loads(sse.data or "{}"))

    def _seen(self, event_id: str) -> bool:
        """Whether a numeric id is at or below the last one yielded (a replayed event).

        Only for streams whose ids only grow (an execution's output: id = seq); the global
        stream's ids may arrive out of order and the server keeps track of them itself.
        """
        if not self.ordered_ids:
            return False
        new, last = _int_id(event_id), _int_id(self.last_id)
        return new is not None and last is not None and new <= last
