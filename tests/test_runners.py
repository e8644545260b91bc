"""Every runner with real processes: output arrives whole, in order, masked, and nothing survives."""

import asyncio
import os
import random
import re
import subprocess
import sys

import pytest
from asgiref.sync import sync_to_async
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from executions import capture, services
from executions.capture import NUL_SUBSTITUTE, OutputSink
from executions.models import Execution, ExecutionStatus
from executions.models.actions import MASK
from executions.runner_service import RunnerService
from executions.runners.processes import KEEPER, become_subreaper
from tests.fault_helpers import kill_all, process_tree_pids
from tests.runner_helpers import (
    RUN_TIMEOUTS,
    finished_row,
    output_of,
    pid_alive,
    register_pack,
    run_execution,
    wait_until,
)
from tests.streaming_helpers import eventually

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


# Waiting on a run's processes: a failure bound only, for a starved CPU.
WAIT_SECONDS = 120


async def run_in_steps(local, tmp_path, steps: list[str]) -> Execution:
    """Run `steps` (shell commands that print one chunk each) as one command in which each step
    waits for the previous one's chunk to be stored: what the steps print is read apart, as a
    pause between them means, however long a busy machine stalls the runner."""
    gates = [tmp_path / f"stored-{k}" for k in range(1, len(steps))]
    waits = [f"while [ ! -e {gate} ]; do sleep 0.05; done" for gate in gates]
    cmd = "; ".join(part for pair in zip(steps, [*waits, ""], strict=True) for part in pair if part)
    execution = await sync_to_async(services.create_execution)(local, {"cmd": cmd})
    service = RunnerService(concurrency=1)
    claimed = await service.control_db(services.claim, execution.id, service.runner_id)
    await service.control_db(lambda: claimed.action)
    run = asyncio.create_task(service.execute(claimed, asyncio.Event()))
    try:
        for stored, gate in enumerate(gates, 1):
            chunks = lambda n=stored: len(output_of(execution.id)) >= n  # noqa: E731
            await eventually(sync_to_async(chunks), WAIT_SECONDS, f"chunk {stored}")
            gate.touch()
        return await asyncio.wait_for(run, WAIT_SECONDS)
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, service.close)


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


async def test_it_keeps_the_order_of_interleaved_stdout_and_stderr(local, tmp_path):
    # Two pipes keep their relative order only for lines further apart than the runner takes
    # to read one: no delay is, on a starved CPU (both pipes ready, read in either order), so
    # each line waits until the one before it is stored.
    steps = [
        f"echo '{kind} -> Line: {n}'" + (" >&2" if kind == "stderr" else "")
        for n, kind in enumerate(["stderr", "stdout"] * 4, 1)
    ]
    done = await run_in_steps(local, tmp_path, steps)
    assert done.status == S.SUCCEEDED
    chunks = await output(done.id)
    assert [seq for seq, _, _ in chunks] == list(range(1, 9))
    assert chunks[0] == (1, "stderr", "stderr -> Line: 1\n")
    assert chunks[1] == (2, "stdout", "stdout -> Line: 2\n")
    assert [kind for _, kind, _ in chunks] == ["stderr", "stdout"] * 4


async def test_it_passes_script_parameters_as_arguments_and_environment(tmp_path, settings):
    files = {
        "args.sh": 'echo "args: $*"\necho "env: $PARAM_NAME $PARAM_TAGS"\n',
        "args.yaml": "runner_type: local-shell-script\nentry_point: args.sh\nparameters:\n"
        "  name: {type: string}\n  tags: {type: array}\n  loud: {type: boolean, default: true}\n",
    }
    action = (await register_pack(tmp_path, "demo", files))["args"]
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
    files = {
        "boom.py": "def run():\n    print('about to fail')\n    1 / 0\n",
        "boom.yaml": "runner_type: python-script\nentry_point: boom.py\n",
    }
    done = await run_execution((await register_pack(tmp_path, "py", files))["boom"], {})
    assert (done.status, done.exit_code, done.result) == (S.FAILED, 1, None)
    stderr = text_of(await output(done.id, "stderr"))
    assert "Traceback" in stderr and "ZeroDivisionError" in stderr
    assert text_of(await output(done.id, "stdout")) == "about to fail\n"


async def test_it_runs_a_python_action_class(tmp_path):
    files = {
        "cls.py": "class Greet:\n    def run(self, who):\n        return {'hi': who}\n",
        "cls.yaml": "runner_type: python-script\nentry_point: cls.py\n"
        "parameters:\n  who: {type: string}\n",
    }
    done = await run_execution((await register_pack(tmp_path, "py", files))["cls"], {"who": "you"})
    assert (done.status, done.result) == (S.SUCCEEDED, {"hi": "you"})


