"""Remote runners against real OpenSSH servers (Debian's sshd on loopback ports).

The session fixture installs openssh-server when it is missing and starts three sshd, each
with its own throwaway host key, accepting one throwaway client key for the `tailgate-ssh`
user (tests/ssh_helpers.py says why that user and which options). Commands that must wait
for the test wait for a file the test creates in a directory both can reach, never a sleep.
"""

import asyncio
import socket
import uuid
from pathlib import Path

import asyncssh
import pytest
from asgiref.sync import sync_to_async

from executions import services
from executions.models import Action, Execution, ExecutionStatus
from executions.runner_service import RunnerService
from tests.runner_helpers import (
    REMOTE_HELLO_YAML,
    RUN_TIMEOUTS,
    finished_row,
    output_of,
    register_pack,
    run_execution,
)
from tests.ssh_helpers import (
    TEST_USER,
    remote_processes,
    running_lab,
)
from tests.streaming_helpers import eventually

pytestmark = pytest.mark.django_db(transaction=True)
S = ExecutionStatus
# Generous: two cores shared by many test runs; nothing here waits this long when healthy.
WAIT_SECONDS = 120
SERVERS = 3


@pytest.fixture(scope="session")
def lab():
    with running_lab(SERVERS) as lab:
        yield lab


def params(lab, *servers, **extra):
    return {
        "hosts": [server.host for server in servers],
        "username": TEST_USER,
        "private_key": lab.private_key,
        **extra,
    }


def text_of(execution_id: str) -> str:
    return "".join(data for _, _, data in output_of(execution_id))


def row(execution_id: str) -> Execution:
    return Execution.objects.get(pk=execution_id)


def children_of(execution_id: str) -> list[Execution]:
    return list(Execution.objects.filter(parent_id=execution_id).order_by("task_name"))


async def launch(service: RunnerService, action, parameters) -> tuple[str, asyncio.Task]:
    """Start a run in this loop; its id at once, and the task that ends with the finished row."""
    execution = await sync_to_async(services.create_execution)(action, parameters)
    claimed = await service.control_db(services.claim, execution.id, service.runner_id)
    await service.control_db(lambda: claimed.action)
    return execution.id, asyncio.create_task(service.execute(claimed, asyncio.Event()))


@pytest.fixture
async def service():
    service = RunnerService(concurrency=4)
    yield service
    await asyncio.get_running_loop().run_in_executor(None, service.close)


@pytest.fixture
async def running_service():
    """A started runner: claims, heartbeats and forwards cancels, as in production."""
    service = RunnerService(concurrency=4)
    await service.start_service()
    yield service
    await service.stop(grace_seconds=10)


def marker() -> str:
    """A unique `sleep` argument, so `ps` finds this test's remote processes and no other's."""
    return f"1000.{uuid.uuid4().int % 10**9}"


# --- one host ---------------------------------------------------------------------------------


async def test_it_stores_each_line_before_the_command_ends(actions, lab, service):
    go = lab.shared / f"go-{uuid.uuid4().hex}"
    cmd = f"echo one; while [ ! -e {go} ]; do sleep 0.05; done; echo two"
    parameters = params(lab, lab.servers[0], cmd=cmd)
    execution_id, task = await launch(service, actions["core.remote"], parameters)
    await eventually(lambda: sync_to_async(text_of)(execution_id), WAIT_SECONDS, "line one")
    assert await sync_to_async(text_of)(execution_id) == "one\n"
    assert (await sync_to_async(row)(execution_id)).status == S.RUNNING
    go.touch()
    done = await asyncio.wait_for(task, WAIT_SECONDS)
    assert (done.status, done.exit_code) == (S.SUCCEEDED, 0)
    assert await sync_to_async(text_of)(execution_id) == "one\ntwo\n"
    assert done.result == {lab.servers[0].host: {"exit_code": 0}}
    assert await sync_to_async(children_of)(execution_id) == []  # one host, no child


async def test_it_keeps_stdout_stderr_and_the_exit_code(actions, lab):
    cmd = "echo out; echo err >&2; exit 4"
    done = await run_execution(actions["core.remote"], params(lab, lab.servers[0], cmd=cmd))
    assert (done.status, done.exit_code) == (S.FAILED, 4)
    stored = await sync_to_async(output_of)(done.id)
    assert sorted((kind, data) for _, kind, data in stored) == [
        ("stderr", "err\n"),
        ("stdout", "out\n"),
    ]


