"""Every runner with real processes: output arrives whole, in order, masked, and nothing survives."""

import asyncio
import os
import re
import sys

import pytest
from asgiref.sync import sync_to_async

from executions import services
from executions.models import Execution, ExecutionStatus
from executions.models.actions import MASK
from executions.runner_service import RunnerService
from executions.runners.base import become_subreaper
from tests.runner_helpers import (
    GroupListener,
    is_finished,
    is_output,
    output_of,
    pid_alive,
    run_execution,
)

pytestmark = pytest.mark.django_db(transaction=True)
S = ExecutionStatus


@pytest.fixture(autouse=True)
def _subreaper():
    become_subreaper()


@pytest.fixture
def local(actions):
    return actions["core.local"]


async def run_cmd(local, cmd, **params):
    return await run_execution(local, {"cmd": cmd, **params})


async def output(execution_id, output_type=None):
    return await sync_to_async(output_of)(execution_id, output_type)


def text_of(chunks):
    return "".join(data for _, _, data in chunks)


async def test_it_runs_a_shell_command_and_records_success(local):
    done = await run_cmd(local, "echo hello; echo world")
    assert (done.status, done.exit_code) == (S.SUCCEEDED, 0)
    assert await output(done.id) == [(1, "stdout", "hello\n"), (2, "stdout", "world\n")]
    assert done.last_seq == 2


async def test_it_fails_on_a_non_zero_exit(actions):
    done = await run_execution(actions["examples.fail"], {})
    assert (done.status, done.exit_code) == (S.FAILED, 3)
    assert (await output(done.id))[-1] == (2, "stderr", "error: prerequisite missing\n")


async def test_it_keeps_the_order_of_interleaved_stdout_and_stderr(actions):
    done = await run_execution(actions["examples.print_lines"], {"count": 8, "delay": 0.05})
    assert done.status == S.SUCCEEDED
    chunks = await output(done.id)
    assert [seq for seq, _, _ in chunks] == list(range(1, 9))
    assert chunks[0] == (1, "stderr", "stderr -> Line: 1\n")
    assert chunks[1] == (2, "stdout", "stdout -> Line: 2\n")
    assert [kind for _, kind, _ in chunks] == ["stderr", "stdout"] * 4


async def test_it_passes_script_parameters_as_arguments_and_environment(tmp_path, settings):
    from executions.packs import register

    actions_dir = tmp_path / "demo" / "actions"
    actions_dir.mkdir(parents=True)
    (actions_dir / "args.sh").write_text('echo "args: $*"\necho "env: $PARAM_NAME $PARAM_TAGS"\n')
    (actions_dir / "args.yaml").write_text(
        "runner_type: local-shell-script\nentry_point: args.sh\nparameters:\n"
        "  name: {type: string}\n  tags: {type: array}\n  loud: {type: boolean, default: true}\n"
    )
    await sync_to_async(register)([tmp_path])
    from executions.models import Action

    action = await Action.objects.aget(ref="demo.args")
    done = await run_execution(action, {"name": "ann", "tags": ["a", "b"]})
    assert await output(done.id) == [
        (1, "stdout", 'args: --name=ann --tags=["a", "b"] --loud=true\n'),
        (2, "stdout", 'env: ann ["a", "b"]\n'),
    ]


async def test_it_returns_a_python_result(actions):
    done = await run_execution(
        actions["examples.python_result"], {"name": "Ada", "numbers": [1, 2]}
    )
    assert done.status == S.SUCCEEDED
    assert done.result == {"greeting": "Hello, Ada!", "total": 3.0}
    chunks = await output(done.id)
    assert (1, "stdout", "Hello, Ada!\n") in chunks
    assert any(kind == "stderr" and "adding 2 numbers" in data for _, kind, data in chunks)


