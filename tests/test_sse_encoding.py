"""The fast output-event encoder writes exactly what the general one does, for any text."""

import json

from hypothesis import given
from hypothesis import strategies as st

from streaming import sse
from streaming.frames import Frame, output_frame

text = st.text(st.characters(exclude_categories=("Cs",)))  # lone surrogates never reach here


def _general(frame: Frame) -> bytes:
    data = json.dumps(frame.data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {frame.event}\nid: {frame.id}\ndata: {data}\n\n".encode()


@given(seq=st.integers(1, 2**63 - 1), data=text, ref=text, stamp=text)
def test_it_encodes_an_output_event_like_the_general_encoder(seq, data, ref, stamp):
    chunk = {
        "seq": seq,
        "execution_id": "01M8PV2WTMJPDAE5AZC6G7HQF1",
        "output_type": "stderr",
        "data": data,
        "timestamp": stamp,
        "action_ref": ref,
        "runner_ref": "local-shell-cmd",
    }
    frame = output_frame(chunk)
    assert sse.encode(frame) == _general(frame)


def test_it_encodes_other_events_the_general_way():
    frame = Frame("done", {"final_seq": 3, "status": "succeeded", "exit_code": 0})
    assert (
        sse.encode(frame)
        == b'event: done\ndata: {"final_seq":3,"status":"succeeded","exit_code":0}\n\n'
    )


async def test_a_keepalive_is_due_by_the_last_write_not_the_last_item(settings):
    import asyncio
    import time

    from streaming.live import Control, Inbox, KeepAlive

    settings.STREAM_KEEPALIVE_SECONDS = 3600  # a wait of a whole interval would hang the test
    sent = []

    async def send():
        sent.append("keepalive")

    clock = KeepAlive(send)
    clock.last = time.monotonic() - 3600  # nothing written for an interval: one is due now
    inbox = Inbox()
    inbox.control(Control("access"))  # an item that writes nothing comes first
    assert [item.kind for item in await inbox.take(clock)] == ["access"]
    waiting = asyncio.ensure_future(inbox.take(clock))
    async with asyncio.timeout(30):
        while not sent:  # sent at once: the item did not restart the clock
            await asyncio.sleep(0.01)
    inbox.control(Control("resync"))
    assert [item.kind for item in await waiting] == ["resync"]
    assert sent == ["keepalive"] and clock.due_in() > 0  # and it counts as a write
