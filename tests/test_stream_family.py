"""`include_children`: an execution and its descendants at every depth in one stream (SSE,
plain text, WebSocket), exactly resumable; and the `ancestor` filter (REST list, global
stream). A two-level family: deploy ─┬─ build ── compile
                                      └─ test
"""

import asyncio
import json
import random
import time
from datetime import UTC, datetime, timedelta

import pytest
from channels.routing import URLRouter
from django.test import Client
from guardian.shortcuts import assign_perm, remove_perm
from ulid import ULID

from executions import services, storage
from executions.capture import Batch
from executions.models import Action, Execution, OutputChunk
from executions.packs import register
from executions.runner_service import RunnerService
from streaming.family_ids import parse_cursor
from streaming.routing import websocket_routes
from tests.streaming_helpers import (
    RECEIVE_SECONDS,
    Response,
    Socket,
    db,
    parse_sse,
    ring,
    store,
    write,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("home_loop")]

OUTPUT = "execution.output__create"


# --- the family -----------------------------------------------------------------------------


def start(actions, tenant=None, *, parent=None, task_name="") -> Execution:
    action = actions["examples.deploy"] if parent is None else actions["core.local"]
    parameters = {} if parent is None else {"cmd": "true"}
    created = services.create_execution(
        action, parameters, tenant=tenant, parent=parent, task_name=task_name
    )
    return services.claim(created.id, "test-runner")


class Family:
    def __init__(self, actions, tenant):
        self.actions = actions
        self.root = start(actions, tenant)
        self.build = start(actions, parent=self.root, task_name="build")
        self.compile = start(actions, parent=self.build, task_name="compile")
        self.test = start(actions, parent=self.root, task_name="test")

    @property
    def all(self) -> list[Execution]:
        return [self.root, self.build, self.compile, self.test]

    def store_interleaved(self, rounds: int = 3) -> None:
        """Lines of every member, interleaved, each store a separate commit."""
        for i in range(rounds):
            for member in self.all:
                store(member, [f"{member.task_name or 'deploy'} {i}.{j}\n" for j in range(2)])


def stored_order(ids) -> list[tuple[str, int]]:
    """The family's chunks in the documented order: (timestamp, execution_id, seq)."""
    rows = OutputChunk.objects.filter(execution_id__in=ids).order_by(
        "timestamp", "execution_id", "seq"
    )
    return list(rows.values_list("execution_id", "seq"))


@pytest.fixture
def family(actions, tenant) -> Family:
    return Family(actions, tenant)


def finish_all(family: Family) -> None:
    for member in (family.compile, family.build, family.test, family.root):
        services.finish(member.id, "succeeded", exit_code=0)


# --- reading ----------------------------------------------------------------------------------


def sse_frame(raw: str) -> dict:
    """parse_sse with string ids (family ids are cursors, not numbers)."""
    ident = next((line[4:] for line in raw.split("\n") if line.startswith("id: ")), None)
    frame = parse_sse("\n".join(line for line in raw.split("\n") if not line.startswith("id: ")))
    if ident is not None:
        frame["id"] = ident
    return frame


async def next_frame(response: Response, timeout: float = RECEIVE_SECONDS) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        while b"\n\n" in response.buffer:
            raw, response.buffer = response.buffer.split(b"\n\n", 1)
            frame = sse_frame(raw.decode())
            if "event" in frame:
                return frame
        assert not response.ended, "the response ended"
        await response.read_message(max(0.01, deadline - time.monotonic()))


async def frames_until(
    response: Response, predicate, timeout: float = RECEIVE_SECONDS
) -> list[dict]:
    frames = []
    while True:
        frames.append(await next_frame(response, timeout))
        if predicate(frames[-1]):
            return frames


def is_done(frame: dict) -> bool:
    return frame["event"] == "done"


def chunks(frames: list[dict]) -> list[tuple[str, int]]:
    return [(f["data"]["execution_id"], f["data"]["seq"]) for f in frames if f["event"] == OUTPUT]


async def open_family(execution_id: str, user, last_id: str | None = None, query: str = ""):
    headers = [(b"last-event-id", last_id.encode())] if last_id else []
    response = await Response.get(
        f"/api/v1/executions/{execution_id}/output/stream",
        "include_children=true" + query,
        user=user,
        headers=headers,
    )
    return response