async def test_it_fails_a_python_action_that_raises_with_its_traceback(tmp_path, actions):
    from executions.models import Action
    from executions.packs import register

    actions_dir = tmp_path / "py" / "actions"
    actions_dir.mkdir(parents=True)
    (actions_dir / "boom.py").write_text("def run():\n    print('about to fail')\n    1 / 0\n")
    (actions_dir / "boom.yaml").write_text("runner_type: python-script\nentry_point: boom.py\n")
    await sync_to_async(register)([tmp_path])
    done = await run_execution(await Action.objects.aget(ref="py.boom"), {})
    assert (done.status, done.exit_code, done.result) == (S.FAILED, 1, None)
    stderr = text_of(await output(done.id, "stderr"))
    assert "Traceback" in stderr and "ZeroDivisionError" in stderr
    assert text_of(await output(done.id, "stdout")) == "about to fail\n"


async def test_it_runs_a_python_action_class(tmp_path):
    from executions.models import Action
    from executions.packs import register

    actions_dir = tmp_path / "py" / "actions"
    actions_dir.mkdir(parents=True)
    (actions_dir / "cls.py").write_text(
        "class Greet:\n    def run(self, who):\n        return {'hi': who}\n"
    )
    (actions_dir / "cls.yaml").write_text(
        "runner_type: python-script\nentry_point: cls.py\nparameters:\n  who: {type: string}\n"
    )
    await sync_to_async(register)([tmp_path])
    done = await run_execution(await Action.objects.aget(ref="py.cls"), {"who": "you"})
    assert (done.status, done.result) == (S.SUCCEEDED, {"hi": "you"})


async def test_it_stores_the_last_line_without_a_trailing_newline(local):
    done = await run_cmd(local, "printf 'one\\ntwo'")
    assert await output(done.id) == [(1, "stdout", "one\n"), (2, "stdout", "two")]


async def test_it_replaces_invalid_utf8(local):
    done = await run_cmd(local, "printf 'a\\377\\376b\\n'; printf '\\342\\202\\254 ok\\n'")
    assert done.status == S.SUCCEEDED
    assert text_of(await output(done.id)) == "a\ufffd\ufffdb\n€ ok\n"


async def test_it_streams_carriage_return_progress_as_it_is_drawn(local):
    cmd = "printf 'p 10%%\\r'; sleep 0.4; printf 'p 50%%\\r'; sleep 0.4; printf 'p 100%%\\n'"
    done = await run_cmd(local, cmd)
    chunks = await output(done.id)
    assert [data for _, _, data in chunks] == ["p 10%\r", "p 50%\r", "p 100%\n"]


async def test_it_cuts_a_five_megabyte_line_into_bounded_chunks(local, settings):
    done = await run_cmd(local, "head -c 5000000 /dev/zero | tr '\\0' x; echo")
    chunks = await output(done.id)
    assert text_of(chunks) == "x" * 5_000_000 + "\n"
    assert len(chunks) == 5
    assert all(len(data.encode()) <= settings.MAX_CHUNK_BYTES for _, _, data in chunks)
    assert [data.endswith("\n") for _, _, data in chunks] == [False] * 4 + [True]


async def test_it_does_not_hang_on_a_background_child_holding_the_pipe(local):
    loop = asyncio.get_running_loop()
    started = loop.time()
    done = await run_cmd(local, "sleep 300 & echo child=$!")
    assert loop.time() - started < 10
    assert done.status == S.SUCCEEDED
    pid = int(re.search(r"child=(\d+)", text_of(await output(done.id))).group(1))
    assert not pid_alive(pid)


async def test_it_times_out_and_kills_the_whole_process_tree(local):
    cmd = "sleep 300 & echo child=$!; (sleep 300 & echo grandchild=$!; wait) & sleep 300"
    done = await run_cmd(local, cmd, timeout=1)
    assert done.status == S.TIMEOUT
    pids = [int(p) for p in re.findall(r"child=(\d+)", text_of(await output(done.id)))]
    assert len(pids) == 2
    assert not any(pid_alive(p) for p in pids)


