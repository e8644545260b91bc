"""A two-level nested workflow with a two-host remote task, followed whole on a real server.

    outer (workflow) ─┬─ inner (workflow) ─┬─ one   (core.local; waits for `gate`)
                      │                    └─ two   (core.local)
                      └─ remote (core.remote on two Debian sshd) ─┬─ 127.0.0.1:PORT_A
                                                                  └─ 127.0.0.1:PORT_B
                                                                   (each waits for `hold`
                                                                    halfway through)

Real processes throughout: `manage.py serve` with its runner (embedded pass) or without, beside
an `actionrunner` (cluster pass: PostgreSQL and Redis between the processes); real sshd; real
HTTP, WebSocket (autobahn, in a child process as in tests/test_stream_server.py) and CLI
clients. Every client is connected before the first line is printed (`gate`), and the
hosts stay halfway (`hold`) until a client that disconnects at seeded random points has
resumed at least RESUMES_WHILE_LIVE times, so those resumes happen while the family runs.

What is checked against the stored OutputChunk rows of every member (docs/streaming-family.md
for the protocol): every chunk once, each member's in seq order, each event naming its
execution and task path, `child_started` before a member's output and `child_finished` after
it, `done` last and only once every member finished. Live, the documented order across
members is commit order, which the log does not record: the live clients are held to
per-member order, and a replay of the finished family to the full stored order
(timestamp, execution_id, seq).
"""

import json
import random
import subprocess
import textwrap
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from asgiref.sync import async_to_sync
from httpx_sse import connect_sse