async def read_family(execution_id: str, user, last_id: str | None = None) -> list[dict]:
    response = await open_family(execution_id, user, last_id)
    assert response.status == 200, response.buffer
    frames = await frames_until(response, is_done)
    await response.body()
    return frames


# --- SSE ----------------------------------------------------------------------------------------


async def test_it_streams_every_descendant_once_in_stored_order(family, member):
    await db(family.store_interleaved)()
    await db(finish_all)(family)
    frames = await read_family(family.root.id, member)
    ids = [m.id for m in family.all]
    expected = await db(stored_order)(ids)
    assert chunks(frames) == expected
    assert len(expected) == 4 * 3 * 2
    # Stored order here is the order of the writes: the rounds interleave the members.
    assert [eid for eid, _ in expected[:8:2]] == ids
    paths = {f["data"]["execution_id"]: f["data"]["path"] for f in frames if f["event"] == OUTPUT}
    assert paths == {
        family.root.id: "deploy",
        family.build.id: "deploy.build",
        family.compile.id: "deploy.build.compile",
        family.test.id: "deploy.test",
    }
    first = next(f for f in frames if f["event"] == OUTPUT and f["data"]["path"].endswith("ile"))
    assert first["data"]["task_name"] == "compile"
    assert first["data"]["data"] == "compile 0.0\n"
    started = [f["data"]["path"] for f in frames if f["event"] == "child_started"]
    assert started == ["deploy.build", "deploy.test", "deploy.build.compile"]
    finished = [f for f in frames if f["event"] == "child_finished"]
    assert {f["data"]["execution_id"] for f in finished} == set(ids[1:])
    assert all(f["data"]["status"] == "succeeded" and f["data"]["exit_code"] == 0 for f in finished)
    assert frames[-1]["data"]["status"] == "succeeded"
    assert frames[-1]["data"]["executions"] == 4


@pytest.mark.parametrize("members", [1, 3])
async def test_it_merges_long_logs_a_page_at_a_time(family, member, members):
    """Past a page (1,000 chunks) per member, and with smaller pages when several members
    have a backlog at once: still every chunk once, in stored order."""
    writers = [family.compile, family.root, family.test][:members]
    lines = 2100 // members

    def backlog() -> None:
        for start_at in range(0, lines, 100):
            for writer in writers:
                store(writer, [f"{writer.id} {i}\n" for i in range(start_at, start_at + 100)])

    await db(backlog)()
    await db(finish_all)(family)
    frames = await read_family(family.root.id, member)
    expected = await db(stored_order)([m.id for m in family.all])
    assert len(expected) == lines * members
    assert chunks(frames) == expected


async def test_it_resumes_from_any_event_with_exactly_the_rest(family, member):
    await db(family.store_interleaved)()
    await db(finish_all)(family)
    reference = await read_family(family.root.id, member)
    rng = random.Random(13)
    cuts = [*sorted(rng.sample(range(len(reference) - 1), 6)), 0, len(reference) - 2]
    for cut in cuts:
        rest = await read_family(family.root.id, member, reference[cut]["id"])
        assert [(f["event"], f.get("id")) for f in rest] == [
            (f["event"], f.get("id")) for f in reference[cut + 1 :]
        ], f"resumed after event {cut}"


@pytest.mark.parametrize("seed", [7, 11, 23])
async def test_it_follows_live_and_resumes_across_a_disconnect(family, member, seed):
    await db(store)(family.root, ["before\n"])
    response = await open_family(family.root.id, member)
    received = await frames_until(response, lambda f: f["event"] == OUTPUT)
    rng = random.Random(seed)
    for i in range(6):
        target = rng.choice(family.all)
        await write(target, [f"live {i}\n"])
    received += await frames_until(response, lambda f: f["data"].get("data") == "live 5\n")
    keep = rng.randrange(1, len(received))
    await response.disconnect()
    received = received[:keep]  # the client saw only these (the rest was lost in transit)
    # While the client is away: more output, and a new grandchild with output of its own.
    lint = await db(start)(family.actions, parent=family.build, task_name="lint")
    await write(lint, ["lint 1\n", "lint 2\n"])
    await write(family.compile, ["away\n"])
    response = await open_family(family.root.id, member, received[-1]["id"])
    rest = await frames_until(response, lambda f: f["data"].get("data") == "away\n")
    await write(lint, ["lint 3\n"])
    await db(services.finish)(lint.id, "failed", exit_code=2)
    await db(finish_all)(family)
    rest += await frames_until(response, is_done)
    got = chunks(received + rest)
    assert len(got) == len(set(got))  # no duplicate
    ids = [m.id for m in family.all] + [lint.id]
    assert sorted(got) == sorted(await db(stored_order)(ids))  # no loss
    lint_events = [f for f in received + rest if f["data"].get("execution_id") == lint.id]
    assert lint_events[0]["event"] == "child_started"
    assert lint_events[0]["data"]["path"] == "deploy.build.lint"
    finished = next(f for f in rest if f["event"] == "child_finished" and f in lint_events)
    assert (finished["data"]["status"], finished["data"]["exit_code"]) == ("failed", 2)
    started = [f["data"]["execution_id"] for f in received + rest if f["event"] == "child_started"]
    assert sorted(started) == sorted(ids[1:])  # each announced once, across the reconnect


