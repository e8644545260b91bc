"""Rings from sync code (services in worker threads) reach a group in the order they were made."""

import asyncio

import pytest
from channels.layers import get_channel_layer

from executions import publish
from tests.streaming_helpers import RECEIVE_SECONDS, eventually

pytestmark = pytest.mark.usefixtures("home_loop")


class HeldLayer:
    """A layer whose first group_send waits until released: a slow first Redis round trip."""

    def __init__(self):
        self.entered = 0
        self.sent: list[int] = []
        self.release = asyncio.Event()

    async def group_send(self, group: str, message: dict) -> None:
        self.entered += 1
        if message["n"] == 0:
            await self.release.wait()
        self.sent.append(message["n"])


async def test_a_slow_ring_is_not_overtaken_by_the_next(monkeypatch):
    layer = HeldLayer()
    monkeypatch.setattr(publish, "get_channel_layer", lambda: layer)

    def ring_three() -> None:  # as services do: from a worker thread, fire and forget
        for n in range(3):
            publish.group_send("events", {"n": n})

    await asyncio.to_thread(ring_three)
    await eventually(lambda: layer.entered)  # the first ring is held in the layer
    assert layer.sent == []  # and nothing went ahead of it
    layer.release.set()
    await eventually(lambda: len(layer.sent) == 3)
    assert layer.sent == [0, 1, 2]
    await eventually(lambda: not publish._tails)  # nothing kept once sent


async def test_rings_to_other_groups_do_not_wait(monkeypatch):
    layer = HeldLayer()
    monkeypatch.setattr(publish, "get_channel_layer", lambda: layer)
    await asyncio.to_thread(publish.group_send, "slow", {"n": 0})
    await asyncio.to_thread(publish.group_send, "other", {"n": 1})
    await eventually(lambda: layer.sent == [1])
    layer.release.set()
    await eventually(lambda: layer.sent == [1, 0])


async def test_a_real_layer_delivers_thread_rings_in_order(settings):
    # A ring that a stalled loop let overrun the send timeout would be skipped (by design).
    settings.CHANNEL_LAYER_SEND_TIMEOUT_SECONDS = RECEIVE_SECONDS
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("ordered", channel)
    count = 300

    def ring_all() -> None:
        for n in range(count):
            publish.group_send("ordered", {"type": "test.ring", "n": n})

    await asyncio.to_thread(ring_all)
    received = [
        (await asyncio.wait_for(layer.receive(channel), RECEIVE_SECONDS))["n"] for _ in range(count)
    ]
    assert received == list(range(count))