async def test_it_stores_a_100000_line_remote_output_exactly(actions, lab):
    lines = 100_000
    done = await run_execution(
        actions["core.remote"], params(lab, lab.servers[0], cmd=f"seq 1 {lines}")
    )
    assert (done.status, done.exit_code) == (S.SUCCEEDED, 0)
    stored = await sync_to_async(output_of)(done.id)
    assert [seq for seq, _, _ in stored] == list(range(1, len(stored) + 1))  # gapless
    assert {kind for _, kind, _ in stored} == {"stdout"}
    assert "".join(data for _, _, data in stored) == "".join(f"{i}\n" for i in range(1, lines + 1))


# --- refused, unknown, unreachable ------------------------------------------------------------


async def test_it_fails_when_the_server_refuses_the_key(actions, lab):
    stranger = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    parameters = params(lab, lab.servers[0], cmd="echo never", private_key=stranger)
    done = await run_execution(actions["core.remote"], parameters)
    assert done.status == S.FAILED and done.exit_code is None
    stored = await sync_to_async(text_of)(done.id)
    assert stored.startswith(f"tailgate: cannot run on {lab.servers[0].host}: PermissionDenied")
    assert "never" not in stored
    assert "PermissionDenied" in done.result[lab.servers[0].host]["error"]


async def test_it_checks_the_host_key_against_known_hosts(actions, lab, tmp_path):
    first, second = lab.servers[:2]
    known = tmp_path / "known_hosts"
    # The second server's entry holds the first server's key: an unknown key for that host.
    known.write_text(first.known_hosts_line() + second.known_hosts_line(first.host_key))
    good = await run_execution(
        actions["core.remote"], params(lab, first, cmd="echo trusted", known_hosts=str(known))
    )
    assert good.status == S.SUCCEEDED
    assert await sync_to_async(text_of)(good.id) == "trusted\n"
    bad = await run_execution(
        actions["core.remote"], params(lab, second, cmd="echo never", known_hosts=str(known))
    )
    assert bad.status == S.FAILED
    stored = await sync_to_async(text_of)(bad.id)
    assert "HostKeyNotVerifiable" in stored and "never" not in stored


async def test_it_gives_up_connecting_after_connect_timeout(actions, lab):
    with socket.socket() as silent:  # accepts TCP (kernel backlog) but never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        host = f"127.0.0.1:{silent.getsockname()[1]}"
        parameters = {**params(lab, cmd="echo never", connect_timeout=1), "hosts": [host]}
        done = await run_execution(actions["core.remote"], parameters)
    assert done.status == S.FAILED
    assert f"tailgate: cannot run on {host}: " in await sync_to_async(text_of)(done.id)
    assert "timed out" in done.result[host]["error"].lower()


async def test_it_times_out_while_still_connecting(actions, lab):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        host = f"127.0.0.1:{silent.getsockname()[1]}"
        parameters = {**params(lab, cmd="echo never", timeout=1), "hosts": [host]}
        parameters["connect_timeout"] = 3600  # the run's timeout comes first
        done = await run_execution(actions["core.remote"], parameters)
    assert (done.status, done.result) == (S.TIMEOUT, {host: {"error": "timed out"}})


# --- stopping the remote process group --------------------------------------------------------


async def test_it_times_out_and_kills_the_remote_process_group(actions, lab):
    mark = marker()
    cmd = f"sleep {mark} & echo started; sleep {mark}"
    # Connecting and logging in come first, and a starved CPU can stretch them past any fixed
    # timeout: a run timed out before `started` proves nothing and runs again, for longer.
    for timeout in RUN_TIMEOUTS:
        done = await run_execution(
            actions["core.remote"], params(lab, lab.servers[0], cmd=cmd, timeout=timeout)
        )
        assert done.status == S.TIMEOUT and done.exit_code is None
        if await sync_to_async(text_of)(done.id):
            break
    assert await sync_to_async(text_of)(done.id) == "started\n"
    await eventually(lambda: not remote_processes(mark), WAIT_SECONDS, "the remote sleeps to end")


async def test_it_cancels_and_kills_a_group_that_ignores_sigterm(actions, lab, running_service):
    mark = marker()
    cmd = f"trap '' TERM; sleep {mark} & sleep {mark} & echo started; wait"
    execution = await sync_to_async(services.create_execution)(
        actions["core.remote"], params(lab, lab.servers[0], cmd=cmd)
    )
    await eventually(lambda: sync_to_async(text_of)(execution.id), WAIT_SECONDS, "started")

    def sleeps():
        found = [p for p in remote_processes(mark) if p[2].startswith("sleep ")]
        return found if len(found) == 2 else None

    seen = await eventually(sleeps, WAIT_SECONDS, "two remote sleeps")
    assert len({pgid for _, pgid, _ in seen}) == 1  # one process group on the server
    await sync_to_async(services.cancel)(await sync_to_async(row)(execution.id))
    done = await finished_row(execution.id, WAIT_SECONDS)
    assert done.status == S.CANCELED
    await eventually(lambda: not remote_processes(mark), WAIT_SECONDS, "the remote sleeps to end")