async def test_it_sends_done_only_after_every_descendant_finished(family, member):
    response = await open_family(family.root.id, member)
    await db(services.finish)(family.test.id, "succeeded", exit_code=0)
    await db(services.finish)(family.root.id, "succeeded", exit_code=0)
    # The root is finished, build and compile are not: the stream goes on.
    await write(family.compile, ["still going\n"])
    frames = await frames_until(response, lambda f: f["data"].get("data") == "still going\n")
    assert not any(is_done(f) for f in frames)
    await db(services.finish)(family.compile.id, "succeeded", exit_code=0)
    frames = await frames_until(
        response, lambda f: f["event"] == "child_finished" and f["data"]["path"].endswith("ile")
    )
    assert not any(is_done(f) for f in frames)
    await db(services.finish)(family.build.id, "timeout", exit_code=None)
    frames = await frames_until(response, is_done)
    assert [f["event"] for f in frames] == ["child_finished", "done"]
    assert frames[0]["data"]["status"] == "timeout"
    await response.body()


async def test_it_gives_a_child_only_viewer_only_that_subtree(family, outsider):
    await db(family.store_interleaved)(1)
    await db(finish_all)(family)
    await db(assign_perm)("executions.view_execution", outsider, family.build)
    denied = await open_family(family.root.id, outsider)
    assert denied.status == 404
    frames = await read_family(family.build.id, outsider)
    assert {eid for eid, _ in chunks(frames)} == {family.build.id, family.compile.id}
    paths = {f["data"]["path"] for f in frames if f["event"] == OUTPUT}
    assert paths == {"build", "build.compile"}
    assert frames[-1]["data"]["executions"] == 2


async def test_it_ends_the_family_stream_when_its_execution_is_revoked(family, outsider):
    await db(assign_perm)("executions.view_execution", outsider, family.build)
    response = await open_family(family.build.id, outsider)
    await write(family.compile, ["secret soon\n"])
    await frames_until(response, lambda f: f["data"].get("data") == "secret soon\n")
    await db(remove_perm)("executions.view_execution", outsider, family.build)
    frames = await frames_until(response, lambda f: f["event"] == "revoked")
    assert not chunks(frames)
    await response.body()
    assert response.ended


@pytest.mark.parametrize(
    ("query", "headers", "location"),
    [
        ("include_children=maybe", [], "query.include_children"),
        ("include_children=true&from=0", [], "query.from"),
        ("include_children=1", [(b"last-event-id", b"42")], "header.Last-Event-ID"),
    ],
)
async def test_it_refuses_bad_family_requests(family, member, query, headers, location):
    response = await Response.get(
        f"/api/v1/executions/{family.root.id}/output/stream", query, user=member, headers=headers
    )
    assert response.status == 422
    body = json.loads(await response.body())
    assert [e["location"] for e in body["errors"]] == [location]


def test_it_reads_a_cursor_back():
    cursor = parse_cursor("01ARZ3NDEKTSV4RRFFQ69G5FAV:12,01arz3ndektsv4rrffq69g5faw:3!")
    assert [(p.seq, p.closed) for p in cursor.positions.values()] == [(12, False), (3, True)]
    assert list(cursor.positions)[1] == "01ARZ3NDEKTSV4RRFFQ69G5FAW"
    for bad in ("", "12", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "x:1", "01ARZ3NDEKTSV4RRFFQ69G5FAV:-1"):
        with pytest.raises(ValueError):
            parse_cursor(bad)


