"""The `tailgate` CLI against a real server, through a proxy that can cut the connection."""

import asyncio
import contextlib
import subprocess
import sys
import threading

import pytest

from executions import services
from rbac.models import ApiKey
from tests.runner_helpers import BASE_DIR, output_of
from tests.server_helpers import serve

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


class CuttableProxy:
    """A loopback TCP proxy whose open connections the test can cut at once."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.loop = asyncio.new_event_loop()
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _handle(self, reader, writer):
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
        def close_all():
            for writer in self.writers:
                writer.transport.abort()
            self.writers.clear()

        self.loop.call_soon_threadsafe(close_all)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def server(cluster_mode):
    if cluster_mode:
        pytest.skip("embedded mode: the server runs the runner in-process on the SQLite test db")
    with serve(RUNNER_POLL_SECONDS="0.2") as (_process, url):
        yield url


@pytest.fixture
def key(superuser):
    return ApiKey.issue(superuser, name="cli")[1]


def tailgate(url: str, key: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tailgate_client.cli", "--url", url, "--api-key", key, *args],
        cwd=BASE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_it_tails_the_last_execution_from_its_first_line(server, key, actions):
    execution = services.create_execution(
        actions["examples.print_lines"], {"count": 6, "delay": 0.2}
    )
    cli = tailgate(server, key, "execution", "tail", "last")
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, err
    assert out == (
        f"Execution {execution.id} has started.\n\n"
        + "".join(f"{'stderr' if i % 2 else 'stdout'} -> Line: {i}\n" for i in range(1, 7))
        + f"\nExecution {execution.id} has completed (status=succeeded).\n"
    )


def test_it_exits_non_zero_when_the_execution_failed(server, key, actions):
    cli = tailgate(server, key, "run", "examples.fail", "--tail", "--type", "stderr")
    out, _ = cli.communicate(timeout=60)
    assert cli.returncode == 1
    assert "error: prerequisite missing\n" in out and "checking prerequisites" not in out
    assert out.rstrip().endswith("has completed (status=failed).")


def test_it_follows_a_workflows_children_like_st2(server, key, actions):
    cli = tailgate(server, key, "run", "examples.deploy", "steps=1", "--tail")
    out, err = cli.communicate(timeout=90)
    assert cli.returncode == 0, err
    tasks = [line for line in out.splitlines() if line.startswith("Child execution")]
    assert [t.split()[2] for t in tasks] == ["(task=build)"] * 2 + ["(task=test)"] * 2 + [
        "(task=summary)"
    ] * 2
    assert tasks[1].endswith("has finished (status=succeeded).")
    assert "deployed after 1 build steps\n" in out


def test_it_resumes_a_cut_stream_without_losing_or_repeating_a_line(server, key, actions):
    port = int(server.rsplit(":", 1)[1])
    proxy = CuttableProxy(port)
    try:
        execution = services.create_execution(
            actions["core.local"],
            {"cmd": "for i in $(seq 1 40); do echo line $i; sleep 0.05; done"},
        )
        cli = tailgate(f"http://127.0.0.1:{proxy.port}", key, "execution", "tail", execution.id)
        seen = []
        while len(seen) < 8:
            seen.append(cli.stdout.readline())
        proxy.cut()  # mid-stream: the CLI must reconnect with Last-Event-ID
        rest, err = cli.communicate(timeout=60)
    finally:
        proxy.close()
    assert cli.returncode == 0, err
    printed = [line for line in ("".join(seen) + rest).splitlines() if line.startswith("line ")]
    assert printed == [f"line {i}" for i in range(1, 41)]
    stored = [data for _, _, data in output_of(execution.id)]
    assert len(stored) == 40


def test_it_explains_errors_without_a_traceback(server, key, actions):
    cli = tailgate(server, key, "run", "examples.print_lines", "count=lots")
    _, err = cli.communicate(timeout=30)
    assert cli.returncode == 2
    assert "body.parameters.count: must be of type integer" in err and "Traceback" not in err
    missing = tailgate(server, key, "execution", "get", "01ARZ3NDEKTSV4RRFFQ69G5FAV")
    _, err = missing.communicate(timeout=30)
    assert missing.returncode == 2 and "Traceback" not in err
    bad_key = tailgate(server, "tg_nope", "execution", "list")
    _, err = bad_key.communicate(timeout=30)
    assert bad_key.returncode == 2 and "Traceback" not in err


def test_it_says_when_the_server_cannot_be_reached():
    cli = tailgate("http://127.0.0.1:9", "k", "execution", "list")
    _, err = cli.communicate(timeout=30)
    assert cli.returncode == 2 and "cannot reach http://127.0.0.1:9" in err


def test_it_parses_parameters_as_json_when_they_are():
    from tailgate_client.cli import parse_parameters

    assert parse_parameters(["count=3", "name=ann", "tags=[1,2]", "ok=true"]) == {
        "count": 3,
        "name": "ann",
        "tags": [1, 2],
        "ok": True,
    }
    with pytest.raises(SystemExit):
        parse_parameters(["oops"])
