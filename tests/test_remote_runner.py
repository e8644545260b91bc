"""Remote runners against an SSH server the test starts on loopback (asyncssh, throwaway keys)."""

import asyncio
import contextlib
import os
import signal

import asyncssh
import pytest
from asgiref.sync import sync_to_async

from executions.models import ExecutionStatus
from executions.models.actions import MASK
from tests.runner_helpers import (
    REMOTE_HELLO_YAML,
    RUN_TIMEOUTS,
    output_of,
    register_pack,
    run_execution,
)

pytestmark = pytest.mark.django_db(transaction=True)
S = ExecutionStatus


# A command this server answers by writing a line, then dropping the TCP connection: a
# host that crashes or a network that breaks mid-run, which sshd cannot be made to do.
DROP_CONNECTION = "tailgate-test: drop the connection"


async def _serve_command(process: asyncssh.SSHServerProcess) -> None:
    """Run the client's command with the local shell, streaming its pipes back."""
    if process.command == DROP_CONNECTION:
        process.stdout.write(b"before\n")
        await process.stdout.drain()
        process.get_extra_info("connection").abort()
        return
    proc = await asyncio.create_subprocess_shell(
        process.command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )

    async def feed_stdin():
        while data := await process.stdin.read(65536):
            proc.stdin.write(data)
        proc.stdin.close()

    async def pump(source, sink):
        while data := await source.read(65536):
            sink.write(data)

    try:
        await asyncio.gather(
            feed_stdin(), pump(proc.stdout, process.stdout), pump(proc.stderr, process.stderr)
        )
        process.exit(await proc.wait())
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.shield(proc.wait())


def target_params(ssh_target, **extra) -> dict:
    """The remote action's parameters for the loopback SSH server, with `extra`."""
    return {
        "hosts": [ssh_target["host"]],
        "username": ssh_target["username"],
        "private_key": ssh_target["private_key"],
        **extra,
    }


@pytest.fixture
async def ssh_target():
    """An SSH server on 127.0.0.1 that accepts one throwaway client key."""
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        asyncssh.SSHServer,
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        authorized_client_keys=asyncssh.import_authorized_keys(
            client_key.export_public_key().decode()
        ),
        process_factory=_serve_command,
        encoding=None,
    )
    port = server.sockets[0].getsockname()[1]
    yield {
        "host": f"127.0.0.1:{port}",
        "username": "tailgate",
        "private_key": client_key.export_private_key().decode(),
    }
    server.close()
    await server.wait_closed()


def text_of(chunks):
    return "".join(data for _, _, data in chunks)


async def test_it_streams_a_remote_command(actions, ssh_target):
    params = target_params(ssh_target, cmd="echo out; echo err >&2; exit 4")
    done = await run_execution(actions["core.remote"], params)
    assert (done.status, done.exit_code) == (S.FAILED, 4)
    chunks = await sync_to_async(output_of)(done.id)
    assert sorted((kind, data) for _, kind, data in chunks) == [
        ("stderr", "err\n"),
        ("stdout", "out\n"),
    ]
    assert done.result == {ssh_target["host"]: {"exit_code": 4}}
    assert MASK in str(done.masked_parameters()["private_key"])


async def test_it_fails_with_a_reason_when_the_connection_drops_mid_run(actions, ssh_target):
    params = target_params(ssh_target, cmd=DROP_CONNECTION)
    done = await run_execution(actions["core.remote"], params)
    assert done.status == S.FAILED and done.exit_code is None
    stored = text_of(await sync_to_async(output_of)(done.id))
    assert stored.startswith("before\n")  # what arrived before the drop is kept
    assert f"tailgate: cannot run on {ssh_target['host']}: Connection" in stored
    assert done.error.startswith("Connection")  # ConnectionResetError or ConnectionLost


async def test_it_reports_an_unreachable_host(actions, ssh_target):
    params = target_params(ssh_target, cmd="true", hosts=["127.0.0.1:1"])
    done = await run_execution(actions["core.remote"], params)
    assert done.status == S.FAILED
    assert "tailgate: cannot run on 127.0.0.1:1" in text_of(await sync_to_async(output_of)(done.id))
    assert "error" in done.result["127.0.0.1:1"]


async def test_it_masks_a_secret_in_remote_output(actions, ssh_target):
    params = target_params(
        ssh_target,
        cmd="echo the key is: && head -c 40 ~/.nonexistent 2>/dev/null; echo hunter-secret-22",
        password="hunter-secret-22",
    )
    done = await run_execution(actions["core.remote"], params)
    stored = text_of(await sync_to_async(output_of)(done.id))
    assert "hunter-secret-22" not in stored and MASK in stored


async def test_it_times_out_a_remote_command(actions, ssh_target):
    # The SSH handshake comes first, and a starved CPU can stretch it past any fixed timeout:
    # a run timed out before `started` proves nothing and runs again, for longer.
    for timeout in RUN_TIMEOUTS:
        params = target_params(ssh_target, cmd="echo started; sleep 300", timeout=timeout)
        done = await run_execution(actions["core.remote"], params)
        assert done.status == S.TIMEOUT
        if await sync_to_async(output_of)(done.id):
            break
    assert text_of(await sync_to_async(output_of)(done.id)) == "started\n"


async def test_it_runs_a_remote_script_from_the_pack(tmp_path, ssh_target):
    files = {"hello.sh": 'echo "remote args: $*"\n', "hello.yaml": REMOTE_HELLO_YAML}
    action = (await register_pack(tmp_path, "ops", files))["hello"]
    params = target_params(
        ssh_target,
        who="world",
    )
    done = await run_execution(action, params)
    assert done.status == S.SUCCEEDED
    assert text_of(await sync_to_async(output_of)(done.id)) == "remote args: --who=world\n"