# --- several hosts: one child execution each ---------------------------------------------------

# The server's port, as the remote shell sees it: each host says who it is.
PORT = "${SSH_CONNECTION##* }"


async def test_it_runs_one_child_execution_per_host(actions, lab):
    failing = lab.servers[1]
    cmd = f'echo "port {PORT}"; echo "err {PORT}" >&2; [ {PORT} != {failing.port} ] || exit 7'
    done = await run_execution(actions["core.remote"], params(lab, *lab.servers, cmd=cmd))
    assert (done.status, done.exit_code) == (S.FAILED, 7)
    assert done.error == f"1 of {SERVERS} hosts did not succeed: {failing.host} (failed)"
    children = {c.task_name: c for c in await sync_to_async(children_of)(done.id)}
    assert sorted(children) == sorted(s.host for s in lab.servers)
    for server in lab.servers:
        child = children[server.host]
        code = 7 if server is failing else 0
        assert (child.status, child.exit_code) == (S.FAILED if code else S.SUCCEEDED, code)
        assert child.parameters["hosts"] == [server.host]
        assert child.result == {server.host: {"exit_code": code}}
        stored = await sync_to_async(output_of)(child.id)
        assert sorted((kind, data) for _, kind, data in stored) == [
            ("stderr", f"err {server.port}\n"),
            ("stdout", f"port {server.port}\n"),
        ]
        assert done.result[server.host] == {
            "execution": child.id,
            "status": child.status,
            "exit_code": code,
        }
    parent_output = await sync_to_async(output_of)(done.id)
    assert {kind for _, kind, _ in parent_output} == {"other"}  # hosts' output is the children's
    assert f"Host {failing.host} finished (status=failed, exit_code=7).\n" in [
        data for _, _, data in parent_output
    ]


async def test_it_succeeds_only_when_every_host_does(actions, lab):
    first, second = lab.servers[:2]
    parameters = {**params(lab, cmd="true"), "hosts": [first.host, second.host, first.host]}
    done = await run_execution(actions["core.remote"], parameters)
    assert (done.status, done.exit_code, done.error) == (S.SUCCEEDED, 0, "")
    assert {r["status"] for r in done.result.values()} == {S.SUCCEEDED}
    # A host named twice runs once.
    children = await sync_to_async(children_of)(done.id)
    assert sorted(c.task_name for c in children) == sorted([first.host, second.host])


async def test_it_reports_an_unreachable_host_as_its_own_failed_child(actions, lab):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{closed.getsockname()[1]}"  # bound, not listening: refused
    parameters = params(lab, lab.servers[0], cmd="echo fine")
    parameters["hosts"].append(dead)
    done = await run_execution(actions["core.remote"], parameters)
    assert (done.status, done.exit_code) == (S.FAILED, None)
    assert done.result[lab.servers[0].host]["status"] == S.SUCCEEDED
    assert done.result[dead]["status"] == S.FAILED
    dead_child = await sync_to_async(row)(done.result[dead]["execution"])
    assert "ConnectionRefusedError" in dead_child.result[dead]["error"]


async def wait_for_files(paths: list[Path], count: int) -> None:
    def started():
        return sum(p.exists() for p in paths) >= count

    await eventually(started, WAIT_SECONDS, f"{count} hosts to start")


@pytest.mark.parametrize("concurrency, at_once", [(None, SERVERS), (2, 2), (1, 1)])
async def test_it_runs_hosts_concurrently_up_to_the_limit(
    actions, lab, service, concurrency, at_once
):
    run = uuid.uuid4().hex
    go = lab.shared / f"go-{run}"
    started = [lab.shared / f"started-{run}-{server.port}" for server in lab.servers]
    cmd = (
        f"touch {lab.shared}/started-{run}-{PORT}; "
        f"while [ ! -e {go} ]; do sleep 0.05; done; echo done"
    )
    extra = {"concurrency": concurrency} if concurrency else {}
    parameters = params(lab, *lab.servers, cmd=cmd, **extra)
    parent_id, task = await launch(service, actions["core.remote"], parameters)
    await wait_for_files(started, at_once)
    statuses = sorted(c.status for c in await sync_to_async(children_of)(parent_id))
    # Nobody can finish before `go` exists: exactly `at_once` run, the others wait their turn.
    assert statuses == sorted([S.RUNNING] * at_once + [S.SCHEDULED] * (SERVERS - at_once))
    assert sum(p.exists() for p in started) == at_once
    go.touch()
    done = await asyncio.wait_for(task, WAIT_SECONDS)
    assert done.status == S.SUCCEEDED
    assert all(p.exists() for p in started)