async def test_it_resumes_exactly_when_commits_come_out_of_timestamp_order(family, member):
    """Runners commit when they can: a batch read (timestamped) earlier may be stored after
    one read later. Live, the stream sends it when it arrives; a resume is still exact."""
    response = await open_family(family.root.id, member)
    await write(family.test, ["newer\n"])
    await frames_until(response, lambda f: f["data"].get("data") == "newer\n")
    late = await db(store_at)(family.compile, "older\n", datetime.now(UTC) - timedelta(seconds=5))
    await ring(family.compile, late)
    seen = await frames_until(response, lambda f: f["data"].get("data") == "older\n")
    await response.disconnect()
    await db(store_at)(family.build, "while away, older still\n", datetime.now(UTC) - timedelta(1))
    await db(finish_all)(family)
    rest = await read_family(family.root.id, member, seen[-1]["id"])
    assert [f["data"]["data"] for f in rest if f["event"] == OUTPUT] == [
        "while away, older still\n"
    ]


def sequential_children(family: Family, count: int) -> list[Execution]:
    """`count` more children of the root, each with a line, finished one after another."""
    children = []
    for i in range(count):
        child = start(family.actions, parent=family.root, task_name=f"step{i}")
        store(child, [f"step {i}\n"])
        services.finish(child.id, "succeeded", exit_code=0)
        children.append(child)
    return children


async def test_it_keeps_ids_short_by_folding_members_closed_in_turn(family, member):
    await db(sequential_children)(family, 40)
    await db(finish_all)(family)
    frames = await read_family(family.root.id, member)
    last = frames[-2]["id"]  # the last child_finished (done has no id)
    assert last.count(",") == 1 and ",~" in last, last  # the root, then one watermark
    assert parse_cursor(last).watermark.count == 43
    for cut in random.Random(5).sample(range(len(frames) - 1), 5):
        rest = await read_family(family.root.id, member, frames[cut]["id"])
        assert [f.get("id") for f in rest] == [f.get("id") for f in frames[cut + 1 :]]


def late_child(family: Family, below: Execution) -> Execution:
    """A child whose id sorts just after `below`'s: created after a watermark passed it."""
    action = family.actions["core.local"]
    return Execution.objects.create(
        id=str(ULID.from_int(int(ULID.from_str(below.id)) + 1)),
        action=action,
        action_ref=action.ref,
        runner_type=action.runner_type,
        tenant=family.root.tenant,
        parent=family.root,
        task_name="late",
        status="running",
    )


async def test_it_resumes_exactly_past_a_member_created_below_the_watermark(family, member):
    response = await open_family(family.root.id, member)
    for child in (family.compile, family.build):
        await write(child, [f"{child.task_name} done\n"])
        await db(services.finish)(child.id, "succeeded", exit_code=0)
    frames = await frames_until(
        response, lambda f: f["event"] == "child_finished" and f["data"]["path"] == "deploy.build"
    )
    assert parse_cursor(frames[-1]["id"]).watermark is not None
    await response.disconnect()
    late = await db(late_child)(family, family.build)
    await db(store)(late, ["late line\n"])
    await db(services.finish)(late.id, "succeeded", exit_code=0)
    await db(finish_all)(family)
    rest = await read_family(family.root.id, member, frames[-1]["id"])
    assert chunks(rest) == [(late.id, 1)]
    assert [f["event"] for f in rest if f["data"].get("execution_id") == late.id] == [
        "child_started",
        OUTPUT,
        "child_finished",
    ]


async def test_it_starts_over_with_reset_when_a_watermark_does_not_fit(family, member):
    await db(sequential_children)(family, 3)
    await db(finish_all)(family)
    reference = await read_family(family.root.id, member)
    cursor = reference[-2]["id"]
    digest = parse_cursor(cursor).watermark.digest
    forged = cursor.replace(digest, "0" * 8 if digest != "0" * 8 else "1" * 8)
    frames = await read_family(family.root.id, member, forged)
    assert frames[0]["event"] == "reset"
    assert chunks(frames) == chunks(reference)


def store_at(execution: Execution, line: str, stamp: datetime) -> Batch:
    execution.refresh_from_db(fields=["last_seq"])
    rows = [(execution.last_seq + 1, "stdout", line, stamp)]
    storage.store_batch(execution.id, rows)
    return Batch(execution.id, rows[0][0], rows)


# --- a nested workflow run by the real runner ---------------------------------------------------

NESTED_WORKFLOW = """\
tasks:
  - name: deploy
    action: examples.deploy
    parameters:
      steps: 1
  - name: announce
    action: core.local
    parameters:
      cmd: echo "announced"
"""


