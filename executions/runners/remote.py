"""`remote-shell-cmd` and `remote-shell-script` over SSH (asyncssh).

Every host streams its own output while it runs (StackStorm streams only single-host runs);
with more than one host each line is prefixed with `[host] `. The exit code is the first
non-zero one; `result` maps each host to its exit code (or connection error).
On timeout or cancel the remote processes get SIGTERM, then the channels are closed.
"""

import asyncio
import contextlib
from typing import Any

import asyncssh

from executions.models import ExecutionStatus
from executions.runners.base import KILL_GRACE_SECONDS, READ_SIZE, RunContext, RunOutcome
from executions.runners.local import DEFAULT_TIMEOUT_SECONDS, entry_point_path

S = ExecutionStatus
CONNECT_TIMEOUT_SECONDS = 15


def _split_host(host: str) -> tuple[str, int]:
    if host.startswith("[") and "]:" in host:  # [::1]:2222
        name, port = host[1:].split("]:", 1)
        return name, int(port)
    if host.count(":") == 1:
        name, port = host.split(":")
        return name, int(port)
    return host.strip("[]"), 22


def _connect_options(params: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {"known_hosts": params.get("known_hosts") or None}
    if params.get("username"):
        options["username"] = params["username"]
    if params.get("private_key"):
        options["client_keys"] = [asyncssh.import_private_key(params["private_key"])]
    if params.get("password"):
        options["password"] = params["password"]
    return options


async def _pump(stream, ctx: RunContext, output_type: str, prefix: str) -> None:
    while True:
        data = await stream.read(READ_SIZE)
        if not data:
            return
        await ctx.sink.feed(output_type, data, prefix=prefix)


async def _run_on_host(
    ctx: RunContext, host: str, command: str, stdin: bytes | None, prefix: str
) -> int | str:
    name, port = _split_host(host)
    try:
        async with asyncssh.connect(
            name,
            port=port,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            **_connect_options(ctx.parameters),
        ) as conn:
            process = await conn.create_process(command, encoding=None)
            if stdin is not None:
                process.stdin.write(stdin)
            process.stdin.write_eof()
            pumps = [
                asyncio.create_task(_pump(process.stdout, ctx, "stdout", prefix)),
                asyncio.create_task(_pump(process.stderr, ctx, "stderr", prefix)),
            ]
            try:
                await asyncio.gather(*pumps)
                completed = await process.wait()
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    process.send_signal("TERM")
                    await asyncio.wait_for(process.wait_closed(), KILL_GRACE_SECONDS)
                process.close()
                raise
            code = completed.exit_status
            return code if code is not None else 255
    except (OSError, asyncssh.Error) as exc:
        message = f"{type(exc).__name__}: {exc}"
        ctx.sink.add_text("stderr", f"{prefix}tailgate: cannot run on {host}: {message}\n")
        return message


async def _run_remote(ctx: RunContext, command: str, stdin: bytes | None = None) -> RunOutcome:
    hosts = [h for h in ctx.parameters.get("hosts") or [] if h]
    if not hosts:
        return RunOutcome(S.FAILED, error="no hosts given")
    timeout = float(ctx.parameters.get("timeout") or DEFAULT_TIMEOUT_SECONDS)
    runs = {
        host: asyncio.create_task(
            _run_on_host(ctx, host, command, stdin, f"[{host}] " if len(hosts) > 1 else "")
        )
        for host in hosts
    }
    canceled = asyncio.create_task(ctx.canceled.wait())
    _done, pending = await _wait_hosts(list(runs.values()), canceled, timeout)
    stopped = bool(pending)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    canceled.cancel()
    results: dict[str, Any] = {}
    for host, task in runs.items():
        value = None if task.cancelled() else task.result()
        results[host] = {"exit_code": value} if isinstance(value, int) else {"error": value}
    if stopped:
        status = S.CANCELED if ctx.canceled.is_set() else S.TIMEOUT
        return RunOutcome(
            status, None, results, "canceled" if status == S.CANCELED else "timed out"
        )
    codes = [r.get("exit_code") for r in results.values()]
    failed = [c for c in codes if c != 0]
    exit_code = next((c for c in codes if isinstance(c, int) and c != 0), 0 if not failed else 255)
    return RunOutcome(S.FAILED if failed else S.SUCCEEDED, exit_code, results)


async def _wait_hosts(runs: list[asyncio.Task], canceled: asyncio.Task, timeout: float):
    """Wait for all hosts, or until canceled or timed out; returns (done, pending runs)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = set(runs)
    while pending:
        left = deadline - loop.time()
        if left <= 0 or canceled.done():
            break
        _, pending = await asyncio.wait(
            {*pending, canceled}, timeout=left, return_when=asyncio.FIRST_COMPLETED
        )
        pending.discard(canceled)
    return set(runs) - pending, pending


async def run_remote_command(ctx: RunContext) -> RunOutcome:
    return await _run_remote(ctx, ctx.parameters["cmd"])


async def run_remote_script(ctx: RunContext) -> RunOutcome:
    """Send the entry-point script on stdin to `sh -s`, with parameters as `--name=value`."""
    from shlex import quote

    from executions.runners.base import parameter_text

    script = entry_point_path(ctx).read_bytes()
    skip = {"hosts", "username", "private_key", "password", "known_hosts", "timeout"}
    args = [
        quote(f"--{name}={parameter_text(value)}")
        for name, value in ctx.parameters.items()
        if name not in skip and value is not None
    ]
    return await _run_remote(ctx, " ".join(["sh", "-s", "--", *args]), stdin=script)
