"""The process hub: one layer subscription per group however many local streams, each stream
with its own bounded inbox, memberships that cancellation cannot leak, and recovery when the
layer forgets them (both modes; Redis faults with a private redis-server in cluster mode)."""

import asyncio
import random

import pytest

from executions import publish
from streaming import hub as hub_module
from streaming.hub import Hub
from streaming.live import LIVE_BUFFER_MESSAGES, Control, LiveFeed, Overflow
from tests.streaming_helpers import (
    RECEIVE_SECONDS,
    Response,
    db,
    eventually,
    followers,
    group_size,
    seqs,
    write,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("home_loop")]


@pytest.fixture(autouse=True)
def _many_streams(settings):
    settings.STREAM_MAX_CONNECTIONS_PER_PRINCIPAL = 1000
    settings.STREAM_MAX_CONNECTIONS_PER_TENANT = 1000


def path(execution) -> str:
    return f"/api/v1/executions/{execution.id}/output/stream"


async def test_it_serves_many_local_streams_through_one_membership(execution, member):
    clients = [await Response.get(path(execution), "from=0", user=member) for _ in range(30)]
    group = publish.execution_group(execution.id)
    await eventually(lambda: _following(group, 30), timeout=60, what="thirty streams")
    assert await group_size(group) == 1  # the hub: one member for the whole process
    await write(execution, ["one\n", "two\n"])
    for client in clients:
        frames = [await client.next_sse(timeout=60) for _ in range(2)]  # generous: busy CI
        assert seqs(frames) == [1, 2]
    for client in clients:
        await client.disconnect()


async def test_it_hands_one_decoded_message_and_one_encoding_to_every_stream(execution, member):
    clients = [await Response.get(path(execution), "from=0", user=member) for _ in range(3)]
    group = publish.execution_group(execution.id)
    await eventually(lambda: _following(group, 3), what="three streams")
    await write(execution, ["shared\n"])
    bodies = set()
    for client in clients:
        await client.next_sse(timeout=60)  # generous: a busy machine may join late
    feeds = Hub.current().followers[group]
    inbox_sizes = [len(feed.inbox) for feed in feeds]
    assert inbox_sizes == [0, 0, 0]
    for client in clients:
        bodies.add(client.buffer)
        await client.disconnect()
    assert len(bodies) == 1


async def test_a_stream_joining_mid_flood_gets_every_line_once(execution, member):
    first = await Response.get(path(execution), "from=0", user=member)
    await first.next_sse(comments=True)  # the retry hint: subscribed
    flood = asyncio.create_task(_flood(execution, batches=60, size=20))
    await eventually(lambda: _stored_past(execution, 200), what="the flood to be under way")
    late = await Response.get(path(execution), "from=0", user=member)
    await flood
    total = 60 * 20
    for client in (first, late):
        frames = [await client.next_sse() for _ in range(total)]
        assert seqs(frames) == list(range(1, total + 1))
        await client.disconnect()


async def _flood(execution, *, batches: int, size: int) -> None:
    for number in range(batches):
        await write(execution, [f"{number}.{i}\n" for i in range(size)])
        await asyncio.sleep(0)  # let streams interleave with the writer


def _stored_past_sync(execution, seq: int) -> bool:
    execution.refresh_from_db(fields=["last_seq"])
    return execution.last_seq >= seq


async def _stored_past(execution, seq: int) -> bool:
    return await db(_stored_past_sync)(execution, seq)