async def test_it_cancels_a_running_tree_within_five_seconds(local):
    service = RunnerService(concurrency=2)
    await service.start_service()
    try:
        execution = await sync_to_async(services.create_execution)(
            local, {"cmd": "trap '' TERM; sleep 300 & echo child=$!; sleep 300"}
        )
        async with GroupListener(execution.id) as group:
            await group.wait_for(is_output)
            loop = asyncio.get_running_loop()
            asked = loop.time()
            await sync_to_async(services.cancel)(await Execution.objects.aget(pk=execution.id))
            finished = await group.wait_for(is_finished, timeout=10)
            assert loop.time() - asked < 5
        assert finished["payload"]["status"] == S.CANCELED
        pid = int(re.search(r"child=(\d+)", text_of(await output(execution.id))).group(1))
        assert not pid_alive(pid)
    finally:
        await service.stop(grace_seconds=5)


async def test_it_masks_a_secret_written_in_two_pieces(actions):
    cmd = (
        'printf \'token=%s\' "${PARAM_PASSWORD%??????}"; sleep 0.3; echo "${PARAM_PASSWORD#?????}"'
    )
    secret = "hunter2-XYZ"
    done = await run_execution(actions["examples.echo_secret"], {"password": secret, "cmd": cmd})
    stored = text_of(await output(done.id))
    assert stored == f"token={MASK}\n"
    assert done.parameters["password"] == secret  # the run had it; the log never does


async def test_it_masks_secrets_in_output_and_result(tmp_path):
    from executions.models import Action
    from executions.packs import register

    actions_dir = tmp_path / "py" / "actions"
    actions_dir.mkdir(parents=True)
    (actions_dir / "leak.py").write_text(
        "def run(token):\n    print('the token is', token)\n    return {'echo': token}\n"
    )
    (actions_dir / "leak.yaml").write_text(
        "runner_type: python-script\nentry_point: leak.py\n"
        "parameters:\n  token: {type: string, secret: true}\n"
    )
    await sync_to_async(register)([tmp_path])
    done = await run_execution(await Action.objects.aget(ref="py.leak"), {"token": "s3cr3t!"})
    assert text_of(await output(done.id)) == f"the token is {MASK}\n"
    assert done.result == {"echo": MASK}


async def test_it_gives_a_gapless_seq_to_a_fast_flood(local):
    done = await run_cmd(local, "seq 1 200000; seq 1 1000 >&2")
    chunks = await output(done.id)
    assert [seq for seq, _, _ in chunks] == list(range(1, 201001))
    stdout = await output(done.id, "stdout")
    assert text_of(stdout) == "".join(f"{i}\n" for i in range(1, 200001))
    # Backpressure pauses the reader mid-line; that pause must not cut lines in two.
    assert all(data.endswith("\n") for _, _, data in stdout)
    assert done.last_seq == 201000


async def test_it_runs_stdout_on_a_terminal_with_pty(local):
    check = f"{sys.executable} -c \"import sys; print('tty' if sys.stdout.isatty() else 'pipe')\""
    on_pty = await run_cmd(local, check, pty=True)
    on_pipe = await run_cmd(local, check)
    assert text_of(await output(on_pty.id)) == "tty\n"
    assert text_of(await output(on_pipe.id)) == "pipe\n"


async def test_it_does_not_pass_the_runner_environment(local):
    os.environ["TAILGATE_TEST_SECRET_ENV"] = "should-not-leak"
    try:
        done = await run_cmd(local, "env", env={"EXTRA": "yes"})
    finally:
        del os.environ["TAILGATE_TEST_SECRET_ENV"]
    env_text = text_of(await output(done.id))
    assert "EXTRA=yes" in env_text and "PARAM_CMD=env" in env_text
    assert "should-not-leak" not in env_text and "DATABASE_URL" not in env_text


async def test_it_runs_a_workflow_as_child_executions(actions):
    done = await run_execution(actions["examples.deploy"], {"steps": 1})
    assert done.status == S.SUCCEEDED
    children = [c async for c in Execution.objects.filter(parent_id=done.id).order_by("created_at")]
    assert [c.task_name for c in children] == ["build", "test", "summary"]
    assert all(c.status == S.SUCCEEDED for c in children)
    summary = text_of(await output(children[2].id))
    assert summary == "deployed after 1 build steps\n"
    progress = text_of(await output(done.id, "other"))
    assert (
        "Task build started" in progress and "Task summary finished (status=succeeded)" in progress
    )