@pytest.fixture
def release(actions, tmp_path) -> Action:
    """`nest.release`: a workflow whose first task is the examples' deploy workflow."""
    folder = tmp_path / "nest" / "actions"
    (folder / "workflows").mkdir(parents=True)
    (folder / "workflows" / "release.yaml").write_text(NESTED_WORKFLOW)
    (folder / "release.yaml").write_text(
        "name: release\nrunner_type: workflow\nentry_point: workflows/release.yaml\n"
    )
    register([tmp_path])
    return Action.objects.get(ref="nest.release")


async def test_it_follows_a_nested_workflow_run_by_the_runner(release, member, tenant):
    execution = await db(services.create_execution)(release, {}, tenant=tenant)
    response = await open_family(execution.id, member)
    service = RunnerService(concurrency=1)
    claimed = await service.control_db(services.claim, execution.id, service.runner_id)
    await service.control_db(lambda: claimed.action)
    run = asyncio.create_task(service.execute(claimed, asyncio.Event()))
    try:
        frames = await frames_until(response, is_done)
        assert (await run).status == "succeeded"
    finally:
        await asyncio.get_running_loop().run_in_executor(None, service.close)
    ids = await db(lambda: list(Execution.objects.values_list("id", flat=True)))()
    got = chunks(frames)
    assert len(got) == len(set(got)) and sorted(got) == sorted(await db(stored_order)(ids))
    paths = {f["data"]["path"] for f in frames if f["event"] == "child_finished"}
    assert paths == {
        "release.deploy",
        "release.deploy.build",
        "release.deploy.test",
        "release.deploy.summary",
        "release.announce",
    }
    lines = {(f["data"]["path"], f["data"]["data"]) for f in frames if f["event"] == OUTPUT}
    assert ("release.announce", "announced\n") in lines
    assert ("release.deploy.summary", "deployed after 1 build steps\n") in lines
    assert frames[-1]["data"]["status"] == "succeeded" and frames[-1]["data"]["executions"] == 6
    replayed = await read_family(execution.id, member)
    assert chunks(replayed) == await db(stored_order)(ids)


# --- plain text ---------------------------------------------------------------------------------


async def test_it_writes_the_family_as_text_with_task_paths(family, member):
    await db(store)(family.root, ["Task build started\n"])
    await db(store)(family.compile, ["half a ", "line\n"])
    await db(store)(family.test, ["ok\n"])
    await db(finish_all)(family)
    response = await Response.get(
        f"/api/v1/executions/{family.root.id}/output", "include_children=1", user=member
    )
    assert response.status == 200
    assert (await response.body()).decode() == (
        "[deploy] Task build started\n[deploy.build.compile] half a line\n[deploy.test] ok\n"
    )


# --- WebSocket ----------------------------------------------------------------------------------


async def socket_of(user) -> Socket:
    socket = Socket(URLRouter(websocket_routes), "/ws/v1/stream")
    socket.scope["user"] = user
    connected, _ = await socket.connect()
    assert connected
    return socket


async def ws_until(socket, predicate, timeout: float = RECEIVE_SECONDS) -> list[dict]:
    messages = []
    while True:
        messages.append(await socket.receive_json_from(timeout=timeout))
        if predicate(messages[-1]):
            return messages


async def test_it_streams_and_resumes_the_family_over_websocket(family, member):
    await db(family.store_interleaved)(2)
    await db(finish_all)(family)
    reference = await read_family(family.root.id, member)
    socket = await socket_of(member)
    subscribe = {"action": "subscribe", "execution": family.root.id, "include_children": True}
    await socket.send_json_to(subscribe)
    messages = await ws_until(socket, is_done)
    assert messages[0]["event"] == "subscribed"
    assert messages[0]["data"] == {"requested": family.root.id, "include_children": True}
    events = messages[1:]
    assert all(m["execution"] == family.root.id for m in events)
    assert [(m["event"], m.get("id")) for m in events] == [
        (f["event"], f.get("id")) for f in reference
    ]
    cut = random.Random(3).randrange(len(events) - 1)
    await socket.send_json_to({**subscribe, "last_event_id": events[cut]["id"]})
    resumed = (await ws_until(socket, is_done))[1:]
    assert [m.get("id") for m in resumed] == [m.get("id") for m in events[cut + 1 :]]
    await socket.send_json_to({**subscribe, "from": 0})
    error = await socket.receive_json_from()
    assert error["event"] == "error" and error["data"]["status"] == 422
    await socket.disconnect()


