"""What an idle stream holds, and that it still does its work (issue 10: at most 30 KB per
idle connection, docs/benchmarks-fanout.md).

A web process holds thousands of idle streams, so what each keeps alive is designed: one task
per SSE stream (the disconnect comes to a callback of the connection's Inbound), a short
stack per waiting subscription, one copy of the values they all hold, and one log read for
all the streams one access verdict (or resync) reaches.
"""

import asyncio

import pytest
from channels.routing import URLRouter

from executions import publish, services
from executions.models import ExecutionEvent
from project.server import Inbound
from streaming.event_ids import decode as id_of
from streaming.hub import Hub
from streaming.live import Control, shared
from streaming.routing import http_routes, websocket_routes
from tests.streaming_helpers import (
    DISCONNECT_SECONDS,
    RECEIVE_SECONDS,
    Socket,
    db,
    eventually,
    followers,
    http_scope,
    parse_sse,
    running_execution,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("home_loop")]

PATH = "/api/v1/stream"


def stack(task: asyncio.Task) -> list[str]:
    """The coroutines a waiting task holds, outermost first."""
    names, coro = [], task.get_coro()
    while coro is not None and hasattr(coro, "cr_frame"):
        names.append(coro.__qualname__)
        coro = coro.cr_await
    return names


def own_tasks(before: set[asyncio.Task]) -> set[asyncio.Task]:
    """Tasks made since `before`, but the process's shared ones (hub, access watches)."""
    shared_names = ("hub ", "access ")
    return {
        task
        for task in asyncio.all_tasks() - before
        if not task.get_name().startswith(shared_names) and not task.done()
    }


class ServedStream:
    """An SSE request as `manage.py serve` runs it: the application receives from an Inbound."""

    def __init__(self, user) -> None:
        self.inbound = Inbound()
        self.sent: asyncio.Queue[dict] = asyncio.Queue()
        app = URLRouter(http_routes)
        scope = http_scope(PATH, user=user)
        self.task = asyncio.ensure_future(app(scope, self.inbound.get, self.sent.put))
        self.inbound.put_nowait({"type": "http.request", "body": b"", "more_body": False})
        self.buffer = b""

    async def status(self) -> int:
        start = await asyncio.wait_for(self.sent.get(), RECEIVE_SECONDS)
        assert start["type"] == "http.response.start", start
        return start["status"]

    async def next_event(self) -> dict:
        while True:
            while b"\n\n" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\n\n", 1)
                frame = parse_sse(raw.decode())
                if "event" in frame:
                    return frame
            message = await asyncio.wait_for(self.sent.get(), RECEIVE_SECONDS)
            self.buffer += message.get("body", b"")


def _silent_event(execution) -> ExecutionEvent:
    """An event row written without ringing the layer: only a read of the log finds it."""
    payload = services.execution_payload(execution)
    return ExecutionEvent.objects.create(
        event=ExecutionEvent.UPDATE, execution=execution, tenant=execution.tenant, payload=payload
    )


async def test_it_holds_one_task_per_idle_sse_stream_and_ends_it_on_disconnect(
    actions, tenant, member
):
    before = asyncio.all_tasks()
    stream = ServedStream(member)
    assert await stream.status() == 200
    group = publish.tenant_events_group(tenant.id)
    await eventually(lambda: followers(group), what="the stream to subscribe")

    waiting = {task.get_coro().__qualname__ for task in own_tasks(before)}
    assert "StreamEndpoint._disconnected" not in waiting  # no task waits for the disconnect
    assert stream.task in own_tasks(before)
    created = await db(services.create_execution)(
        actions["examples.print_lines"], {}, tenant=tenant
    )
    frame = await stream.next_event()  # and it still streams
    assert (frame["event"], frame["data"]["id"]) == ("execution__create", created.id)

    stream.inbound.put_nowait({"type": "http.disconnect"})
    await asyncio.wait_for(stream.task, DISCONNECT_SECONDS)
    assert await followers(group) == 0


async def test_a_stream_whose_client_left_before_it_began_ends_at_once(member):
    stream = ServedStream(member)
    stream.inbound.put_nowait({"type": "http.disconnect"})  # waiting when the stream begins
    await asyncio.wait_for(stream.task, DISCONNECT_SECONDS)
    assert not stream.task.cancelled()


async def test_an_idle_websocket_subscription_waits_on_a_short_stack(tenant, member):
    socket = Socket(URLRouter(websocket_routes), "/ws/v1/stream")
    socket.scope["user"] = member
    assert (await socket.connect())[0]
    await socket.send_json_to({"action": "subscribe_events"})
    assert (await socket.receive_json_from())["event"] == "subscribed"

    (task,) = [t for t in asyncio.all_tasks() if t.get_name() == "ws events"]
    await eventually(lambda: stack(task)[-1:] == ["Inbox.take"], what="the feed to wait")
    assert stack(task) == ["StreamSocketEndpoint._guard", "EventFeed.run", "Inbox.take"]
    await socket.disconnect()


async def test_every_stream_a_recheck_reaches_finds_an_event_whose_doorbell_was_lost(
    actions, tenant, member
):
    execution = await db(running_execution)(actions["examples.print_lines"], tenant)
    streams = [ServedStream(member) for _ in range(5)]
    assert [await stream.status() for stream in streams] == [200] * 5
    group = publish.tenant_events_group(tenant.id)

    async def all_subscribed() -> bool:
        return await followers(group) == 5

    await eventually(all_subscribed, what="the streams to subscribe")

    row = await db(_silent_event)(execution)  # in the log, never announced
    Hub.current().guard.recheck_all()  # what the periodic safety re-check does
    for stream in streams:  # the read all five share still reaches each of them
        assert id_of((await stream.next_event())["id"]) == row.id
    for stream in streams:
        stream.inbound.put_nowait({"type": "http.disconnect"})
    await asyncio.wait_for(asyncio.gather(*(s.task for s in streams)), DISCONNECT_SECONDS)


async def test_a_control_reads_once_for_all_the_streams_that_ask_alike():
    control = Control("resync")
    reads: list[int] = []
    gate = asyncio.Event()

    async def read(position: int) -> int:
        reads.append(position)
        await gate.wait()
        return position * 10

    askers = [
        asyncio.ensure_future(control.shared_read(("after", 7), lambda: read(7))) for _ in range(3)
    ]
    other = asyncio.ensure_future(control.shared_read(("after", 8), lambda: read(8)))
    await eventually(lambda: len(reads) == 2, what="the reads to start")
    askers[0].cancel()  # one asker leaving does not cancel the read of the others
    gate.set()
    assert await asyncio.wait_for(asyncio.gather(*askers[1:], other), RECEIVE_SECONDS) == [
        70,
        70,
        80,
    ]
    assert sorted(reads) == [7, 8]


async def test_a_failed_shared_read_fails_every_asker():
    control = Control("resync")

    async def failing() -> None:
        raise ConnectionError("the database is away")

    askers = [control.shared_read("key", failing) for _ in range(2)]
    results = await asyncio.gather(*askers, return_exceptions=True)
    assert [type(result) for result in results] == [ConnectionError, ConnectionError]


def test_equal_values_are_kept_once():
    first = shared(frozenset({"tenant.1.events", "tenant.1.output"}))
    again = shared(frozenset({"tenant.1.output", "tenant.1.events"}))
    assert again is first
    assert shared(frozenset({"tenant.2.events"})) is not first
