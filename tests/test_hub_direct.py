"""The hub's direct path (streaming/direct.py): on its tick the hub writes a caught-up
stream's live output to the transport itself; a lagging stream in the same hub goes on
through its own task; both stay exact.

The streams run under daphne's side of a connection as they see it: a protocol whose
`handle_reply` takes the response (what daphne's ASGI `send` calls) and a transport whose
buffer `FlowControl` reads. Every write, by the stream's task or by the hub, lands in that
one protocol in order, so order and duplicates are checked across both paths.
"""

import asyncio
from datetime import UTC, datetime

import pytest
from channels.routing import URLRouter

from executions import publish
from executions.capture import Batch
from streaming.direct import DirectSink, continuing, encode_batches
from streaming.flow import FLOW_EXTENSION, FlowControl
from streaming.live import Inbox
from streaming.routing import http_routes
from tests.streaming_helpers import (
    RECEIVE_SECONDS,
    db,
    eventually,
    finish,
    http_scope,
    parse_sse,
    running_execution,
    store,
    write,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("home_loop")]

OVER_THE_BOUND = 2 * 1024 * 1024  # more than STREAM_SEND_BUFFER_BYTES (1 MiB) unread


class Transport:
    """The fields of Twisted's FileDescriptor that FlowControl reads."""

    def __init__(self) -> None:
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self.disconnecting = False


