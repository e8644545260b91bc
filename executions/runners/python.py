"""`python-script`: a file with `run(**parameters)` (or a class with a `run` method).

The parameters reach the wrapper on stdin as JSON; the return value comes back through a
result file (not stdout, so printing never breaks it) and becomes the execution's result.
An exception fails the execution with its traceback on stderr.
"""

import json
import sys
import tempfile
from pathlib import Path

from executions.models import ExecutionStatus
from executions.runners.base import RunContext, RunOutcome, action_environment
from executions.runners.local import DEFAULT_TIMEOUT_SECONDS, entry_point_path
from executions.runners.processes import run_process

WRAPPER = Path(__file__).with_name("python_wrapper.py")
# A result is stored in the execution row: keep it to a size a database row carries well.
MAX_RESULT_BYTES = 16 * 1024 * 1024


async def run_python(ctx: RunContext) -> RunOutcome:
    script = entry_point_path(ctx)
    params = dict(ctx.parameters)
    timeout = float(params.pop("timeout", None) or DEFAULT_TIMEOUT_SECONDS)
    with tempfile.TemporaryDirectory(prefix="tailgate-py-") as scratch:
        result_path = Path(scratch) / "result.json"
        params_path = Path(scratch) / "parameters.json"
        params_path.write_text(json.dumps(params))
        env = action_environment({}, {"TAILGATE_RESULT_PATH": str(result_path)})
        process = await run_process(
            ctx,
            [sys.executable, "-u", str(WRAPPER), str(script)],
            env=env,
            cwd=str(script.parent),
            timeout=timeout,
            stdin_path=str(params_path),
        )
        result = None
        if result_path.exists():
            if result_path.stat().st_size > MAX_RESULT_BYTES:
                ctx.sink.add_text("stderr", "tailgate: the result is too large to store\n")
                return RunOutcome(
                    ExecutionStatus.FAILED, process.returncode, error="result larger than 16 MiB"
                )
            result = json.loads(result_path.read_text())
    return process.outcome(result)