async def test_it_stores_the_last_line_without_a_trailing_newline(local):
    done = await run_cmd(local, "printf 'one\\ntwo'")
    assert await output(done.id) == [(1, "stdout", "one\n"), (2, "stdout", "two")]


async def test_it_replaces_invalid_utf8(local):
    done = await run_cmd(local, "printf 'a\\377\\376b\\n'; printf '\\342\\202\\254 ok\\n'")
    assert done.status == S.SUCCEEDED
    assert text_of(await output(done.id)) == "a\ufffd\ufffdb\n€ ok\n"


async def test_it_streams_carriage_return_progress_as_it_is_drawn(local, tmp_path):
    # Each redraw waits until the one before is stored: flushed by its silence, not the end.
    steps = ["printf 'p 10%%\\r'", "printf 'p 50%%\\r'", "printf 'p 100%%\\n'"]
    done = await run_in_steps(local, tmp_path, steps)
    chunks = await output(done.id)
    assert [data for _, _, data in chunks] == ["p 10%\r", "p 50%\r", "p 100%\n"]


async def test_it_cuts_a_five_megabyte_line_into_bounded_chunks(local, settings, monkeypatch):
    # A partial line is flushed after a silence or at an age (by design), which a starved CPU
    # reaches while 5 MB go through the pipe: only the size cut is under test here.
    monkeypatch.setattr(capture, "PARTIAL_FLUSH_SECONDS", 3600.0)
    monkeypatch.setattr(capture, "PARTIAL_MAX_AGE_SECONDS", 3600.0)
    done = await run_cmd(local, "head -c 5000000 /dev/zero | tr '\\0' x; echo")
    chunks = await output(done.id)
    assert text_of(chunks) == "x" * 5_000_000 + "\n"
    assert len(chunks) == 5
    assert all(len(data.encode()) <= settings.MAX_CHUNK_BYTES for _, _, data in chunks)
    assert [data.endswith("\n") for _, _, data in chunks] == [False] * 4 + [True]


async def test_it_does_not_hang_on_a_background_child_holding_the_pipe(local):
    # The child sleeps 300 s: a run that waited for it would end after that, not within 120 s.
    async with asyncio.timeout(120):
        done = await run_cmd(local, "sleep 300 & echo child=$!")
    assert done.status == S.SUCCEEDED
    pid = int(re.search(r"child=(\d+)", text_of(await output(done.id))).group(1))
    assert not pid_alive(pid)


async def test_it_times_out_and_kills_the_whole_process_tree(local):
    cmd = "sleep 300 & echo child=$!; (sleep 300 & echo grandchild=$!; wait) & sleep 300"
    for timeout in RUN_TIMEOUTS:
        done = await run_cmd(local, cmd, timeout=timeout)
        assert done.status == S.TIMEOUT
        pids = [int(p) for p in re.findall(r"child=(\d+)", text_of(await output(done.id)))]
        if len(pids) == 2:  # the whole tree was there when the timeout came
            break
    assert len(pids) == 2
    assert not any(pid_alive(p) for p in pids)


async def test_it_cancels_a_running_tree_that_ignores_sigterm(local):
    service = RunnerService(concurrency=2)
    await service.start_service()
    try:
        execution = await sync_to_async(services.create_execution)(
            local, {"cmd": "trap '' TERM; sleep 300 & echo child=$!; sleep 300"}
        )
        await eventually(lambda: sync_to_async(output_of)(execution.id), 60, "the first line")
        await sync_to_async(services.cancel)(await Execution.objects.aget(pk=execution.id))
        # SIGKILL follows SIGTERM after KILL_GRACE_SECONDS (2 s); without it the tree would
        # sleep 300 s. The bound is for a broken escalation only, not a timing.
        finished = await finished_row(execution.id, timeout=120)
        assert finished.status == S.CANCELED
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
    files = {
        "leak.py": "def run(token):\n    print('the token is', token)\n    return {'echo': token}\n",
        "leak.yaml": "runner_type: python-script\nentry_point: leak.py\n"
        "parameters:\n  token: {type: string, secret: true}\n",
    }
    action = (await register_pack(tmp_path, "py", files))["leak"]
    done = await run_execution(action, {"token": "s3cr3t!"})
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


# --- any bytes in, stored faithfully (docs/guarantees.md, "Any bytes") ------------------------
HOSTILE_PIECES = [
    b"\x00",
    b"\xff",
    b"\xc3",  # a lead byte ...
    b"\xa9",  # ... and a continuation byte: valid together, invalid apart
    "é".encode(),
    "𝄞".encode(),
    b"\r",
    b"\n",
    b"\r\n",
    b"\x1b[31m",
    b"\x1b[0m",
    b"\t",
    b"\\",
    b"\\.",
    b"plain text",
]


