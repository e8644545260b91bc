"""`local-shell-cmd` and `local-shell-script`.

Both get a minimal environment plus PARAM_<NAME>=value for every parameter (arrays and
objects as JSON, booleans as true/false) and the `env` parameter's variables. Scripts also
get every parameter as an argument `--name=value`, in the order the action declares them.
Runner parameters: `cwd`, `env`, `timeout` (seconds), `pty` (stdout on a terminal).
"""

import tempfile
from pathlib import Path

from executions.runners.base import RunContext, RunOutcome, action_environment, script_arguments
from executions.runners.processes import line_buffered, run_process

RUNNER_PARAMETERS = {"cwd", "env", "timeout", "pty"}
DEFAULT_TIMEOUT_SECONDS = 600


def entry_point_path(ctx: RunContext) -> Path:
    action = ctx.execution.action
    if action is None:
        raise RuntimeError(f"action {ctx.execution.action_ref} is no longer registered")
    return Path(action.pack_path) / "actions" / action.entry_point


async def _run_shell(ctx: RunContext, argv: list[str], default_cwd: str | None) -> RunOutcome:
    params = ctx.parameters
    env = action_environment(params, params.get("env") or {})
    timeout = params.get("timeout") or DEFAULT_TIMEOUT_SECONDS
    with tempfile.TemporaryDirectory(prefix="tailgate-") as scratch:
        cwd = params.get("cwd") or default_cwd or scratch
        if not Path(cwd).is_dir():
            ctx.sink.add_text("stderr", f"tailgate: working directory {cwd} does not exist\n")
            return RunOutcome("failed", error=f"working directory {cwd} does not exist")
        result = await run_process(
            ctx,
            line_buffered(argv),
            env=env,
            cwd=cwd,
            timeout=float(timeout),
            use_pty=bool(params.get("pty")),
        )
    return result.outcome()


async def run_command(ctx: RunContext) -> RunOutcome:
    return await _run_shell(ctx, ["/bin/sh", "-c", ctx.parameters["cmd"]], None)


async def run_script(ctx: RunContext) -> RunOutcome:
    script = entry_point_path(ctx)
    args = script_arguments(ctx, RUNNER_PARAMETERS)
    interpreter = [] if _is_executable(script) else ["/bin/sh"]
    return await _run_shell(ctx, [*interpreter, str(script), *args], str(script.parent))


def _is_executable(path: Path) -> bool:
    import os

    return os.access(path, os.X_OK)