async def test_a_slow_stream_does_not_slow_the_others():
    hub = Hub.current()
    fast, slow = LiveFeed(), LiveFeed()
    group = publish.execution_group("01TESTHUBSLOWSTREAM0000000")
    hub.follow(fast, [group])
    hub.follow(slow, [group])
    count = LIVE_BUFFER_MESSAGES * 3
    got = []
    for seq in range(1, count + 1):
        hub.dispatch(_batch("01TESTHUBSLOWSTREAM0000000", seq))
        got.append(fast.inbox.get_nowait())  # the fast one reads as it comes
    assert [m["first_seq"] for m in got] == list(range(1, count + 1))
    # The slow one read nothing: its inbox kept its bound and summarised the rest.
    assert len(slow.inbox) == LIVE_BUFFER_MESSAGES + 1
    items = [slow.inbox.get_nowait() for _ in range(LIVE_BUFFER_MESSAGES + 1)]
    overflow = items[-1]
    assert isinstance(overflow, Overflow)
    first = LIVE_BUFFER_MESSAGES + 1
    assert overflow.output_ranges == {"01TESTHUBSLOWSTREAM0000000": (first, count)}
    hub.unfollow(fast)
    hub.unfollow(slow)


async def test_it_drops_the_second_copy_of_a_message_from_two_groups():
    hub = Hub.current()
    feed = LiveFeed()
    execution_id = "01TESTHUBTWOGROUPS00000000"
    hub.follow(feed, [publish.execution_group(execution_id), publish.tenant_output_group(7)])
    message = _batch(execution_id, 1)
    hub.dispatch(message)
    hub.dispatch(dict(message))  # the same batch, through the tenant's group
    assert len(feed.inbox) == 1
    hub.unfollow(feed)


async def test_abrupt_disconnects_in_a_loop_leave_no_membership(execution, member, settings):
    settings.STREAM_GROUP_LINGER_SECONDS = 0.1
    group = publish.execution_group(execution.id)
    rng = random.Random(1)
    for _ in range(40):
        response = await Response.get(path(execution), "from=0", user=member)
        if rng.random() < 0.5:
            await asyncio.sleep(rng.random() / 50)  # at any point of the stream's start
        response.communicator.future.cancel()  # the task dies, no http.disconnect
        await asyncio.gather(response.communicator.future, return_exceptions=True)
    assert await followers(group) == 0
    await eventually(lambda: _layer_empty(group), what="the hub to leave the group")


async def _layer_empty(group: str) -> bool:
    return await group_size(group) == 0


async def _following(group: str, count: int) -> bool:
    return await followers(group) == count


async def test_it_tells_every_stream_to_resync_when_the_layer_comes_back():
    hub = Hub.current()
    feeds = [LiveFeed() for _ in range(3)]
    for feed in feeds:
        hub.follow(feed, [publish.execution_group("01TESTHUBRESYNC00000000000")])
    hub._recover()
    for feed in feeds:
        assert feed.inbox.get_nowait() == Control("resync")
        hub.unfollow(feed)


def _batch(execution_id: str, seq: int) -> dict:
    chunk = {
        "seq": seq,
        "execution_id": execution_id,
        "output_type": "stdout",
        "data": f"{seq}\n",
        "timestamp": "2026-11-30T00:00:00+00:00",
        "action_ref": "examples.print_lines",
        "runner_ref": "local-shell-cmd",
    }
    message = publish.output_batch_message(execution_id, seq, seq, [chunk])
    message["tenant_id"] = 7
    return message


async def test_a_stream_followed_again_while_its_group_is_left_is_joined_again(settings):
    settings.STREAM_GROUP_LINGER_SECONDS = 0
    hub = Hub.current()
    layer = hub.layer
    group = publish.execution_group("01TESTHUBREJOIN00000000000")
    first, again = LiveFeed(), LiveFeed()
    hub.follow(first, [group])
    assert await hub.wait_joined([group])
    leaving, release = asyncio.Event(), asyncio.Event()
    discard = layer.group_discard

    async def slow_discard(group_name, channel):
        leaving.set()
        await release.wait()
        await discard(group_name, channel)

    layer.group_discard = slow_discard
    try:
        hub.unfollow(first)
        await asyncio.wait_for(leaving.wait(), RECEIVE_SECONDS)
        hub.follow(again, [group])  # while the hub is leaving the group
        release.set()
        assert await hub.wait_joined([group])  # joined again, and nothing raised
        assert all(not task.done() for task in hub._tasks)
    finally:
        layer.group_discard = discard
        hub.unfollow(again)


