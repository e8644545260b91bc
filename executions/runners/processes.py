"""Running a local process tree and streaming its pipes into an OutputSink: process groups,
the keeper that kills them with the runner, pidfd exits, draining, and reaping."""

import asyncio
import contextlib
import ctypes
import logging
import os
import pty
import shutil
import signal
import subprocess
import sys
import termios
from pathlib import Path

from executions.capture import OutputSink
from executions.runners.base import ProcessResult, RunContext

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
# After the main process exits, how long the pipes may stay open *and idle* (no bytes, the
# readers not held back by the writer) before the whole process group is killed: a
# forgotten `sleep 1000 &` must not hang the execution, but output still flowing is drained.
PIPE_DRAIN_SECONDS = 1.0
# A background child that keeps writing after the main process exited is killed after this.
PIPE_DRAIN_MAX_SECONDS = 30.0
# Between SIGTERM and SIGKILL when a run is canceled or times out.
KILL_GRACE_SECONDS = 2.0
STDBUF = shutil.which("stdbuf")
_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Adopt orphaned grandchildren, so they are reaped here and never linger as zombies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


KEEPER = Path(__file__).with_name("keeper.py")


def kept(argv: list[str]) -> list[str]:
    """`argv` under a keeper (keeper.py) that kills the action's group if this runner dies.

    Popen runs on the event loop's thread, which lives as long as the runner: the
    parent-death signal the keeper asks for is tied to the thread that forked it.
    """
    return [sys.executable, "-I", "-S", str(KEEPER), str(os.getpid()), *argv]


def line_buffered(argv: list[str]) -> list[str]:
    """Ask glibc programs to line-buffer stdout/stderr on pipes (no-op where stdbuf is missing)."""
    return [STDBUF, "-oL", "-eL", *argv] if STDBUF else argv


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _reap_group(pgid: int) -> None:
    """Collect exited members of the group that were re-parented to us (we are a subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# How long to wait, after SIGKILL, for the group's processes to die and be reaped (dying and
# re-parenting take a moment; a member that is nobody's child of ours cannot be waited on).
REAP_SECONDS = 2.0
REAP_POLL_SECONDS = 0.01


async def kill_and_reap(pgid: int) -> None:
    """SIGKILL the whole group and wait until none of it is left, zombies included."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REAP_SECONDS
    _kill_group(pgid, signal.SIGKILL)
    while True:
        _reap_group(pgid)
        if not _group_exists(pgid) or loop.time() > deadline:
            return
        _kill_group(pgid, signal.SIGKILL)  # members forked while we were killing
        await asyncio.sleep(REAP_POLL_SECONDS)


async def _pump(reader: asyncio.StreamReader, sink: OutputSink, output_type: str) -> None:
    while True:
        try:
            data = await reader.read(READ_SIZE)
        except OSError:  # EIO from a pty master once the terminal closed: end of output
            return
        if not data:
            return
        await sink.feed(output_type, data)


async def _pipe_reader(pipe) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_SIZE)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    return reader, transport


class _Child:
    """A spawned process whose exit is seen through a pidfd.

    asyncio's Process.wait() (Python 3.12+) only returns once the pipes are closed too, so a
    background child holding them would hang the run; the pidfd says when the main process
    itself exits.
    """

    def __init__(self, popen: subprocess.Popen):
        self.popen = popen
        self.pid = popen.pid
        self._pidfd = os.pidfd_open(popen.pid)
        self._exited = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_reader(self._pidfd, self._on_exit)

    def _on_exit(self) -> None:
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        self.popen.wait()  # already exited: reaps at once
        if not self._exited.done():
            self._exited.set_result(self.popen.returncode)

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)


async def run_process(
    ctx: RunContext,
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: str | None = None,
    timeout: float | None = None,
    use_pty: bool = False,
    stdin_path: str | None = None,
) -> ProcessResult:
    """Run `argv` in its own process group, streaming stdout and stderr into ctx.sink.

    Ends on exit, timeout or cancel; on the two last the whole group gets SIGTERM, then
    SIGKILL after KILL_GRACE_SECONDS. When it returns, no process of the group is left.
    """
    master = slave = None
    if use_pty:
        master, slave = pty.openpty()
        attrs = termios.tcgetattr(slave)
        attrs[1] &= ~termios.ONLCR  # keep "\n" as is rather than "\r\n"
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
    stdin_file = open(stdin_path, "rb") if stdin_path else None  # noqa: SIM115
    try:
        popen = subprocess.Popen(
            kept(argv),
            stdin=stdin_file or subprocess.DEVNULL,
            stdout=slave if use_pty else subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    finally:
        if stdin_file is not None:
            stdin_file.close()
        if slave is not None:
            os.close(slave)
    child = _Child(popen)
    pgid = popen.pid
    transports: list[asyncio.BaseTransport] = []
    pumps: list[asyncio.Task] = []
    try:
        stdout_pipe = os.fdopen(master, "rb", 0) if master is not None else popen.stdout
        stdout_reader, transport = await _pipe_reader(stdout_pipe)
        transports.append(transport)
        stderr_reader, transport = await _pipe_reader(popen.stderr)
        transports.append(transport)
        pumps += [
            asyncio.create_task(_pump(stdout_reader, ctx.sink, "stdout")),
            asyncio.create_task(_pump(stderr_reader, ctx.sink, "stderr")),
        ]
        result = await _wait_or_stop(child, pgid, ctx.canceled, timeout)
        pending = await _drain(pumps, ctx.sink, PIPE_DRAIN_MAX_SECONDS)
        _kill_group(pgid, signal.SIGKILL)  # background children die with the execution
        # Their writers are dead now: what they buffered drains, then EOF ...
        pending = await _drain(pending, ctx.sink, None)
        for task in pending:  # ... unless a process that left our group still holds a pipe
            task.cancel()
        return result
    finally:
        if child.returncode is None:
            _kill_group(pgid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(child.wait(), KILL_GRACE_SECONDS)
        await kill_and_reap(pgid)
        for task in pumps:  # stopped early (cancel from above): no pump outlives the run
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        for transport in transports:
            transport.close()


async def _drain(pumps, sink: OutputSink, limit: float | None) -> set[asyncio.Task]:
    """Wait for the pumps to reach EOF while output still flows; the ones left pending.

    Stops after PIPE_DRAIN_SECONDS with no byte read while the sink had room (the pipe is
    idle, held open by someone), or after `limit` seconds in all.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    pending = set(pumps)
    while pending:
        fed_before = sink.bytes_fed
        _done, pending = await asyncio.wait(pending, timeout=PIPE_DRAIN_SECONDS)
        flowing = sink.bytes_fed != fed_before or not sink.has_room
        if not flowing or (limit is not None and loop.time() - started >= limit):
            break
    return pending


async def _wait_or_stop(
    child: "_Child", pgid: int, canceled: asyncio.Event, timeout: float | None
) -> ProcessResult:
    exited = asyncio.ensure_future(child.wait())
    cancel = asyncio.create_task(canceled.wait())
    try:
        done, _ = await asyncio.wait(
            {exited, cancel}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        cancel.cancel()
    if exited in done:
        return ProcessResult(child.returncode)
    was_canceled = cancel in done
    await stop_group(child, pgid)
    return ProcessResult(child.returncode, timed_out=not was_canceled, canceled=was_canceled)


async def stop_group(proc: "_Child", pgid: int) -> None:
    """SIGTERM the group, SIGKILL it after KILL_GRACE_SECONDS, wait for the main process."""
    _kill_group(pgid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), KILL_GRACE_SECONDS)
    _kill_group(pgid, signal.SIGKILL)
    await proc.wait()