async def test_it_refuses_a_concurrency_below_one(actions, lab):
    done = await run_execution(
        actions["core.remote"], params(lab, *lab.servers, cmd="true", concurrency=0)
    )
    assert (done.status, done.error) == (S.FAILED, "concurrency must be at least 1")
    assert await sync_to_async(children_of)(done.id) == []


async def test_it_cancels_the_children_with_the_parent(actions, lab, running_service):
    mark = marker()
    cmd = f"sleep {mark} & echo started; wait"
    parameters = params(lab, *lab.servers, cmd=cmd, concurrency=2)
    parent = await sync_to_async(services.create_execution)(actions["core.remote"], parameters)

    def two_running():
        running = [c for c in children_of(parent.id) if c.status == S.RUNNING]
        return len(running) == 2 and all(text_of(c.id) == "started\n" for c in running)

    await eventually(sync_to_async(two_running), WAIT_SECONDS, "two hosts to start")
    await eventually(lambda: len(remote_processes(mark)) >= 2, WAIT_SECONDS, "remote sleeps")
    await sync_to_async(services.cancel)(await sync_to_async(row)(parent.id))
    done = await finished_row(parent.id, WAIT_SECONDS)
    assert done.status == S.CANCELED
    children = await sync_to_async(children_of)(parent.id)
    assert [c.status for c in children] == [S.CANCELED] * SERVERS
    never_ran = [c for c in children if c.started_at is None]
    assert len(never_ran) == 1  # the third host was still waiting for a slot
    assert {r["status"] for r in done.result.values()} == {S.CANCELED}
    await eventually(lambda: not remote_processes(mark), WAIT_SECONDS, "the remote sleeps to end")


async def test_it_runs_a_remote_script_on_each_host(tmp_path, lab):
    files = {"hello.sh": f'echo "$* on {PORT}"\n', "hello.yaml": REMOTE_HELLO_YAML}
    action = (await register_pack(tmp_path, "ops", files))["hello"]
    done = await run_execution(action, params(lab, *lab.servers[:2], who="world"))
    assert done.status == S.SUCCEEDED
    for child in await sync_to_async(children_of)(done.id):
        port = child.task_name.split(":")[1]
        assert await sync_to_async(text_of)(child.id) == f"--who=world on {port}\n"


async def test_it_says_minus_n_when_signal_n_kills_the_remote_command(actions, lab):
    done = await run_execution(
        actions["core.remote"], params(lab, lab.servers[0], cmd="echo dying; kill -9 $$")
    )
    assert (done.status, done.exit_code) == (S.FAILED, -9)  # as a local run says
    assert await sync_to_async(text_of)(done.id) == "dying\n"


async def test_it_fails_when_the_hosts_executions_cannot_be_created(actions, lab, service):
    parameters = params(lab, *lab.servers[:2], cmd="echo never")
    parent = await sync_to_async(services.create_execution)(actions["core.remote"], parameters)
    await Action.objects.filter(ref="core.remote").aupdate(enabled=False)  # disabled meanwhile
    claimed = await service.control_db(services.claim, parent.id, service.runner_id)
    await service.control_db(lambda: claimed.action)
    done = await service.execute(claimed, asyncio.Event())
    assert done.status == S.FAILED
    assert done.error == "cannot create the hosts' executions: action 'core.remote' is disabled"
    assert await sync_to_async(children_of)(parent.id) == []


async def test_it_kills_the_remote_group_when_the_runner_shuts_down(actions, lab):
    mark = marker()
    service = RunnerService(concurrency=1)
    await service.start_service()
    try:
        execution = await sync_to_async(services.create_execution)(
            actions["core.remote"], params(lab, lab.servers[0], cmd=f"sleep {mark} & wait")
        )
        await eventually(lambda: len(remote_processes(mark)) == 2, WAIT_SECONDS, "remote sleep")
    finally:
        await service.stop(grace_seconds=0)  # the run is cut short, not asked to cancel
    assert (await sync_to_async(row)(execution.id)).status == S.ABANDONED
    await eventually(lambda: not remote_processes(mark), WAIT_SECONDS, "the remote sleep to end")
