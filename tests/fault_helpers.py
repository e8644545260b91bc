"""Private servers for fault tests: a Redis and a PostgreSQL of the test's own, on spare ports.

The shared PostgreSQL and Redis other tests (and other people) use are never stopped: a test
that restarts a server starts its own here, restarts that one, and removes it at the end.

    PrivateRedis()    redis-server --port N, no persistence: a restart forgets every key,
                      as a crashed Redis without AOF does (groups, channels, slots).
    PrivatePostgres() initdb into a temp dir as user postgres, pg_ctl start/restart -m fast.
"""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.runner_helpers import wait_until
from tests.server_helpers import free_port

# Starting a server on a machine shared by many test runs can take a while.
SERVER_START_SECONDS = 180
SERVER_STOP_SECONDS = 30


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class PrivateRedis:
    """A redis-server of the test's own; `restart` keeps its port and loses its data."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: self._ready(), SERVER_START_SECONDS, f"redis on port {self.port}")

    def _ready(self) -> bool:
        import redis

        if not _answers(self.port):
            return False
        client = redis.Redis(port=self.port, socket_timeout=2)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # as a crash: no goodbye to the clients
            self.process.wait(SERVER_STOP_SECONDS)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> "PrivateRedis":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _as_postgres(*argv: str) -> subprocess.CompletedProcess:
    """Run a PostgreSQL tool as user postgres (it refuses to run as root)."""
    if os.geteuid() == 0:
        argv = ("runuser", "-u", "postgres", "--", *argv)
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120)


def postgres_available() -> bool:
    """initdb and pg_ctl are installed, and (as root) a `postgres` user to run them as."""
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        return False
    if os.geteuid() != 0:
        return True
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return bool(shutil.which("runuser"))


class PrivatePostgres:
    """A PostgreSQL cluster in a temp dir, trust auth, user postgres, on a spare port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="tailgate-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        _as_postgres("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-N")

    def _ctl(self, *args: str) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories="
        _as_postgres(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", *args
        )

    def start(self) -> None:
        self._ctl("start")
        wait_until(lambda: _answers(self.port), SERVER_START_SECONDS, "private postgres")

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")
        wait_until(lambda: _answers(self.port), SERVER_START_SECONDS, "private postgres")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self._ctl("stop", "-m", "immediate")

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def process_tree_pids(marker: str) -> list[int]:
    """Pids of live processes whose environment holds `marker` (how a test finds the
    processes its actions started, wherever they were re-parented to)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --- a Tailgate installation on a private PostgreSQL ----------------------------------------
# Running manage.py (migrate, register_actions, run_action) on a shared machine.
MANAGE_SECONDS = 180


def manage(database_url: str, *args: str, **env: str) -> str:
    """Run `manage.py *args` against `database_url` (in-memory layer); its stdout."""
    from tests.runner_helpers import BASE_DIR

    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env={**clean, "DATABASE_URL": database_url, **env},
        capture_output=True,
        text=True,
        timeout=MANAGE_SECONDS,
    )
    if done.returncode != 0:
        raise AssertionError(f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


class Installation:
    """Tailgate's schema and actions in database `tailgate` of a PrivatePostgres."""

    def __init__(self, server: PrivatePostgres):
        self.server = server
        self.url = f"postgres://postgres@127.0.0.1:{server.port}/tailgate"

    def create(self) -> None:
        self.sql("CREATE DATABASE tailgate", database="postgres")
        manage(self.url, "migrate", "--noinput")
        manage(self.url, "register_actions")

    def sql(self, statement: str, params=(), database: str = "tailgate") -> list[tuple]:
        import psycopg

        url = f"postgres://postgres@127.0.0.1:{self.server.port}/{database}"
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            cursor = conn.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

    def run_action(self, ref: str, **parameters: str) -> str:
        """Schedule a run; its execution id."""
        out = manage(self.url, "run_action", ref, *[f"{k}={v}" for k, v in parameters.items()])
        return re.search(r"execution (\w{26})", out).group(1)

    def execution(self, execution_id: str) -> dict:
        (row,) = self.sql(
            "SELECT status, exit_code, error, last_seq FROM executions_execution WHERE id = %s",
            [execution_id],
        )
        return dict(zip(("status", "exit_code", "error", "last_seq"), row, strict=True))

    def output(self, execution_id: str) -> list[tuple[int, str]]:
        return [
            (seq, data)
            for seq, data in self.sql(
                "SELECT seq, data FROM executions_outputchunk WHERE execution_id = %s ORDER BY seq",
                [execution_id],
            )
        ]

    def finished(self, execution_id: str) -> dict | None:
        """The execution once it has finished (None meanwhile or while the server is away)."""
        import psycopg

        try:
            row = self.execution(execution_id)
        except psycopg.OperationalError:
            return None
        return row if row["status"] not in ("scheduled", "running", "canceling") else None

    def start_runner(self, log_path: Path, **env: str) -> subprocess.Popen:
        from tests.runner_helpers import BASE_DIR

        clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        with log_path.open("w") as log:
            return subprocess.Popen(
                [sys.executable, "manage.py", "actionrunner", "--concurrency", "4"],
                cwd=BASE_DIR,
                env={**clean, "DATABASE_URL": self.url, "RUNNER_POLL_SECONDS": "0.2", **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
