"""The queue a connection's messages wait in for the application (project/server.py)."""

import asyncio

from project.server import Inbound
from tests.streaming_helpers import RECEIVE_SECONDS


async def waiting(inbound: Inbound, receives: int) -> None:
    """Until `receives` receives wait in it (a condition, with a failure bound)."""
    async with asyncio.timeout(RECEIVE_SECONDS):
        while len(inbound._getters or ()) < receives:
            await asyncio.sleep(0)


async def test_it_hands_messages_over_in_order_to_a_waiting_and_a_later_receive():
    inbound = Inbound()
    receive = asyncio.ensure_future(inbound.get())
    await waiting(inbound, 1)  # it waits before anything comes
    inbound.put_nowait({"type": "http.request"})
    inbound.put_nowait({"type": "http.disconnect"})
    assert await asyncio.wait_for(receive, RECEIVE_SECONDS) == {"type": "http.request"}
    assert await asyncio.wait_for(inbound.get(), RECEIVE_SECONDS) == {"type": "http.disconnect"}


async def test_a_cancelled_receive_loses_no_message():
    inbound = Inbound()
    cancelled = asyncio.ensure_future(inbound.get())
    other = asyncio.ensure_future(inbound.get())
    await waiting(inbound, 2)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    inbound.put_nowait("only")
    assert await asyncio.wait_for(other, RECEIVE_SECONDS) == "only"
    assert cancelled.cancelled()


async def test_two_receives_each_get_one_message():
    inbound = Inbound()
    first, second = asyncio.ensure_future(inbound.get()), asyncio.ensure_future(inbound.get())
    await waiting(inbound, 2)
    inbound.put_nowait(1)
    inbound.put_nowait(2)
    assert sorted(await asyncio.wait_for(asyncio.gather(first, second), RECEIVE_SECONDS)) == [1, 2]


def test_it_hands_waiting_then_new_messages_to_a_listener_until_told_to_stop():
    inbound = Inbound()
    inbound.put_nowait({"type": "http.request"})
    heard: list = []
    inbound.listen(heard.append)
    assert heard == [{"type": "http.request"}]  # what waited, first
    inbound.put_nowait({"type": "http.disconnect"})
    assert heard == [{"type": "http.request"}, {"type": "http.disconnect"}]
    inbound.listen(None)
    inbound.put_nowait("later")  # queued for `get` again
    assert len(heard) == 2
    assert inbound._items == ["later"]


async def test_a_receive_after_a_listener_gets_what_came_since():
    inbound = Inbound()
    inbound.listen(lambda message: None)
    inbound.put_nowait("heard only")
    inbound.listen(None)
    receive = asyncio.ensure_future(inbound.get())
    await waiting(inbound, 1)
    inbound.put_nowait("next")
    assert await asyncio.wait_for(receive, RECEIVE_SECONDS) == "next"
    assert inbound._items is None  # nothing kept once drained
