"""What every runner gets and returns (RunContext, RunOutcome), and the environment and
parameter text an action sees. Running local process trees is in processes.py."""

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from executions.capture import OutputSink
from executions.masking import render_text
from executions.models import Execution, ExecutionStatus

# What an action's environment starts from; the runner's own (database URLs, keys) stays out.
PASSED_ENVIRONMENT = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR")


@dataclass
class RunOutcome:
    status: str
    exit_code: int | None = None
    result: Any = None
    error: str = ""


@dataclass
class RunContext:
    """What a runner gets: the execution, where output goes, and the cancel signal."""

    execution: Execution
    sink: OutputSink
    canceled: asyncio.Event
    # run_child(child, inherited_secrets=()): runs a child execution in this runner.
    run_child: Callable[..., Awaitable[Execution]] | None = None
    db: Callable[..., Awaitable[Any]] | None = None
    # Every secret value this run masks: its own secret parameters and its ancestors'
    # (a workflow's children inherit them, whatever their parameters were rendered into).
    secrets: list[Any] = field(default_factory=list)

    @property
    def parameters(self) -> dict[str, Any]:
        return self.execution.parameters


@dataclass
class ProcessResult:
    returncode: int | None
    timed_out: bool = False
    canceled: bool = False

    def outcome(self, result: Any = None) -> RunOutcome:
        if self.canceled:
            return RunOutcome(ExecutionStatus.CANCELED, self.returncode, result, "canceled")
        if self.timed_out:
            return RunOutcome(ExecutionStatus.TIMEOUT, self.returncode, result, "timed out")
        status = ExecutionStatus.SUCCEEDED if self.returncode == 0 else ExecutionStatus.FAILED
        return RunOutcome(status, self.returncode, result)


# One renderer for what the process sees and what masking hides (executions/masking.py).
parameter_text = render_text


def action_environment(parameters: dict[str, Any], extra: dict[str, Any] | None = None) -> dict:
    """Minimal environment + PARAM_<NAME> for each parameter + the `env` parameter."""
    env = {k: os.environ[k] for k in PASSED_ENVIRONMENT if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["PYTHONUNBUFFERED"] = "1"
    for name, value in parameters.items():
        if value is not None and name != "env":
            env[f"PARAM_{name.upper()}"] = parameter_text(value)
    for name, value in (extra or {}).items():
        env[str(name)] = parameter_text(value)
    return env


def script_arguments(ctx: RunContext, runner_parameters: set[str]) -> list[str]:
    """`--name=value` for each parameter the action declares, in the order it declares them,
    except those the runner itself uses (`runner_parameters`) and those without a value: how
    a local and a remote script get their parameters alike."""
    action = ctx.execution.action
    declared = action.ordered_parameters() if action is not None else []
    return [
        f"--{name}={parameter_text(ctx.parameters[name])}"
        for name, _spec in declared
        if name not in runner_parameters and ctx.parameters.get(name) is not None
    ]