async def test_a_verdict_goes_only_to_the_streams_it_checked(monkeypatch):
    from streaming import guard as guard_module
    from streaming.guard import AccessVerdict, Principal, PrincipalWatch, Watcher

    checking, finish = asyncio.Event(), asyncio.Event()

    async def slow_check(fn, *args):
        checking.set()
        await finish.wait()
        return AccessVerdict(True, visible=frozenset({"A"}))

    monkeypatch.setattr(guard_module, "run_db", slow_check)
    watch = PrincipalWatch(Hub.current().guard, Principal(1, None, None), None, None)
    checked, joined = Watcher(LiveFeed(), "A"), Watcher(LiveFeed(), "B")
    watch.watchers.add(checked)
    recheck = asyncio.create_task(watch.recheck())
    await asyncio.wait_for(checking.wait(), RECEIVE_SECONDS)
    watch.watchers.add(joined)  # a stream that opened while the check ran (B was not in it)
    finish.set()
    await recheck
    assert checked.feed.inbox.get_nowait().kind == "access"
    assert joined.feed.inbox.get_nowait() is None


async def test_with_many_streams_it_wakes_them_once_per_tick(settings):
    settings.STREAM_COALESCE_MIN_STREAMS = 3
    settings.STREAM_COALESCE_SECONDS = 0.05
    hub = Hub.current()
    execution_id = "01TESTHUBCOALESCE000000000"
    feeds = [LiveFeed() for _ in range(3)]
    for feed in feeds:
        hub.follow(feed, [publish.execution_group(execution_id)])
    readers = [asyncio.ensure_future(feed.inbox.take(None)) for feed in feeds]
    await asyncio.sleep(0)  # every reader is waiting
    for seq in (1, 2, 3):
        hub.dispatch(_batch(execution_id, seq))
    assert not any(reader.done() for reader in readers)  # nobody woken per message ...
    taken = await asyncio.wait_for(asyncio.gather(*readers), RECEIVE_SECONDS)  # ... but on the tick
    for items in taken:  # each woke once, for all three
        assert [item["first_seq"] for item in items] == [1, 2, 3]
    for feed in feeds:
        hub.unfollow(feed)


async def test_with_few_streams_it_wakes_them_at_once(settings):
    settings.STREAM_COALESCE_MIN_STREAMS = 100
    hub = Hub.current()
    feed = LiveFeed()
    hub.follow(feed, [publish.execution_group("01TESTHUBNOCOALESCE0000000")])
    reader = asyncio.ensure_future(feed.inbox.take(None))
    await asyncio.sleep(0)
    hub.dispatch(_batch("01TESTHUBNOCOALESCE0000000", 1))
    await asyncio.sleep(0)
    assert reader.done()
    hub.unfollow(feed)


async def test_a_stream_that_gave_up_waiting_for_its_group_is_told_to_resync(monkeypatch):
    monkeypatch.setattr(hub_module, "JOIN_WAIT_SECONDS", 0.05)
    hub = Hub.current()
    layer = hub.layer
    group = publish.execution_group("01TESTHUBLATEJOIN000000000")
    release = asyncio.Event()
    add = layer.group_add

    async def slow_add(group_name, channel):
        if group_name == group:
            await release.wait()
        await add(group_name, channel)

    layer.group_add = slow_add
    feed = LiveFeed()
    try:
        hub.follow(feed, [group])
        assert not await hub.wait_joined([group])  # gave up: goes on from the database
        release.set()
        assert await asyncio.wait_for(feed.inbox.take(None), RECEIVE_SECONDS) == [Control("resync")]
    finally:
        layer.group_add = add
        hub.unfollow(feed)
