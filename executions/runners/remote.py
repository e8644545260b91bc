"""`remote-shell-cmd` and `remote-shell-script` over SSH (asyncssh).

One host: the execution itself connects and streams the remote stdout and stderr as they
come (StackStorm streams only single-host runs); it ends with the remote exit code, and
`result` is `{host: {"exit_code": n}}` or `{host: {"error": "..."}}` when it could not run.

Several hosts: the execution becomes a parent, as a workflow is (see docs/remote.md):

    create one child execution per host      same action, parameters with `hosts: [host]`,
      (all at once, `scheduled`)             task_name = the host as given
    run them through ctx.run_child           at most `concurrency` at a time (default 10)
    a parent cancel is forwarded             queued children end `canceled` at once,
      to every child                         running ones are stopped as below
    result = {host: {execution, status,      the parent succeeds only if every host did
                     exit_code}}

so each host has its own live output, status and exit code, and can be followed alone.

Stopping a host (timeout or cancel): SIGTERM through an SSH `signal` request, which OpenSSH
delivers with killpg() to the session's whole process group; SIGKILL the same way if output
has not ended after KILL_GRACE_SECONDS; then the channel is closed.
"""

import asyncio
import contextlib
import signal
from shlex import quote
from typing import Any

import asyncssh
from django.db import transaction

from executions import services
from executions.models import Execution, ExecutionStatus
from executions.parameters import distinct_hosts
from executions.runners.base import RunContext, RunOutcome, script_arguments
from executions.runners.local import DEFAULT_TIMEOUT_SECONDS, entry_point_path
from executions.runners.processes import KILL_GRACE_SECONDS, READ_SIZE

S = ExecutionStatus
# Default for the `connect_timeout` parameter: TCP connect, key exchange and authentication.
CONNECT_TIMEOUT_SECONDS = 15
# The session ended with neither status nor a known signal: what OpenSSH's client says then.
NO_EXIT_STATUS = 255
# Hosts run at once when `concurrency` is not given.
DEFAULT_CONCURRENCY = 10
# Each running host holds an SSH connection and an output sink in this runner process.
MAX_CONCURRENCY = 100
# task_name is a CharField(max_length=150).
TASK_NAME_MAX = 150
# Connection parameters: not passed to a remote script as `--name=value`.
SSH_PARAMETERS = {
    "hosts",
    "username",
    "private_key",
    "password",
    "known_hosts",
    "timeout",
    "connect_timeout",
    "concurrency",
}


def _split_host(host: str) -> tuple[str, int]:
    if host.startswith("[") and "]:" in host:  # [::1]:2222
        name, port = host[1:].split("]:", 1)
        return name, int(port)
    if host.count(":") == 1:
        name, port = host.split(":")
        return name, int(port)
    return host.strip("[]"), 22


