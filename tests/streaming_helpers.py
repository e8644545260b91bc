"""Helpers for the stream tests: ASGI scopes, responses read frame by frame, output written
and published exactly as the runner does (`storage.store_batch`, then the layer message).
"""

import asyncio
import json
import time
from datetime import UTC, datetime

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import ApplicationCommunicator, WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from executions import publish, services, storage
from executions.capture import Batch
from executions.models import Execution, ExecutionStatus
from streaming.routing import http_routes

db = database_sync_to_async
# How long a disconnected stream may take to end: a failure bound only (a stream ends within
# milliseconds of `http.disconnect`; a busy machine must not fail a test that waits on it).
DISCONNECT_SECONDS = 30
# How long a test waits for a message it expects: a failure bound only. A machine that stalls
# the test process for several seconds must not fail a read that would have succeeded.
RECEIVE_SECONDS = 60


def http_scope(path: str, query: str = "", headers=(), user=None, method: str = "GET") -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(b"host", b"127.0.0.1"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "user": user if user is not None else AnonymousUser(),
    }


def open_http(path: str, query: str = "", *, user=None, headers=(), method="GET"):
    """A started request to the stream routes (auth already done: `user` is in the scope)."""
    scope = http_scope(path, query, headers, user, method)
    communicator = ApplicationCommunicator(URLRouter(http_routes), scope)
    return communicator


class Response:
    """An HTTP response read from an ApplicationCommunicator one ASGI message at a time."""

    def __init__(self, communicator: ApplicationCommunicator):
        self.communicator = communicator
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.buffer = b""
        self.ended = False

    @classmethod
    async def get(cls, path: str, query: str = "", *, user=None, headers=(), method="GET"):
        communicator = open_http(path, query, user=user, headers=headers, method=method)
        await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
        response = cls(communicator)
        start = await communicator.receive_output(timeout=RECEIVE_SECONDS)
        assert start["type"] == "http.response.start", start
        response.status = start["status"]
        response.headers = {k.decode(): v.decode() for k, v in start["headers"]}
        return response

    async def read_message(self, timeout: float = RECEIVE_SECONDS) -> bytes:
        message = await self.communicator.receive_output(timeout=timeout)
        assert message["type"] == "http.response.body", message
        self.ended = not message.get("more_body", False)
        self.buffer += message.get("body", b"")
        return message.get("body", b"")

    async def body(self, timeout: float = RECEIVE_SECONDS) -> bytes:
        """Everything up to the end of the response."""
        while not self.ended:
            await self.read_message(timeout)
        return self.buffer

    def json(self) -> dict:
        return json.loads(self.buffer)

    async def next_sse(self, timeout: float = RECEIVE_SECONDS, *, comments: bool = False) -> dict:
        """The next SSE frame: {"event", "id", "data"} (or {"comment"} / {"retry"})."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n\n" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\n\n", 1)
                frame = parse_sse(raw.decode())
                if comments or ("comment" not in frame and "retry" not in frame):
                    return frame
            if self.ended:
                raise AssertionError("the response ended")
            await self.read_message(max(0.01, deadline - time.monotonic()))

    async def events_until(
        self, name: str = "done", timeout: float = RECEIVE_SECONDS
    ) -> list[dict]:
        """Frames up to and including the first `name` event."""
        frames = []
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.next_sse(max(0.01, deadline - time.monotonic()))
            frames.append(frame)
            if frame["event"] == name:
                return frames

    async def disconnect(self) -> None:
        await self.communicator.send_input({"type": "http.disconnect"})
        await self.communicator.wait(timeout=DISCONNECT_SECONDS)


class Socket(WebsocketCommunicator):
    """A WebsocketCommunicator whose waits default to RECEIVE_SECONDS, not channels' 1 s (which
    a stalled machine overruns): failure bounds only, a message that comes is taken at once."""

    async def connect(self, timeout: float = RECEIVE_SECONDS):
        return await super().connect(timeout)

    async def receive_from(self, timeout: float = RECEIVE_SECONDS):
        return await super().receive_from(timeout)

    async def receive_json_from(self, timeout: float = RECEIVE_SECONDS):
        return await super().receive_json_from(timeout)

    async def receive_output(self, timeout: float = RECEIVE_SECONDS):
        return await super().receive_output(timeout)

    async def disconnect(self, code: int = 1000, timeout: float = RECEIVE_SECONDS):
        return await super().disconnect(code, timeout)


def parse_sse(raw: str) -> dict:
    frame: dict = {}
    for line in raw.split("\n"):
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "":
            frame["comment"] = value
        elif field == "data":
            frame["data"] = json.loads(value)
        elif field == "id":
            frame["id"] = int(value)
        elif field in ("event", "retry"):
            frame[field] = value
    return frame


def seqs(frames: list[dict], event: str = "execution.output__create") -> list[int]:
    return [f["data"]["seq"] for f in frames if f["event"] == event]


# --- executions and their output, written the runner's way ----------------------------------


def running_execution(action, tenant=None, parameters=None) -> Execution:
    execution = services.create_execution(action, parameters or {}, tenant=tenant)
    return services.claim(execution.id, "test-runner")


def store(execution: Execution, lines: list[str], output_type: str = "stdout") -> Batch:
    """Store lines as the next chunks (the runner's write), without ringing the layer."""
    execution.refresh_from_db(fields=["last_seq"])
    stamp = datetime.now(UTC)
    first = execution.last_seq + 1
    rows = [(first + i, output_type, line, stamp) for i, line in enumerate(lines)]
    storage.store_batch(execution.id, rows)
    return Batch(execution.id, first, rows)


async def ring(execution: Execution, batch: Batch, *, inline: bool = True) -> None:
    """Publish a stored batch as the runner does (chunks inline, or only the seq range)."""
    chunks = batch.as_messages(execution.action_ref, execution.runner_type) if inline else None
    message = publish.output_batch_message(execution.id, batch.first_seq, batch.last_seq, chunks)
    message["tenant_id"] = execution.tenant_id
    await publish.agroup_send(publish.execution_group(execution.id), message)
    await publish.agroup_send(publish.tenant_output_group(execution.tenant_id), message)


async def write(execution: Execution, lines: list[str], output_type: str = "stdout") -> Batch:
    batch = await db(store)(execution, lines, output_type)
    await ring(execution, batch)
    return batch


async def finish(execution: Execution, status: str = ExecutionStatus.SUCCEEDED, exit_code=0):
    return await db(services.finish)(execution.id, status, exit_code=exit_code)


async def eventually(predicate, timeout: float = RECEIVE_SECONDS, what: str = "a condition"):
    """Poll `predicate` (sync or async) until true: state with no notification to wait on.

    The timeout is a failure bound, generous so that a busy machine fails nothing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def followers(group: str) -> int:
    """How many streams of this process follow a group (through the hub)."""
    from streaming.hub import Hub

    hub = Hub._hubs.get(asyncio.get_running_loop())
    return len(hub.followers.get(group, ())) if hub is not None else 0


async def group_size(group: str) -> int:
    """How many channels are in a layer group (in-memory or Redis): the process's hub is
    the one member of every group its streams follow."""
    layer = get_channel_layer()
    if hasattr(layer, "groups"):
        return len(layer.groups.get(group, {}))
    connection = layer.connection(layer.consistent_hash(group))
    return await connection.zcard(layer._group_key(group))