# --- the ancestor filter ------------------------------------------------------------------------


def test_it_lists_descendants_at_every_depth(family, member):
    client = Client()
    client.force_login(member)

    def ids(query: str) -> set[str]:
        reply = client.get(f"/api/v1/executions/?{query}")
        assert reply.status_code == 200, reply.content
        return {row["id"] for row in reply.json()["results"]}

    everyone = {family.build.id, family.compile.id, family.test.id}
    assert ids(f"ancestor={family.root.id}") == everyone
    assert ids(f"parent={family.root.id}") == {family.build.id, family.test.id}
    assert ids(f"ancestor={family.build.id}") == {family.compile.id}
    assert ids(f"ancestor={family.compile.id}") == set()


async def test_it_filters_the_global_stream_by_ancestor(family, member, actions, tenant):
    response = await Response.get(
        "/api/v1/stream", f"ancestor={family.root.id}&events=*", user=member
    )
    assert response.status == 200
    stranger = await db(start)(actions, tenant)
    await write(stranger, ["not family\n"])
    # A child created after the stream opened, and its own child: learned in turn.
    extra = await db(start)(actions, parent=family.root, task_name="extra")
    lint = await db(start)(actions, parent=extra, task_name="lint")
    await write(lint, ["deep\n"])
    await write(family.root, ["root itself\n"])
    await write(family.test, ["child\n"])
    frames = []
    while not frames or frames[-1].get("data", {}).get("data") != "child\n":
        frames.append(await response.next_sse())
    about = {f["data"].get("id") or f["data"].get("execution_id") for f in frames}
    assert about == {extra.id, lint.id, family.test.id}  # not the stranger, not the root
    created = [f for f in frames if f["event"] == "execution__create"]
    assert [f["data"]["id"] for f in created] == [extra.id, lint.id]
    await response.disconnect()


async def test_it_filters_subscribe_events_by_ancestor(family, member, actions, tenant):
    socket = await socket_of(member)
    await socket.send_json_to({"action": "subscribe_events", "ancestor": family.build.id})
    assert (await socket.receive_json_from())["event"] == "subscribed"
    await db(services.finish)(family.test.id, "succeeded", exit_code=0)
    await db(services.finish)(family.compile.id, "failed", exit_code=1)
    message = await socket.receive_json_from()
    assert (message["event"], message["data"]["id"]) == ("execution__update", family.compile.id)
    await socket.send_json_to({"action": "subscribe_events", "ancestor": "nope"})
    await socket.send_json_to({"action": "unsubscribe_events"})
    errors = await ws_until(socket, lambda m: m["event"] == "unsubscribed")
    assert errors[0]["data"]["errors"][0]["location"] == "message.ancestor"
    await socket.disconnect()


async def test_it_follows_a_multi_host_remote_task_and_its_hosts(family, member, actions):
    """A workflow task that is a multi-host remote run: its per-host children (created by the
    remote runner's own function) are descendants like any task, at the next depth."""
    from executions.runners.remote import _create_children

    def remote_task():
        remote = services.create_execution(
            actions["core.remote"],
            {"hosts": ["alpha:22", "beta:22"], "cmd": "uptime"},
            tenant=family.root.tenant,
            parent=family.root,
            task_name="hosts",
        )
        services.claim(remote.id, "test-runner")
        hosts = _create_children(remote.id, ["alpha:22", "beta:22"])
        for child in hosts.values():
            services.claim(child.id, "test-runner")
        family.store_interleaved(1)
        for host, child in hosts.items():
            store(child, [f"{host} up 3 days\n"])
        for child in hosts.values():
            services.finish(child.id, "succeeded", exit_code=0)
        services.finish(remote.id, "succeeded", exit_code=0)
        finish_all(family)
        return remote, list(hosts.values())

    remote, hosts = await db(remote_task)()
    frames = await read_family(family.root.id, member)
    ids = [m.id for m in family.all] + [remote.id] + [h.id for h in hosts]
    assert chunks(frames) == await db(stored_order)(ids)
    paths = {f["data"]["path"] for f in frames if f["event"] == OUTPUT}
    assert {"deploy.hosts.alpha:22", "deploy.hosts.beta:22"} <= paths
    finished = {f["data"]["execution_id"] for f in frames if f["event"] == "child_finished"}
    assert {remote.id, *(h.id for h in hosts)} <= finished
