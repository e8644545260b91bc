"""Server-Sent Events framing (https://html.spec.whatwg.org/#server-sent-events)."""

import json

from streaming.frames import OUTPUT_EVENT, Frame

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
    cached = frame.encoded.get("sse")
    if cached is None:
        cached = frame.encoded["sse"] = _encode(frame)
    return cached


# The fields of an output chunk, in the order replay and live messages build them.
_CHUNK_FIELDS = (
    "seq",
    "execution_id",
    "output_type",
    "data",
    "timestamp",
    "action_ref",
    "runner_ref",
)
# The JSON string encoder json.dumps(ensure_ascii=False) itself uses (C where available).
json_string = (
    getattr(json.encoder, "c_encode_basestring", None) or json.encoder.py_encode_basestring
)
_json_string = json_string


def _encode(frame: Frame) -> bytes:
    if frame.event == OUTPUT_EVENT and frame.id is not None and tuple(frame.data) == _CHUNK_FIELDS:
        return _encode_chunk(frame)
    lines = [f"event: {frame.event}"]
    if frame.id is not None:
        lines.append(f"id: {frame.id}")
    lines.append("data: " + json.dumps(frame.data, ensure_ascii=False, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


def _encode_chunk(frame: Frame) -> bytes:
    """An output event, the hot path of replay: byte for byte what `_encode` writes (the
    tests compare them), with only the two free-text fields run through the JSON encoder."""
    chunk = frame.data
    return (
        f"event: {OUTPUT_EVENT}\nid: {frame.id}\n"
        f'data: {{"seq":{int(chunk["seq"])},'
        f'"execution_id":{_json_string(chunk["execution_id"])},'
        f'"output_type":{_json_string(chunk["output_type"])},'
        f'"data":{_json_string(chunk["data"])},'
        f'"timestamp":{_json_string(chunk["timestamp"])},'
        f'"action_ref":{_json_string(chunk["action_ref"])},'
        f'"runner_ref":{_json_string(chunk["runner_ref"])}}}\n\n'
    ).encode()


def encode_all(frames: list[Frame]) -> bytes:
    return b"".join(encode(frame) for frame in frames)


def preamble() -> bytes:
    """The first bytes of every stream: the reconnect hint (also flushes the headers)."""
    return f"retry: {RETRY_MS}\n\n".encode()


def revoked_frame(reason: str) -> Frame:
    """The last event of a stream whose caller lost access: why it ends (no `retry`
    will help: a reconnect is answered 401 or 404)."""
    return Frame("revoked", {"detail": reason})