class Connection:
    """One request as daphne holds it: the response arrives at `handle_reply`."""

    def __init__(self, path: str, query: str, user) -> None:
        self.transport = Transport()
        self.scope = http_scope(path, query, user=user)
        self.scope["extensions"] = {FLOW_EXTENSION: FlowControl(self)}
        self.requests: asyncio.Queue = asyncio.Queue()
        self.body = b""
        self.writes: list[tuple[str, bytes]] = []  # (path, body): "task" or "hub"
        self._via_send = False
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.requests.put_nowait({"type": "http.request", "body": b"", "more_body": False})
        app = URLRouter(http_routes)
        self.task = asyncio.ensure_future(app(self.scope, self.requests.get, self.send))

    async def send(self, message) -> None:  # the ASGI send: daphne hands it to handle_reply
        self._via_send = True
        try:
            self.handle_reply(message)
        finally:
            self._via_send = False

    def handle_reply(self, message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            self.body += message["body"]
            self.writes.append(("task" if self._via_send else "hub", message["body"]))

    def events(self) -> list[dict]:
        frames = [parse_sse(raw) for raw in self.body.decode().split("\n\n") if raw]
        return [f for f in frames if "event" in f]

    def seqs(self) -> list[int]:
        return [f["id"] for f in self.events() if f["event"] == "execution.output__create"]

    def hub_wrote(self, text: str) -> bool:
        return any(path == "hub" and text.encode() in body for path, body in self.writes)

    async def close(self) -> None:
        self.requests.put_nowait({"type": "http.disconnect"})
        assert self.task is not None
        await asyncio.wait_for(self.task, RECEIVE_SECONDS)


@pytest.fixture
def ticking(settings):
    """The hub's tick from the first stream (it starts at 100 streams in production).

    A caught-up stream is written by the hub only while its task waits with nothing to do; an
    access re-check's verdict or a keep-alive due wakes the task, which then writes what came
    itself (correct, but not the path under test). On a machine slow enough for a test to last
    past those intervals (15 s each), that happened: they are an hour away here."""
    settings.STREAM_COALESCE_MIN_STREAMS = 1
    settings.STREAM_ACCESS_RECHECK_SECONDS = 3600
    settings.STREAM_KEEPALIVE_SECONDS = 3600
    # Nor may a ring be skipped because a stalled loop overran the layer's send timeout: the
    # streams' own tasks would then heal from the log, and the last ring has no re-check.
    settings.CHANNEL_LAYER_SEND_TIMEOUT_SECONDS = RECEIVE_SECONDS


@pytest.mark.usefixtures("ticking")
async def test_it_writes_a_caught_up_stream_directly_and_a_lagging_one_through_its_task(
    actions, tenant, member
):
    execution = await db(running_execution)(actions["examples.print_lines"], tenant)
    await db(store)(execution, ["one\n", "two\n"])
    path = f"/api/v1/executions/{execution.id}/output/stream"
    fast, slow = Connection(path, "from=0", member), Connection(path, "from=0", member)
    for connection in (fast, slow):
        connection.start()
        await eventually(lambda c=connection: c.seqs() == [1, 2], what="the replay")

    slow.transport._tempDataLen = OVER_THE_BOUND  # its client stopped reading
    await write(execution, ["three\n"])
    await eventually(lambda: fast.hub_wrote('"three\\n"'), what="the hub's write")
    await eventually(lambda: slow.seqs() == [1, 2, 3], what="the slow stream's own write")
    assert not slow.hub_wrote('"three\\n"')  # over the bound: its task wrote (then waits)

    await write(execution, ["four\n"])
    await write(execution, ["five\n"])
    await eventually(lambda: fast.seqs() == [1, 2, 3, 4, 5], what="the fast stream")
    assert slow.seqs() == [1, 2, 3]  # paused: it takes nothing more meanwhile
    slow.transport._tempDataLen = 0  # its client reads again
    await eventually(lambda: slow.seqs() == [1, 2, 3, 4, 5], what="the slow stream's resume")

    # A batch the layer lost (stored, never rung): the next one shows the gap, and each
    # stream's task reads the log for it.
    await db(store)(execution, ["six, never rung\n"])
    await write(execution, ["seven\n"])
    for connection in (fast, slow):
        await eventually(lambda c=connection: c.seqs() == [1, 2, 3, 4, 5, 6, 7], what="backfill")
    await finish(execution)
    for connection in (fast, slow):
        await asyncio.wait_for(connection.task, RECEIVE_SECONDS)  # the stream ends after `done`
        assert connection.events()[-1]["event"] == "done"
        assert connection.seqs() == [1, 2, 3, 4, 5, 6, 7]  # no loss, duplicate or reorder
        assert [f["data"]["data"] for f in connection.events()[:-1]] == [
            "one\n",
            "two\n",
            "three\n",
            "four\n",
            "five\n",
            "six, never rung\n",
            "seven\n",
        ]


@pytest.mark.usefixtures("ticking")
async def test_it_writes_plain_text_directly_with_the_type_filter(actions, tenant, member):
    execution = await db(running_execution)(actions["examples.print_lines"], tenant)
    await db(store)(execution, ["out 1\n"])
    path = f"/api/v1/executions/{execution.id}/output"
    errors, everything = Connection(path, "type=stderr", member), Connection(path, "", member)
    for connection in (errors, everything):
        connection.start()
    await eventually(lambda: everything.body == b"out 1\n", what="the replay")
    await write(execution, ["err 2\n"], "stderr")
    await write(execution, ["out 3\n"])
    await write(execution, ["err 4\n"], "stderr")
    await eventually(lambda: everything.body == b"out 1\nerr 2\nout 3\nerr 4\n", what="all")
    await eventually(lambda: errors.body == b"err 2\nerr 4\n", what="stderr only")
    assert everything.hub_wrote("out 3\n")
    await finish(execution)
    for connection in (errors, everything):
        await asyncio.wait_for(connection.task, RECEIVE_SECONDS)
    assert errors.body == b"err 2\nerr 4\n"


@pytest.mark.usefixtures("ticking")
async def test_a_stream_whose_client_left_is_not_written_to(actions, tenant, member):
    execution = await db(running_execution)(actions["examples.print_lines"], tenant)
    path = f"/api/v1/executions/{execution.id}/output/stream"
    gone, staying = Connection(path, "", member), Connection(path, "", member)
    for connection in (gone, staying):
        connection.start()
    await write(execution, ["one\n"])
    await eventually(lambda: gone.seqs() == [1] and staying.seqs() == [1], what="both live")
    gone.transport.disconnecting = True  # the connection is closing: no direct write
    await write(execution, ["two\n"])
    await eventually(lambda: staying.seqs() == [1, 2], what="the staying stream")
    assert not gone.hub_wrote('"two\\n"')
    await gone.close()
    await staying.close()


@pytest.mark.usefixtures("ticking")
async def test_caught_up_streams_get_live_output_without_their_inboxes(
    actions, tenant, member, monkeypatch
):
    """With the tick on, the hub keeps a group's messages once and writes caught-up streams
    from them: nothing goes through an inbox until something needs the stream's own task."""
    execution = await db(running_execution)(actions["examples.print_lines"], tenant)
    path = f"/api/v1/executions/{execution.id}/output/stream"
    streams = [Connection(path, "", member) for _ in range(3)]
    for connection in streams:
        connection.start()
    await write(execution, ["one\n"])  # by replay or live: either way the streams are live then
    await eventually(lambda: all(c.seqs() == [1] for c in streams), what="the streams")
    puts: list[str] = []
    original = Inbox.put

    def counted(inbox, message, **kwargs):
        puts.append(message.get("type"))
        return original(inbox, message, **kwargs)

    monkeypatch.setattr(Inbox, "put", counted)
    for n in range(2, 6):
        await write(execution, [f"line {n}\n"])
    await eventually(lambda: all(c.seqs() == [1, 2, 3, 4, 5] for c in streams), what="live")
    assert puts == []
    assert all(c.hub_wrote(f'"line {n}\\n"') for c in streams for n in range(2, 6))
    await finish(execution)  # a lifecycle event: each stream's task must see it
    for connection in streams:
        await asyncio.wait_for(connection.task, RECEIVE_SECONDS)
        assert connection.events()[-1]["event"] == "done"
        assert connection.seqs() == [1, 2, 3, 4, 5]
    assert puts.count("execution.event") == len(streams)


def _batch_message(execution_id: str, first: int, last: int) -> dict:
    stamp = datetime.now(UTC)
    rows = [(seq, "stdout", f"{seq}\n", stamp) for seq in range(first, last + 1)]
    batch = Batch(execution_id, first, rows)
    chunks = batch.as_messages("examples.print_lines", "local-shell-cmd")
    return publish.output_batch_message(execution_id, first, last, chunks)


def test_a_batch_the_stream_already_has_does_not_move_it_back():
    """The stream read the log up to 10 (its replay) while batches 6-8 and 9-12 waited for the
    tick: it gets 11 and 12, once."""
    messages = [_batch_message("E", 6, 8), _batch_message("E", 9, 12)]
    assert continuing(messages, 10) == (2, 12)
    sink = DirectSink(
        "seqs", lambda frames: repr([f.data["seq"] for f in frames]).encode(), None, None
    )  # type: ignore[arg-type]
    assert encode_batches(sink, messages, 10, None, {}) == b"[11, 12]"
    assert continuing([*messages, _batch_message("E", 14, 15)], 10) == (2, 12)  # 13 missing