def _connect_options(params: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {
        "known_hosts": params.get("known_hosts") or None,
        "connect_timeout": float(params.get("connect_timeout") or CONNECT_TIMEOUT_SECONDS),
    }
    if params.get("username"):
        options["username"] = params["username"]
    if params.get("private_key"):
        options["client_keys"] = [asyncssh.import_private_key(params["private_key"])]
    if params.get("password"):
        options["password"] = params["password"]
    return options


# --- one host -----------------------------------------------------------------------------


async def _pump(stream, ctx: RunContext, output_type: str) -> None:
    while data := await stream.read(READ_SIZE):
        await ctx.sink.feed(output_type, data)


async def _stop_reason(canceled: asyncio.Event, timeout: float) -> str:
    """Wait until the run must stop: CANCELED or TIMEOUT."""
    try:
        await asyncio.wait_for(canceled.wait(), timeout)
        return S.CANCELED
    except TimeoutError:
        return S.TIMEOUT


async def _signal_and_wait(process, name: str, pumps: asyncio.Future) -> bool:
    """Send signal `name` to the remote process group; True once its output has ended."""
    with contextlib.suppress(asyncssh.Error, OSError):
        process.send_signal(name)
    done, _ = await asyncio.wait({pumps}, timeout=KILL_GRACE_SECONDS)
    return bool(done)


async def _terminate(process, pumps: asyncio.Future) -> None:
    """SIGTERM, then SIGKILL: what the group wrote meanwhile is still stored."""
    if not await _signal_and_wait(process, "TERM", pumps):
        await _signal_and_wait(process, "KILL", pumps)
    process.close()
    pumps.cancel()
    await asyncio.gather(pumps, return_exceptions=True)


async def _session(ctx, conn, command: str, stdin: bytes | None, stop: asyncio.Task) -> str | int:
    """Run `command` on an open connection; the exit code, or the stop reason."""
    process = await conn.create_process(command, encoding=None)
    if stdin is not None:
        process.stdin.write(stdin)
    process.stdin.write_eof()
    pumps = asyncio.gather(
        _pump(process.stdout, ctx, "stdout"), _pump(process.stderr, ctx, "stderr")
    )
    try:
        await asyncio.wait({pumps, stop}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the runner itself is stopping: the remote group goes too
        await _terminate(process, pumps)
        raise
    if not pumps.done():
        await _terminate(process, pumps)
        return stop.result()
    pumps.result()  # a connection lost mid-run raises here, with what it read kept
    return _exit_code(await process.wait())


def _exit_code(completed: asyncssh.SSHCompletedProcess) -> int:
    """The remote exit status; -N when signal N killed it, as a local run says (Popen)."""
    if completed.exit_signal:
        name = completed.exit_signal[0]
        with contextlib.suppress(KeyError):
            return -signal.Signals[f"SIG{name}"].value
    if completed.exit_status is None or completed.exit_status < 0:
        return NO_EXIT_STATUS
    return completed.exit_status


async def _connect(ctx: RunContext, host: str, stop: asyncio.Task):
    """An open connection, or the stop reason when the run must stop while connecting."""
    name, port = _split_host(host)
    connecting = asyncio.ensure_future(
        asyncssh.connect(name, port=port, **_connect_options(ctx.parameters))
    )
    try:
        await asyncio.wait({connecting, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not connecting.done():  # stopped, or the runner itself stops: no half-open connection
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
    return stop.result() if connecting.cancelled() else connecting.result()


async def _run_single(ctx: RunContext, host: str, command: str, stdin: bytes | None):
    timeout = float(ctx.parameters.get("timeout") or DEFAULT_TIMEOUT_SECONDS)
    stop = asyncio.create_task(_stop_reason(ctx.canceled, timeout))
    try:
        conn = await _connect(ctx, host, stop)
        if isinstance(conn, str):
            return _stopped(conn, host)
        async with conn:
            ended = await _session(ctx, conn, command, stdin, stop)
    except (OSError, asyncssh.Error) as exc:
        message = _describe(exc, ctx.parameters)
        ctx.sink.add_text("stderr", f"tailgate: cannot run on {host}: {message}\n")
        return RunOutcome(S.FAILED, None, {host: {"error": message}}, message)
    finally:
        stop.cancel()
    if isinstance(ended, str):
        return _stopped(ended, host)
    status = S.SUCCEEDED if ended == 0 else S.FAILED
    return RunOutcome(status, ended, {host: {"exit_code": ended}})


def _describe(exc: BaseException, params: dict[str, Any]) -> str:
    if isinstance(exc, TimeoutError):  # asyncssh's connect_timeout says nothing itself
        seconds = params.get("connect_timeout") or CONNECT_TIMEOUT_SECONDS
        return f"TimeoutError: connection timed out after {seconds} s"
    return f"{type(exc).__name__}: {exc}"


def _stopped(reason: str, host: str) -> RunOutcome:
    error = "canceled" if reason == S.CANCELED else "timed out"
    return RunOutcome(reason, None, {host: {"error": error}}, error)


# --- several hosts: one child execution each ------------------------------------------------


def _create_children(parent_id: str, hosts: list[str]) -> dict[str, Execution]:
    """All children or none: a half-created set would leave children nobody runs."""
    parent = Execution.objects.select_related("tenant", "created_by").get(pk=parent_id)
    action = services.get_action(parent.action_ref)
    with transaction.atomic():
        return {
            host: services.create_execution(
                action,
                {**parent.parameters, "hosts": [host]},
                tenant=parent.tenant,
                user=parent.created_by,
                parent=parent,
                task_name=host[:TASK_NAME_MAX],
            )
            for host in hosts
        }


def _cancel_children(child_ids: list[str]) -> None:
    for child in Execution.objects.filter(pk__in=child_ids):
        with contextlib.suppress(services.NotCancelable):
            services.cancel(child)


async def _forward_cancel(ctx: RunContext, child_ids: list[str]) -> None:
    assert ctx.db is not None
    await ctx.canceled.wait()
    await ctx.db(_cancel_children, child_ids)


async def _run_child(ctx: RunContext, host: str, child: Execution, gate: asyncio.Semaphore):
    assert ctx.run_child is not None
    async with gate:
        done = await ctx.run_child(child)
    ctx.sink.add_text(
        "other", f"Host {host} finished (status={done.status}, exit_code={done.exit_code}).\n"
    )
    return done


async def _run_children(ctx: RunContext, children: dict[str, Execution], concurrency: int):
    """Run every child, `concurrency` at a time; {host: finished child or the exception}."""
    gate = asyncio.Semaphore(concurrency)
    runs = {
        host: asyncio.create_task(_run_child(ctx, host, child, gate))
        for host, child in children.items()
    }
    watcher = asyncio.create_task(_forward_cancel(ctx, [c.id for c in children.values()]))
    try:
        await asyncio.wait(runs.values())
    finally:  # also when the parent's own task is cancelled: the children go with it
        for task in [*runs.values(), watcher]:
            task.cancel()
        await asyncio.gather(*runs.values(), watcher, return_exceptions=True)
    return {host: task.exception() or task.result() for host, task in runs.items()}


def _host_result(done: Execution | BaseException) -> dict[str, Any]:
    if isinstance(done, BaseException):
        return {"execution": None, "status": S.FAILED, "exit_code": None, "error": str(done)}
    return {"execution": done.id, "status": done.status, "exit_code": done.exit_code}


def _parent_outcome(ctx: RunContext, results: dict[str, dict[str, Any]]) -> RunOutcome:
    bad = {host: r for host, r in results.items() if r["status"] != S.SUCCEEDED}
    if not bad:
        return RunOutcome(S.SUCCEEDED, 0, results)
    codes = [r["exit_code"] for r in bad.values() if r["exit_code"] not in (None, 0)]
    listed = ", ".join(f"{host} ({r['status']})" for host, r in bad.items())
    status = S.CANCELED if ctx.canceled.is_set() else S.FAILED
    error = f"{len(bad)} of {len(results)} hosts did not succeed: {listed}"
    return RunOutcome(status, codes[0] if codes else None, results, error)


def _concurrency(ctx: RunContext) -> int:
    value = ctx.parameters.get("concurrency")
    value = DEFAULT_CONCURRENCY if value is None else int(value)
    if value < 1:
        raise ValueError("concurrency must be at least 1")
    return min(value, MAX_CONCURRENCY)


async def _run_multi(ctx: RunContext, hosts: list[str]) -> RunOutcome:
    assert ctx.db is not None
    try:
        concurrency = _concurrency(ctx)
    except ValueError as exc:
        return RunOutcome(S.FAILED, error=str(exc))
    try:
        children = await ctx.db(_create_children, ctx.execution.id, hosts)
    except (services.ActionUnavailable, services.ParameterError) as exc:
        return RunOutcome(S.FAILED, error=f"cannot create the hosts' executions: {exc}")
    for host, child in children.items():
        ctx.sink.add_text("other", f"Host {host}: execution {child.id}.\n")
    finished = await _run_children(ctx, children, concurrency)
    results = {host: _host_result(done) for host, done in finished.items()}
    return _parent_outcome(ctx, results)


async def _run_remote(ctx: RunContext, command: str, stdin: bytes | None = None) -> RunOutcome:
    hosts = distinct_hosts(ctx.parameters)
    if not hosts:
        return RunOutcome(S.FAILED, error="no hosts given")
    if len(hosts) == 1:
        return await _run_single(ctx, hosts[0], command, stdin)
    return await _run_multi(ctx, hosts)


async def run_remote_command(ctx: RunContext) -> RunOutcome:
    return await _run_remote(ctx, ctx.parameters["cmd"])


async def run_remote_script(ctx: RunContext) -> RunOutcome:
    """Send the entry-point script on stdin to `sh -s`, with parameters as `--name=value`."""
    script = entry_point_path(ctx).read_bytes()
    args = [quote(argument) for argument in script_arguments(ctx, SSH_PARAMETERS)]
    return await _run_remote(ctx, " ".join(["sh", "-s", "--", *args]), stdin=script)
