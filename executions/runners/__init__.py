"""One module per runner type; RUNNERS maps a runner_type to its coroutine."""

from collections.abc import Awaitable, Callable

from executions.models import RunnerType
from executions.runners.base import RunContext, RunOutcome


def _registry() -> dict[str, Callable[[RunContext], Awaitable[RunOutcome]]]:
    from executions.runners import local, python, remote, workflow

    return {
        RunnerType.LOCAL_SHELL_CMD: local.run_command,
        RunnerType.LOCAL_SHELL_SCRIPT: local.run_script,
        RunnerType.PYTHON_SCRIPT: python.run_python,
        RunnerType.REMOTE_SHELL_CMD: remote.run_remote_command,
        RunnerType.REMOTE_SHELL_SCRIPT: remote.run_remote_script,
        RunnerType.WORKFLOW: workflow.run_workflow,
    }


def get_runner(runner_type: str) -> Callable[[RunContext], Awaitable[RunOutcome]]:
    return _registry()[runner_type]
