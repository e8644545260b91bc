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
from tests.runner_helpers import output_of, run_execution

pytestmark = pytest.mark.django_db(transaction=True)
S = ExecutionStatus


async def _serve_command(process: asyncssh.SSHServerProcess) -> None:
    """Run the client's command with the local shell, streaming its pipes back."""
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
    params = {
        "cmd": "echo out; echo err >&2; exit 4",
        "hosts": [ssh_target["host"]],
        "username": ssh_target["username"],
        "private_key": ssh_target["private_key"],
    }
    done = await run_execution(actions["core.remote"], params)
    assert (done.status, done.exit_code) == (S.FAILED, 4)
    chunks = await sync_to_async(output_of)(done.id)
    assert sorted((kind, data) for _, kind, data in chunks) == [
        ("stderr", "err\n"),
        ("stdout", "out\n"),
    ]
    assert done.result == {ssh_target["host"]: {"exit_code": 4}}
    assert MASK in str(done.masked_parameters()["private_key"])


async def test_it_prefixes_lines_per_host_on_several_hosts(actions, ssh_target):
    second = f"[::ffff:127.0.0.1]:{ssh_target['host'].split(':')[1]}"
    params = {
        "cmd": "printf 'one\\ntwo\\n'",
        "hosts": [ssh_target["host"], second],
        "username": "tailgate",
        "private_key": ssh_target["private_key"],
    }
    done = await run_execution(actions["core.remote"], params)
    lines = sorted(text_of(await sync_to_async(output_of)(done.id)).splitlines())
    if done.status == S.SUCCEEDED:
        assert lines == sorted(
            f"[{h}] {word}" for h in (ssh_target["host"], second) for word in ("one", "two")
        )
    else:  # no IPv4-mapped addresses on this host: the second host fails, and says so
        assert f"[{ssh_target['host']}] one" in lines
        assert any(line.startswith(f"[{second}] tailgate: cannot run on") for line in lines)


async def test_it_reports_an_unreachable_host(actions, ssh_target):
    params = {
        "cmd": "true",
        "hosts": ["127.0.0.1:1"],
        "username": "tailgate",
        "private_key": ssh_target["private_key"],
    }
    done = await run_execution(actions["core.remote"], params)
    assert done.status == S.FAILED
    assert "tailgate: cannot run on 127.0.0.1:1" in text_of(await sync_to_async(output_of)(done.id))
    assert "error" in done.result["127.0.0.1:1"]


async def test_it_masks_a_secret_in_remote_output(actions, ssh_target):
    params = {
        "cmd": "echo the key is: && head -c 40 ~/.nonexistent 2>/dev/null; echo hunter-secret-22",
        "hosts": [ssh_target["host"]],
        "username": "tailgate",
        "private_key": ssh_target["private_key"],
        "password": "hunter-secret-22",
    }
    done = await run_execution(actions["core.remote"], params)
    stored = text_of(await sync_to_async(output_of)(done.id))
    assert "hunter-secret-22" not in stored and MASK in stored


async def test_it_times_out_a_remote_command(actions, ssh_target):
    params = {
        "cmd": "echo started; sleep 30",
        "hosts": [ssh_target["host"]],
        "username": "tailgate",
        "private_key": ssh_target["private_key"],
        "timeout": 1,
    }
    done = await run_execution(actions["core.remote"], params)
    assert done.status == S.TIMEOUT
    assert text_of(await sync_to_async(output_of)(done.id)) == "started\n"


async def test_it_runs_a_remote_script_from_the_pack(tmp_path, ssh_target):
    from executions.models import Action
    from executions.packs import register

    actions_dir = tmp_path / "ops" / "actions"
    actions_dir.mkdir(parents=True)
    (actions_dir / "hello.sh").write_text('echo "remote args: $*"\n')
    (actions_dir / "hello.yaml").write_text(
        "runner_type: remote-shell-script\nentry_point: hello.sh\nparameters:\n"
        "  hosts: {type: array}\n  username: {type: string}\n"
        "  private_key: {type: string, secret: true}\n  who: {type: string}\n"
    )
    await sync_to_async(register)([tmp_path])
    action = await Action.objects.aget(ref="ops.hello")
    params = {
        "hosts": [ssh_target["host"]],
        "username": "tailgate",
        "private_key": ssh_target["private_key"],
        "who": "world",
    }
    done = await run_execution(action, params)
    assert done.status == S.SUCCEEDED
    assert text_of(await sync_to_async(output_of)(done.id)) == "remote args: --who=world\n"
