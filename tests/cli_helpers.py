"""Shared by the CLI and client tests: the `tailgate` command, a proxy that can cut
connections, and a pack with a two-level nested workflow (fixtures: tests/cli_fixtures.py).

The command runs with its own empty config folder and no TAILGATE_* variables, so neither the
machine's ~/.config/tailgate/config nor the caller's environment can change what it does.
"""

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass
from pathlib import Path

from tests.runner_helpers import BASE_DIR, wait_until

# A command that finishes in a moment on an idle machine; generous on a busy one (a failure
# bound only: a CLI that reconnects across a server restart waits out the server's start).
COMMAND_SECONDS = 120
FINISH_SECONDS = 120


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli_env(config_home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILGATE_")}
    env.update({"XDG_CONFIG_HOME": str(config_home), "COLUMNS": "200", **extra})
    return env


def start_cli(url, key, *args, config_home: Path, python=sys.executable, **env):
    """`tailgate --url URL --api-key KEY ARGS…` (a flag left out when it is None)."""
    flags = [*(["--url", url] if url else []), *(["--api-key", key] if key else [])]
    return subprocess.Popen(
        [python, "-m", "tailgate_client.cli", *flags, *args],
        cwd=BASE_DIR,
        env=cli_env(config_home, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_cli(url, key, *args, config_home: Path, **env) -> Result:
    process = start_cli(url, key, *args, config_home=config_home, **env)
    out, err = process.communicate(timeout=COMMAND_SECONDS)
    assert "Traceback" not in err, err
    return Result(process.returncode, out, err)


def wait_finished(execution_id: str):
    from executions.models import Execution
    from executions.models.executions import FINISHED_STATUSES

    def finished():
        execution = Execution.objects.get(pk=execution_id)
        return execution if execution.status in FINISHED_STATUSES else None

    return wait_until(finished, FINISH_SECONDS, f"execution {execution_id} to finish", 0.1)


def stored_text(execution_id: str) -> str:
    from tests.runner_helpers import output_of

    return "".join(data for _, _, data in output_of(execution_id))


class CuttableProxy:
    """A loopback TCP proxy whose open connections the test can cut at once."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.loop = asyncio.new_event_loop()
        self.writers: list[asyncio.StreamWriter] = []
        self.connections = 0
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10), "the proxy did not start"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _handle(self, reader, writer):
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.writers += [writer, up_writer]

        async def pipe(src, dst):
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        """Abort every open connection, mid-stream: what a dropped link looks like."""

        def close_all():
            for writer in self.writers:
                writer.transport.abort()
            self.writers.clear()

        self.loop.call_soon_threadsafe(close_all)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def write_nested_pack(root: Path) -> Path:
    """Pack `nest`: `nest.outer` runs `first`, the workflow `nest.inner` (two tasks), `last`.

    `first` waits for the file `gate` (by default one that exists), so a test can hold the
    workflow running until its tail has started.
    """
    actions = root / "nest" / "actions"
    (actions / "workflows").mkdir(parents=True)
    files = {
        "outer.yaml": """
            name: outer
            description: A workflow whose second task is itself a workflow.
            runner_type: workflow
            entry_point: workflows/outer.yaml
            parameters:
              fail_inner:
                type: string
                default: "no"
              gate:
                type: string
                default: /dev/null
                description: The first task waits until this file exists.
        """,
        "inner.yaml": """
            name: inner
            description: The nested workflow.
            runner_type: workflow
            entry_point: workflows/inner.yaml
            parameters:
              fail:
                type: string
                default: "no"
        """,
        "workflows/outer.yaml": """
            tasks:
              - name: first
                action: core.local
                parameters:
                  cmd: >-
                    while [ ! -e "{{ gate }}" ]; do sleep 0.05; done;
                    echo outer first; echo outer first err >&2
              - name: middle
                action: nest.inner
                parameters:
                  fail: "{{ fail_inner }}"
              - name: last
                action: core.local
                parameters:
                  cmd: echo outer last
        """,
        "workflows/inner.yaml": """
            tasks:
              - name: one
                action: core.local
                parameters:
                  cmd: for i in 1 2 3; do echo inner one $i; sleep 0.1; done
              - name: two
                action: core.local
                parameters:
                  cmd: echo inner two {{ fail }}; test "{{ fail }}" != yes
        """,
    }
    for name, text in files.items():
        (actions / name).write_text(textwrap.dedent(text).lstrip())
    return root


def held_print_lines(count: int, gate: Path, held_after: int, delay: float = 0) -> str:
    """A `core.local` command printing examples.print_lines' lines ("stderr -> Line: 1",
    "stdout -> Line: 2", …) that, after line `held_after`, waits until the file `gate` exists.

    The test decides when the rest comes, so "still running", "printed while the server was
    down" and the like hold on a machine that stalls the test for any time, not on a delay.
    """
    return (
        f"i=1; while [ $i -le {count} ]; do "
        f'if [ $i -eq {held_after + 1} ]; then while [ ! -e "{gate}" ]; do sleep 0.05; done; fi; '
        'if [ $((i % 2)) -eq 1 ]; then echo "stderr -> Line: $i" >&2; '
        'else echo "stdout -> Line: $i"; fi; '
        f"i=$((i + 1)); sleep {delay}; done"
    )


def finish(process: subprocess.Popen) -> tuple[str, str]:
    """The rest of stdout and stderr once it exits (after the test read some lines itself).

    `communicate()` reads the pipes' file descriptors and would skip what `readline()` left
    in the text wrapper's buffer, so the wrappers are read here, in threads, with a timeout.
    """
    texts: dict[str, str] = {}

    def read(name: str) -> None:
        texts[name] = getattr(process, name).read()

    readers = [threading.Thread(target=read, args=(n,), daemon=True) for n in ("stdout", "stderr")]
    for reader in readers:
        reader.start()
    try:
        process.wait(timeout=COMMAND_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    for reader in readers:
        reader.join(COMMAND_SECONDS)
    return texts.get("stdout", ""), texts.get("stderr", "")