from executions import services
from executions.models import Execution, OutputChunk
from executions.models.executions import FINISHED_STATUSES
from tests.cli_helpers import finish, start_cli
from tests.runner_helpers import register_pack, start_actionrunner, wait_until
from tests.server_helpers import running_server, session_cookie, stop, websocket_client
from tests.ssh_helpers import (
    TEST_USER,
    running_lab,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

OUTPUT = "execution.output__create"
# Failure bounds only (two busy cores): nothing healthy waits this long.
WAIT_SECONDS = 120
# The resuming client takes 1..MAX_FRAMES_PER_CONNECTION frames, then hangs up.
MAX_FRAMES_PER_CONNECTION = 12
RESUMES_WHILE_LIVE = 3
SEED = 13
FAST = {"RUNNER_POLL_SECONDS": "0.2"}

FAMILY_SIZE = 7  # outer, inner, one, two, remote and its two hosts

OUTER_YAML = """
    runner_type: workflow
    entry_point: workflows/outer.yaml
    parameters:
      hosts: {type: array}
      username: {type: string}
      private_key: {type: string, secret: true}
      gate: {type: string}
      hold: {type: string}
"""
INNER_YAML = """
    runner_type: workflow
    entry_point: workflows/inner.yaml
    parameters:
      gate: {type: string}
"""
OUTER_TASKS = """
    tasks:
      - name: inner
        action: fam.inner
        parameters:
          gate: "{{ gate }}"
      - name: remote
        action: core.remote
        parameters:
          hosts: "{{ hosts }}"
          username: "{{ username }}"
          private_key: "{{ private_key }}"
          cmd: >-
            p=${SSH_CONNECTION##* };
            for i in $(seq 1 12); do echo "host $p line $i"; done; echo "host $p err" >&2;
            while [ ! -e "{{ hold }}" ]; do sleep 0.05; done;
            for i in $(seq 13 24); do echo "host $p line $i"; done
"""
INNER_TASKS = """
    tasks:
      - name: one
        action: core.local
        parameters:
          cmd: >-
            while [ ! -e "{{ gate }}" ]; do sleep 0.05; done;
            for i in $(seq 1 15); do echo "one line $i"; done; echo "one err" >&2
      - name: two
        action: core.local
        parameters:
          cmd: for i in $(seq 1 15); do echo "two line $i"; done
"""


def pack_files() -> dict[str, str]:
    files = {
        "outer.yaml": OUTER_YAML,
        "inner.yaml": INNER_YAML,
        "workflows/outer.yaml": OUTER_TASKS,
        "workflows/inner.yaml": INNER_TASKS,
    }
    return {name: textwrap.dedent(text).lstrip() for name, text in files.items()}


# --- set-up -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab():
    with running_lab(2) as lab:
        yield lab


@pytest.fixture
def server(cluster_mode):
    """Embedded: `serve` with its runner. Cluster: `serve --no-runner` and an actionrunner."""
    if not cluster_mode:
        with running_server(**FAST) as server:
            yield server
        return
    runner = start_actionrunner(**FAST)
    drain = threading.Thread(target=runner.stdout.read, daemon=True)  # never a full pipe
    drain.start()
    try:
        with running_server("--no-runner", **FAST) as server:
            yield server
    finally:
        stop(runner)


@pytest.fixture
def fam(actions, tmp_path):
    return async_to_sync(register_pack)(tmp_path / "packs", "fam", pack_files())


@pytest.fixture
def key(superuser):
    from rbac.models import ApiKey

    return ApiKey.issue(superuser, name="cli")[1]


# --- the stored truth -------------------------------------------------------------------------


@dataclass
class Stored:
    root: Execution
    members: dict[str, Execution]  # id → row, root included
    paths: dict[str, str]  # id → task path from the root
    chunks: list[tuple[str, int, str, str]]  # (execution_id, seq, output_type, data), stored order

    def data(self) -> dict[tuple[str, int], str]:
        return {(eid, seq): data for eid, seq, _, data in self.chunks}

    def text_of(self, execution_id: str) -> str:
        return "".join(d for eid, _, _, d in self.chunks if eid == execution_id)

    def seqs_of(self, execution_id: str) -> list[int]:
        return sorted(seq for eid, seq, _, _ in self.chunks if eid == execution_id)


def stored_family(root_id: str) -> Stored:
    root = Execution.objects.get(pk=root_id)
    members = {root.id: root}
    paths = {root.id: root.task_name or root.action_ref.rsplit(".", 1)[-1]}
    frontier = [root]
    while frontier:
        children = list(Execution.objects.filter(parent__in=frontier).order_by("id"))
        for child in children:
            members[child.id] = child
            paths[child.id] = f"{paths[child.parent_id]}.{child.task_name}"
        frontier = children
    rows = OutputChunk.objects.filter(execution_id__in=members).order_by(
        "timestamp", "execution_id", "seq"
    )
    chunks = list(rows.values_list("execution_id", "seq", "output_type", "data"))
    return Stored(root, members, paths, chunks)


# --- clients ----------------------------------------------------------------------------------


@dataclass
class Event:
    event: str
    id: str | None
    data: dict[str, Any]


@dataclass
class Client:
    """Events one client received; `connected` is set once its stream is open."""

    events: list[Event] = field(default_factory=list)
    connected: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    resumes: int = 0
    text: str = ""

    def run_in_thread(self, work) -> threading.Thread:
        def guarded() -> None:
            try:
                work(self)
            except BaseException as exc:
                self.error = exc
                self.connected.set()

        thread = threading.Thread(target=guarded, daemon=True)
        thread.start()
        return thread


def sse_stream(url: str, cookies, client: Client, last_id: str | None = None, limit=None):
    """Read the family stream into `client.events`: `limit` events (then hang up) or to `done`.
    The last event's id."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    taken = 0
    with (
        httpx.Client(cookies=cookies, timeout=WAIT_SECONDS) as http,
        connect_sse(http, "GET", url, headers=headers) as source,
    ):
        assert source.response.status_code == 200, source.response.read()
        for sse in source.iter_sse():
            if sse.event == "message":  # the `retry:` preamble: the stream is open
                client.connected.set()
                continue
            client.events.append(Event(sse.event, sse.id or None, json.loads(sse.data)))
            taken += 1
            if sse.event == "done" or taken == limit:
                return client.events[-1].id
    raise AssertionError(f"the stream ended without `done`: {client.events[-3:]}")


def family_url(server_url: str, root_id: str, kind: str = "/stream") -> str:
    return f"{server_url}/api/v1/executions/{root_id}/output{kind}?include_children=true"


def resuming_reader(url: str, cookies, rng: random.Random):
    """Hangs up after a random number of frames each time, resuming with its last id."""

    def work(client: Client) -> None:
        last_id = None
        while not client.events or client.events[-1].event != "done":
            if client.events:
                client.resumes += 1
            limit = rng.randint(1, MAX_FRAMES_PER_CONNECTION)
            last_id = sse_stream(url, cookies, client, last_id, limit) or last_id

    return work


def text_reader(url: str, cookies):
    def work(client: Client) -> None:
        with (
            httpx.Client(cookies=cookies, timeout=WAIT_SECONDS) as http,
            http.stream("GET", url) as response,
        ):
            assert response.status_code == 200, response.read()
            client.connected.set()
            client.text = b"".join(response.iter_bytes()).decode()

    return work


def websocket_reader(server_url: str, cookies, root_id: str):
    request = {"action": "subscribe", "execution": root_id, "include_children": True}
    command = websocket_client(server_url, cookies, [request], 1, WAIT_SECONDS)

    def work(client: Client) -> None:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        for line in process.stdout:
            message = json.loads(line)
            if message["event"] == "subscribed":
                client.connected.set()
                continue
            assert message["execution"] == root_id, message
            client.events.append(Event(message["event"], message.get("id"), message["data"]))
        assert process.wait(WAIT_SECONDS) == 0, process.stderr.read() if process.stderr else ""

    return work


# --- checks -----------------------------------------------------------------------------------


def check_events(events: list[Event], stored: Stored) -> None:
    """Exactly the stored chunks, once each, each member's in seq order, named right; the
    lifecycle around them; `done` last."""
    descendants = [m for m in stored.members if m != stored.root.id]
    outputs = [e.data for e in events if e.event == OUTPUT]
    keys = [(d["execution_id"], d["seq"]) for d in outputs]
    assert Counter(keys) == Counter(list(stored.data())), "a chunk missing or repeated"
    for member_id in stored.members:
        assert [s for eid, s in keys if eid == member_id] == stored.seqs_of(member_id), member_id
    data = stored.data()
    for d in outputs:
        assert d["data"] == data[d["execution_id"], d["seq"]]
        assert d["path"] == stored.paths[d["execution_id"]]
        assert d["task_name"] == stored.members[d["execution_id"]].task_name
    assert not [e for e in events if e.event in ("reset", "gap", "error")]

    position = {id(e): i for i, e in enumerate(events)}
    started = {e.data["execution_id"]: e for e in events if e.event == "child_started"}
    finished = {e.data["execution_id"]: e for e in events if e.event == "child_finished"}
    assert [e.event for e in events].count("child_started") == len(descendants)
    assert [e.event for e in events].count("child_finished") == len(descendants)
    assert set(started) == set(finished) == set(descendants)
    for member_id in descendants:
        mine = [position[id(e)] for e in events if e.event == OUTPUT and _of(e, member_id)]
        begin, end = position[id(started[member_id])], position[id(finished[member_id])]
        assert all(begin < i < end for i in mine), f"{member_id} output outside its lifecycle"
        assert started[member_id].data["path"] == stored.paths[member_id]
        assert finished[member_id].data["status"] == "succeeded"
        assert finished[member_id].data["final_seq"] == stored.members[member_id].last_seq
    assert all(e.id for e in events[:-1]), "an event without an id"
    done = events[-1]
    assert done.event == "done" and [e.event for e in events].count("done") == 1
    assert done.data["executions"] == FAMILY_SIZE and done.data["status"] == "succeeded"


def _of(event: Event, member_id: str) -> bool:
    return event.data["execution_id"] == member_id


def check_live_text(text: str, stored: Stored) -> None:
    """Every line prefixed with its path; each member's lines are its stored output, in order."""
    by_path: dict[str, list[str]] = {}
    for line in text.splitlines(keepends=True):
        assert line.startswith("["), line
        path, _, rest = line[1:].partition("] ")
        by_path.setdefault(path, []).append(rest)
    expected = {stored.paths[m]: stored.text_of(m) for m in stored.members if stored.text_of(m)}
    assert {path: "".join(lines) for path, lines in by_path.items()} == expected


def rendered_text(stored: Stored) -> str:
    return "".join(f"[{stored.paths[eid]}] {data}" for eid, _, _, data in stored.chunks)


def check_cli(out: str, stored: Stored) -> None:
    """st2's story: each descendant between its own started/finished lines; every stored line."""
    root = stored.root
    lines = out.splitlines(keepends=True)
    assert lines[0] == f"Execution {root.id} has started.\n"
    assert lines[-1] == f"Execution {root.id} has completed (status=succeeded).\n"
    markers = []
    for member_id, member in stored.members.items():
        if member_id == root.id:
            continue
        begin = f"Child execution (task={member.task_name}) {member_id} has started.\n\n"
        end = f"\nChild execution (task={member.task_name}) {member_id} "
        end += "has finished (status=succeeded).\n"
        assert out.count(begin) == 1 and out.count(end) == 1, member.task_name
        markers += [begin.strip(), end.strip()]
        if not member.children.exists():  # a leaf's block is exactly its output
            block = out[out.index(begin) + len(begin) : out.index(end)]
            assert block == stored.text_of(member_id), member.task_name
    printed = [line for line in lines[1:-1] if line.strip() and line.strip() not in markers]
    assert Counter(printed) == Counter(
        line for _, _, _, data in stored.chunks for line in data.splitlines(keepends=True)
    )


# --- the test ---------------------------------------------------------------------------------


def test_it_follows_a_nested_family_whole_on_every_stream_and_the_cli(
    server, lab, fam, member, key, tmp_path
):
    gate, hold = tmp_path / "gate", lab.shared / f"hold-{tmp_path.name}"
    parameters = {
        "hosts": [sshd.host for sshd in lab.servers],
        "username": TEST_USER,
        "private_key": lab.private_key,
        "gate": str(gate),
        "hold": str(hold),
    }
    root = services.create_execution(fam["outer"], parameters)
    cookies = session_cookie(member)
    url = family_url(server.url, root.id)

    live, resumer, text, socket = Client(), Client(), Client(), Client()
    threads = [
        live.run_in_thread(lambda c: sse_stream(url, cookies, c)),
        resumer.run_in_thread(resuming_reader(url, cookies, random.Random(SEED))),
        text.run_in_thread(text_reader(family_url(server.url, root.id, ""), cookies)),
        socket.run_in_thread(websocket_reader(server.url, cookies, root.id)),
    ]
    cli = start_cli(server.url, key, "execution", "tail", root.id, config_home=tmp_path)
    try:
        assert cli.stdout is not None
        assert cli.stdout.readline() == f"Execution {root.id} has started.\n"
        for client in (live, resumer, text, socket):
            assert client.connected.wait(WAIT_SECONDS), "a client never connected"
            assert client.error is None, client.error
        gate.touch()  # every client is connected before the first line is printed
        wait_until(
            lambda: resumer.resumes >= RESUMES_WHILE_LIVE or resumer.error,
            WAIT_SECONDS,
            "the resuming client to resume while the family runs",
        )
        assert Execution.objects.get(pk=root.id).status not in FINISHED_STATUSES
        hold.touch()
        for thread in threads:
            thread.join(WAIT_SECONDS)
            assert not thread.is_alive(), "a client never got `done`"
        cli_out, cli_err = finish(cli)
    finally:
        gate.touch()
        hold.touch()
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    for client in (live, resumer, text, socket):
        assert client.error is None, repr(client.error)

    stored = stored_family(root.id)
    assert len(stored.members) == FAMILY_SIZE
    assert all(m.status == "succeeded" for m in stored.members.values())
    assert all(data.endswith("\n") for _, _, _, data in stored.chunks)  # one line a chunk
    hosts = {
        stored.paths[m] for m, row in stored.members.items() if row.action_ref == "core.remote"
    }
    assert hosts == {"outer.remote", *(f"outer.remote.{sshd.host}" for sshd in lab.servers)}

    check_events(live.events, stored)
    check_events(socket.events, stored)
    check_events(resumer.events, stored)
    assert resumer.resumes >= RESUMES_WHILE_LIVE
    check_live_text(text.text, stored)
    assert cli.returncode == 0, cli_err
    check_cli(f"Execution {root.id} has started.\n" + cli_out, stored)

    # Replayed once finished, the family comes in the full stored order.
    replay = Client()
    sse_stream(url, cookies, replay)
    check_events(replay.events, stored)
    assert [
        (e.data["execution_id"], e.data["seq"]) for e in replay.events if e.event == OUTPUT
    ] == [(eid, seq) for eid, seq, _, _ in stored.chunks]
    whole = httpx.get(family_url(server.url, root.id, ""), cookies=cookies, timeout=WAIT_SECONDS)
    assert whole.text == rendered_text(stored)


# --- regressions ------------------------------------------------------------------------------


def test_it_tails_each_host_of_a_multi_host_remote_run_as_a_child(
    server, lab, actions, key, tmp_path
):
    """The CLI followed only workflows' children: a two-host run printed its `Host H:
    execution …` lines and none of the hosts' output."""
    hold = lab.shared / f"hold-{tmp_path.name}"
    cmd = f'echo "$SSH_CONNECTION" first; while [ ! -e "{hold}" ]; do sleep 0.05; done; echo last'
    parameters = {
        "hosts": [sshd.host for sshd in lab.servers],
        "username": TEST_USER,
        "private_key": lab.private_key,
        "cmd": cmd,
    }
    root = services.create_execution(actions["core.remote"], parameters)
    cli = start_cli(server.url, key, "execution", "tail", root.id, config_home=tmp_path)
    try:
        assert cli.stdout is not None
        assert cli.stdout.readline() == f"Execution {root.id} has started.\n"
        hold.touch()
        out, err = finish(cli)
    finally:
        hold.touch()
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 0, err
    stored = stored_family(root.id)
    assert len(stored.members) == 3
    story = "\n"
    own = sorted((seq, data) for eid, seq, _, data in stored.chunks if eid == root.id)
    for _, data in own:
        story += data
        for child_id, child in stored.members.items():
            if child_id in data and child_id != root.id:
                story += f"Child execution (task={child.task_name}) {child_id} has started.\n\n"
                story += stored.text_of(child_id)
                story += f"\nChild execution (task={child.task_name}) {child_id} "
                story += "has finished (status=succeeded).\n"
    assert out == story + f"\nExecution {root.id} has completed (status=succeeded).\n"
