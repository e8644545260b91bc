"""`/ws/v1/stream`: both streams' events over one WebSocket, frame by frame."""

import pytest
from channels.routing import URLRouter
from django.contrib.auth.models import AnonymousUser

from executions import publish
from executions.models import ExecutionEvent
from streaming.event_ids import decode as id_of
from streaming.event_ids import encode as token
from streaming.routing import websocket_routes
from tests.streaming_helpers import (
    RECEIVE_SECONDS,
    Socket,
    db,
    eventually,
    finish,
    followers,
    running_execution,
    store,
    write,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("home_loop")]


async def connect(user) -> Socket:
    socket = Socket(URLRouter(websocket_routes), "/ws/v1/stream")
    socket.scope["user"] = user
    connected, _ = await socket.connect()
    assert connected
    return socket


async def until(socket, predicate, timeout: float = RECEIVE_SECONDS) -> list[dict]:
    """Messages up to and including the first one matching `predicate`."""
    messages = []
    while True:
        message = await socket.receive_json_from(timeout=timeout)
        messages.append(message)
        if predicate(message):
            return messages


def done_for(execution_id):
    return lambda m: m["event"] == "done" and m["execution"] == execution_id


def output_seqs(messages, execution_id) -> list[int]:
    return [
        m["id"]
        for m in messages
        if m["event"] == "execution.output__create" and m["execution"] == execution_id
    ]


@pytest.fixture
def two(actions, tenant):
    action = actions["examples.print_lines"]
    return running_execution(action, tenant), running_execution(action, tenant)


async def test_it_streams_many_executions_on_one_socket(two, member):
    first, second = two
    await db(store)(first, ["a1\n", "a2\n", "a3\n"])
    await db(store)(second, ["b1\n", "b2\n"])
    await finish(second)
    socket = await connect(member)
    await socket.send_json_to({"action": "subscribe", "execution": first.id, "after_seq": 1})
    await socket.send_json_to({"action": "subscribe", "execution": second.id.lower(), "from": 0})
    messages = await until(socket, done_for(second.id))
    assert output_seqs(messages, second.id) == [1, 2]
    assert messages[-1]["data"] == {"final_seq": 2, "status": "succeeded", "exit_code": 0}
    await write(first, ["a4\n"])
    await finish(first)
    messages += await until(socket, done_for(first.id))
    # The two subscriptions run side by side: their `subscribed` answers may come in any order.
    subscribed = [m for m in messages if m["event"] == "subscribed"]
    assert {(m["execution"], m["data"]["requested"]) for m in subscribed} == {
        (first.id, first.id),
        (second.id, second.id.lower()),
    }
    assert output_seqs(messages, first.id) == [2, 3, 4]
    chunk = next(m for m in messages if m["event"] == "execution.output__create")
    assert set(chunk) == {"event", "execution", "id", "data"}
    assert chunk["data"]["seq"] == chunk["id"]
    await socket.disconnect()


async def test_it_answers_bad_requests_with_errors_and_keeps_the_socket(two, member, outsider):
    first, _ = two
    socket = await connect(outsider)
    await socket.send_to(text_data="{not json")
    assert (await socket.receive_json_from())["data"]["status"] == 400
    await socket.send_json_to({"action": "shout"})
    error = await socket.receive_json_from()
    assert (error["event"], error["data"]["errors"][0]["location"]) == ("error", "message.action")
    await socket.send_json_to({"action": "subscribe", "execution": first.id, "after_seq": -1})
    error = await socket.receive_json_from()
    assert [e["location"] for e in error["data"]["errors"]] == ["message.after_seq"]
    await socket.send_json_to({"action": "subscribe", "execution": first.id})
    hidden = await socket.receive_json_from()
    assert (hidden["event"], hidden["execution"], hidden["data"]["status"]) == (
        "error",
        first.id,
        404,
    )
    await socket.send_json_to({"action": "subscribe_events", "events": "nothing"})
    assert (await socket.receive_json_from())["data"]["status"] == 422
    await socket.send_json_to({"action": "subscribe_events"})
    assert await socket.receive_json_from() == {
        "event": "subscribed",
        "data": {},
        "stream": "events",
    }
    await socket.disconnect()


async def test_it_refuses_a_second_subscription_to_the_same_execution(two, member):
    first, _ = two
    socket = await connect(member)
    await socket.send_json_to({"action": "subscribe", "execution": first.id})
    assert (await socket.receive_json_from())["event"] == "subscribed"
    await socket.send_json_to({"action": "subscribe", "execution": first.id})
    assert (await socket.receive_json_from())["data"]["status"] == 409
    await socket.disconnect()


async def test_it_stops_an_execution_on_unsubscribe(two, member):
    first, second = two
    socket = await connect(member)
    await socket.send_json_to({"action": "subscribe", "execution": first.id})
    assert (await socket.receive_json_from())["event"] == "subscribed"
    await socket.send_json_to({"action": "unsubscribe", "execution": first.id})
    assert await socket.receive_json_from() == {
        "event": "unsubscribed",
        "execution": first.id,
        "data": {},
    }
    assert await followers(publish.execution_group(first.id)) == 0
    await write(first, ["not wanted\n"])
    await socket.send_json_to({"action": "subscribe", "execution": second.id})
    # Live from where it starts: written before the subscription took its place, the line
    # would (rightly) never come.
    assert (await socket.receive_json_from())["event"] == "subscribed"
    await write(second, ["wanted\n"])
    messages = await until(socket, lambda m: m["event"] == "execution.output__create")
    assert messages[-1]["execution"] == second.id
    await socket.disconnect()
    await eventually(lambda: _empty(publish.execution_group(second.id)), what="release")


async def _empty(group: str) -> bool:
    return await followers(group) == 0


async def test_it_carries_the_event_stream_with_filters_and_a_cursor(actions, tenant, member):
    action = actions["examples.print_lines"]
    earlier = await db(running_execution)(action, tenant)
    cursor = await db(lambda: ExecutionEvent.objects.filter(execution_id=earlier.id).first().id)()
    socket = await connect(member)
    await socket.send_json_to(
        {
            "action": "subscribe_events",
            "status": ["running", "succeeded"],
            "last_event_id": token(cursor),
        }
    )
    assert (await socket.receive_json_from())["event"] == "subscribed"
    running = await socket.receive_json_from()
    assert running["stream"] == "events"
    assert (running["event"], running["execution"], running["data"]["status"]) == (
        "execution__update",
        earlier.id,
        "running",
    )
    await finish(earlier)
    finished = await socket.receive_json_from()
    assert finished["data"]["status"] == "succeeded"
    assert id_of(finished["id"]) == id_of(running["id"]) + 1
    await socket.disconnect()


async def test_it_follows_last(two, member):
    _, second = two
    socket = await connect(member)
    await socket.send_json_to({"action": "subscribe", "execution": "last"})
    subscribed = await socket.receive_json_from()
    assert (subscribed["execution"], subscribed["data"]) == (second.id, {"requested": "last"})
    await socket.disconnect()


async def test_it_refuses_anonymous_callers_with_a_reason(db):
    socket = Socket(URLRouter(websocket_routes), "/ws/v1/stream")
    socket.scope["user"] = AnonymousUser()
    connected, _ = await socket.connect()
    assert connected
    error = await socket.receive_json_from()
    assert (error["event"], error["data"]["status"]) == ("error", 401)
    assert await socket.receive_output() == {"type": "websocket.close", "code": 4401}