def documented_decoding(data: bytes) -> str:
    """What the log holds for `data`: UTF-8 with U+FFFD for invalid bytes, NUL as U+2400."""
    return data.decode("utf-8", "replace").replace("\x00", NUL_SUBSTITUTE)


def _store_through_the_runner(local, pieces: list[bytes], max_chunk_bytes: int) -> list[str]:
    """Feed `pieces` to a runner's sink as reads of one pipe; the stored chunks."""
    execution = services.create_execution(local, {"cmd": "true"})

    async def feed() -> None:
        service = RunnerService(concurrency=1)
        try:
            claimed = await service.control_db(services.claim, execution.id, service.runner_id)
            sink = OutputSink(claimed.id, service._writer(claimed), max_chunk_bytes=max_chunk_bytes)
            writer = asyncio.create_task(sink.run())
            for piece in pieces:
                await sink.feed("stdout", piece)
            sink.close_streams()
            await writer
        finally:
            await asyncio.get_running_loop().run_in_executor(None, service.close)

    asyncio.run(feed())
    return [data for _, _, data in output_of(execution.id)]


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts}) if data else []
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@hyp_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    parts=st.lists(st.sampled_from(HOSTILE_PIECES), max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_it_stores_any_bytes_split_anywhere_as_their_documented_decoding(local, parts, cuts):
    data = b"".join(parts)
    stored = _store_through_the_runner(local, _split(data, cuts), max_chunk_bytes=64)
    assert "".join(stored) == documented_decoding(data)
    assert all(len(chunk.encode()) <= 64 for chunk in stored)
    assert all("\x00" not in chunk for chunk in stored)


def test_it_stores_megabyte_lines_of_random_bytes_split_at_random_points(local):
    rng = random.Random(11)
    data = rng.randbytes(3 * 1024 * 1024) + b"\n" + rng.randbytes(1024 * 1024)
    cuts = sorted(rng.sample(range(len(data)), 200))
    stored = _store_through_the_runner(local, _split(data, cuts), max_chunk_bytes=1024 * 1024)
    assert "".join(stored) == documented_decoding(data)


async def test_it_runs_an_action_printing_nul_to_its_true_status(local):
    done = await run_cmd(local, r'printf "before\n"; printf "a\000b\n"; printf "after\n"')
    assert done.status == S.SUCCEEDED
    assert text_of(await output(done.id)) == f"before\na{NUL_SUBSTITUTE}b\nafter\n"


# --- no orphans: an action's whole group dies with its runner -------------------------------
FAKE_RUNNER = """
import os, subprocess, sys, time
keeper, marker, ready = sys.argv[1:4]
env = {"PATH": os.environ["PATH"], "TAILGATE_TEST_MARK": marker}
cmd = "sleep 300 & sleep 300 & echo ready > " + ready + "; wait"
subprocess.Popen(
    [sys.executable, "-I", "-S", keeper, str(os.getpid()), "sh", "-c", cmd],
    env=env, start_new_session=True,
)
time.sleep(600)
"""


def test_it_kills_an_actions_background_children_when_its_runner_is_killed(tmp_path):
    marker = f"mark-{os.getpid()}-{random.random()}"
    ready = tmp_path / "ready"
    fake = subprocess.Popen([sys.executable, "-c", FAKE_RUNNER, str(KEEPER), marker, str(ready)])
    try:
        wait_until(ready.exists, WAIT_SECONDS, "the action to start")
        members = process_tree_pids(marker)
        assert len(members) >= 4  # keeper, sh, two sleeps
        fake.kill()  # SIGKILL: the runner gets no chance to clean up
        fake.wait(WAIT_SECONDS)
        wait_until(lambda: not process_tree_pids(marker), WAIT_SECONDS, "the action's group to die")
    finally:
        fake.kill()
        kill_all(process_tree_pids(marker))


async def test_it_exits_with_the_actions_status_through_the_keeper(local):
    assert (await run_cmd(local, "exit 7")).exit_code == 7
    killed = await run_cmd(local, "kill -KILL $$")
    assert (killed.status, killed.exit_code) == (S.FAILED, -9)


def test_local_and_remote_scripts_get_their_arguments_alike():
    from types import SimpleNamespace

    from executions.runners import local, remote
    from executions.runners.base import script_arguments

    action = SimpleNamespace(
        ordered_parameters=lambda: [("zeta", {}), ("alpha", {}), ("timeout", {})]
    )
    ctx = SimpleNamespace(
        execution=SimpleNamespace(action=action),
        parameters={"alpha": [1, 2], "zeta": True, "timeout": 5, "undeclared": "x"},
    )
    expected = ["--zeta=true", "--alpha=[1, 2]"]  # declared order, the process's text forms
    assert script_arguments(ctx, local.RUNNER_PARAMETERS) == expected
    assert script_arguments(ctx, remote.SSH_PARAMETERS) == expected
