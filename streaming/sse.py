"""Server-Sent Events framing (https://html.spec.whatwg.org/#server-sent-events)."""

import asyncio
import json

from django.conf import settings

from streaming.frames import Frame

CONTENT_TYPE = b"text/event-stream; charset=utf-8"
KEEPALIVE = b": keepalive\n\n"
# Clients reconnect after this long; resuming is exact, so sooner is better.
RETRY_MS = 2000

HEADERS = [
    (b"content-type", CONTENT_TYPE),
    (b"cache-control", b"no-cache"),
    # nginx would otherwise buffer the response and hold events back.
    (b"x-accel-buffering", b"no"),
]


def encode(frame: Frame) -> bytes:
    """One event. JSON escapes newlines, so `data` is always a single line."""
    lines = [f"event: {frame.event}"]
    if frame.id is not None:
        lines.append(f"id: {frame.id}")
    lines.append("data: " + json.dumps(frame.data, ensure_ascii=False, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


def encode_all(frames: list[Frame]) -> bytes:
    return b"".join(encode(frame) for frame in frames)


def preamble() -> bytes:
    """The first bytes of every stream: the reconnect hint (also flushes the headers)."""
    return f"retry: {RETRY_MS}\n\n".encode()


async def keep_alive(write) -> None:
    """A comment every STREAM_KEEPALIVE_SECONDS, so proxies keep a quiet stream open."""
    while True:
        await asyncio.sleep(settings.STREAM_KEEPALIVE_SECONDS)
        await write(KEEPALIVE)
