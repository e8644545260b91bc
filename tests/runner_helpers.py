"""Helpers for tests that run real executions (in-process runners or runner processes)."""

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection

from executions import services
from executions.models import Action, Execution
from executions.runner_service import RunnerService

BASE_DIR = Path(settings.BASE_DIR)
# A run timeout under test must fall after the action got going (printed its first line), which
# a starved CPU can delay past any fixed timeout: a run whose timeout came first proves nothing
# and runs again with a longer one. Only a product that never gets going exhausts them.
RUN_TIMEOUTS = (5, 20, 80)


def database_url() -> str:
    """The test database as a DATABASE_URL, for processes the test starts."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    return f"postgres://{s['USER']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["DATABASE_URL"] = database_url()
    if settings.REDIS_URL:
        env["REDIS_URL"] = settings.REDIS_URL
    env.update(extra)
    return env


def start_actionrunner(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "actionrunner", *args],
        cwd=BASE_DIR,
        env=subprocess_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_until(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll `condition` (a state in another process, with no notification to wait on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def run_execution(action, parameters=None, *, tenant=None, service=None) -> Execution:
    """Create an execution and run it to its end in this event loop; the finished row."""
    execution = await sync_to_async(services.create_execution)(action, parameters, tenant=tenant)
    own = service is None
    service = service or RunnerService(concurrency=1)
    claimed = await service.control_db(services.claim, execution.id, service.runner_id)
    await service.control_db(lambda: claimed.action)
    try:
        return await service.execute(claimed, asyncio.Event())
    finally:
        if own:
            await asyncio.get_running_loop().run_in_executor(None, service.close)


# A remote script action's parameters: the runner's own (hosts, username, private_key) and `who`.
REMOTE_HELLO_YAML = (
    "runner_type: remote-shell-script\nentry_point: hello.sh\nparameters:\n"
    "  hosts: {type: array}\n  username: {type: string}\n"
    "  private_key: {type: string, secret: true}\n  who: {type: string}\n"
)


async def register_pack(tmp_path: Path, pack: str, files: dict[str, str]) -> dict[str, Action]:
    """Write `files` (paths under the pack's `actions/`) as pack `pack` in `tmp_path` and
    register the packs there; the pack's actions by name."""
    from executions.packs import register

    for name, text in files.items():
        path = tmp_path / pack / "actions" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    await sync_to_async(register)([tmp_path])
    return {action.name: action async for action in Action.objects.filter(pack=pack)}


async def finished_row(execution_id: str, timeout: float = 120) -> Execution:
    """The execution's row once it has finished, polled: the layer's ring of the end is lossy
    (a send that a starved CPU makes slower than CHANNEL_LAYER_SEND_TIMEOUT_SECONDS is skipped)."""
    from executions.models.executions import FINISHED_STATUSES

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        execution = await Execution.objects.aget(pk=execution_id)
        if execution.status in FINISHED_STATUSES:
            return execution
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {execution_id} to finish")


def output_of(execution_id: str, output_type: str | None = None) -> list[tuple[int, str, str]]:
    from executions.models import OutputChunk

    chunks = OutputChunk.objects.filter(execution_id=execution_id).order_by("seq")
    if output_type:
        chunks = chunks.filter(output_type=output_type)
    return list(chunks.values_list("seq", "output_type", "data"))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class GroupListener:
    """Listens to an execution's channel-layer group (subscribe first, then check state)."""

    def __init__(self, execution_id: str):
        from channels.layers import get_channel_layer

        from executions.publish import execution_group

        self.layer = get_channel_layer()
        self.group = execution_group(execution_id)
        self.channel = None

    async def __aenter__(self):
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(self.group, self.channel)
        return self

    async def __aexit__(self, *exc):
        await self.layer.group_discard(self.group, self.channel)

    async def wait_for(self, predicate, timeout: float = 20):
        """The first message for which predicate(message) is true."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.layer.receive(self.channel)
                if predicate(message):
                    return message


def is_output(message) -> bool:
    return message["type"] == "output.batch"


def is_finished(message) -> bool:
    from executions.models.executions import FINISHED_STATUSES

    return (
        message["type"] == "execution.event" and message["payload"]["status"] in FINISHED_STATUSES
    )
