"""A real `manage.py serve` for tests: on a free port, on the test database, its log in a file.

`serve` yields the process and its base URL; `running_server` yields the `Server` itself, which
can be killed and started again at the same address.
"""

import contextlib
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
from django.conf import settings
from django.test import Client

from tests.runner_helpers import BASE_DIR, subprocess_env, wait_until

ARTIFACTS = BASE_DIR / "test-artifacts"
# Failure bounds only: on a starved CPU a server took more than 60 s to start and answer its
# first request while 20 clients were reconnecting to it.
START_SECONDS = 180
PROBE_SECONDS = 10
STOP_SECONDS = 15
# Starts of a server whose port another process took meanwhile (see `Server.start`).
PORT_TRIES = 3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (after a SIGCONT, should the test have paused it); SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Server:
    """`manage.py serve --port N *args` with `env` over `subprocess_env`.

    Keeps its port: `kill` it and `start` it again at the same address. Everything it prints
    goes to `log_path` (by default test-artifacts/serve-N.log): written afresh by the first
    start, appended to by the next, complete once it has stopped.
    """

    def __init__(self, *args: str, port: int | None = None, log_path: Path | None = None, **env):
        self.args = args
        self.env = env
        self.port = port or free_port()
        self._own_port = port is None
        self._own_log = log_path is None
        self.log_path = log_path or ARTIFACTS / f"serve-{self.port}.log"
        self.process: subprocess.Popen | None = None
        self._log_mode = "w"
        self._starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it and wait until it answers; a server that does not is stopped.

        A free port is free only when `free_port` looked: another process on this busy machine
        may take it before the server binds it. A first start then moves to another port."""
        for _ in range(PORT_TRIES - 1):
            try:
                return self._start()
            except AssertionError:
                taken = "Address already in use" in self._log()
                if not (taken and self._own_port and self._starts == 1):
                    raise
            self.port, self._log_mode, self._starts = free_port(), "w", 0
            if self._own_log:
                self.log_path = ARTIFACTS / f"serve-{self.port}.log"
        self._start()

    @staticmethod
    def _limit_keys() -> str:
        """The servers of a test share stream-limit keys of that test's own (tests/conftest.py),
        apart from its in-process streams': not another run's, nor an earlier test's."""
        return f"{settings.STREAM_LIMIT_KEY_PREFIX}:serve"

    def _log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def _start(self) -> None:
        self._starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open(self._log_mode) as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "serve", "--port", str(self.port), *self.args],
                cwd=BASE_DIR,
                env=subprocess_env(**{"STREAM_LIMIT_KEY_PREFIX": self._limit_keys(), **self.env}),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._log_mode = "a"
        try:
            wait_until(
                lambda: self.answers() or self.process.poll() is not None,
                START_SECONDS,
                "the server",
            )
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
        except BaseException:
            self.stop()
            raise

    def answers(self) -> bool:
        """Whether it answers HTTP: an anonymous stream request is refused with 401."""
        try:
            return httpx.get(f"{self.url}/api/v1/stream", timeout=PROBE_SECONDS).status_code == 401
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        """Gone at once, mid-stream: what a crash or a restart looks like to a client."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process:
            stop(self.process)


@contextlib.contextmanager
def running_server(*args: str, log_path: Path | None = None, **env: str) -> Iterator[Server]:
    """A started `Server`, stopped when the block ends."""
    server = Server(*args, log_path=log_path, **env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def serve(*args: str, log_path: Path | None = None, **env: str):
    """`manage.py serve` on a free port; yields (process, base URL) once it answers."""
    with running_server(*args, log_path=log_path, **env) as server:
        yield server.process, server.url


def session_cookie(user) -> dict[str, str]:
    """The cookies of a session in which `user` is logged in."""
    client = Client()
    client.force_login(user)
    name = settings.SESSION_COOKIE_NAME
    return {name: client.cookies[name].value}


# autobahn (daphne's WebSocket library) is the tests' real WebSocket client; its asyncio flavour
# cannot run in the test process, where daphne has already set txaio to Twisted, so it runs in
# a child process. It sends `requests`, prints each message as a line, and closes after `ends`
# `done` or `error` events (or fails after `seconds`).
WEBSOCKET_CLIENT = """
import asyncio, json, sys
from autobahn.asyncio.websocket import WebSocketClientFactory, WebSocketClientProtocol

url, origin, cookie, requests, ends, seconds = sys.argv[1:7]
left = int(ends)

class Client(WebSocketClientProtocol):
    def onOpen(self):
        for request in json.loads(requests):
            self.sendMessage(json.dumps(request).encode())

    def onMessage(self, payload, is_binary):
        print(payload.decode(), flush=True)
        global left
        if json.loads(payload)["event"] in ("done", "error"):
            left -= 1
            if left == 0:
                self.sendClose()

    def onClose(self, clean, code, reason):
        self.factory.closed.set_result(code)

async def main():
    factory = WebSocketClientFactory(url, headers={"Cookie": cookie, "Origin": origin})
    factory.protocol = Client
    factory.closed = asyncio.get_running_loop().create_future()
    host, port = url.split("/")[2].split(":")
    await asyncio.get_running_loop().create_connection(factory, host, int(port))
    await asyncio.wait_for(factory.closed, float(seconds))

asyncio.run(main())
"""


def websocket_client(
    server_url: str, cookies, requests: list[dict], ends: int, seconds: float
) -> list[str]:
    """The command line of a WebSocket client of `server_url`'s `/ws/v1/stream` (see above)."""
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    ws_url = "ws://" + server_url.removeprefix("http://") + "/ws/v1/stream"
    arguments = [ws_url, server_url, cookie, json.dumps(requests), str(ends), str(seconds)]
    return [sys.executable, "-c", WEBSOCKET_CLIENT, *arguments]
