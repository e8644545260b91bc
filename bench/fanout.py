"""Fan-out benchmark: many live viewers per web process, idle and stalled clients, replay.

    .venv/bin/python bench/fanout.py [--clients 50,200,500,1000] [--seconds 20] [--rate 100]
        [--repeat 3] [--quick] [--only fanout,peers,stall,replay,idle,profile] [--source head|tree|COMMIT]

Cluster mode, over HTTP only (SSE, WebSocket, plain text) against real processes: one or two
`manage.py serve --no-runner` and one `manage.py actionrunner`, PostgreSQL database
`tailgate_bench_fanout` (created if missing) and Redis, under a channel-layer and stream-limit
key prefix of this run's own. By default the servers run from `git archive HEAD` unpacked in
a temporary directory (the state of main that is committed; `--source tree` runs the working
tree instead). The load comes from bench/fanout_client.py: raw non-blocking sockets, a few
client processes, one regex match per event.

1. fanout: an execution prints `--rate` lines/s for `--seconds` s, each line carrying its print
   time; N SSE clients follow `/output/stream?from=0` from before the first line. Per N: clients
   connected, HTTP errors, streams ended early, lines lost per client (vs the stored count),
   duplicates, out-of-order, latency (receive - print time) p50/p99/max, web RSS, PostgreSQL
   connections (pg_stat_activity, this database), Redis connections of the web processes
   (CLIENT LIST). Then 2 web processes x the largest N each.
2. peers: the same against django-eventstream and a naive Channels consumer (one group_send
   per line, a channel per client), in a temporary venv and project (bench/fanout_peers.py)
   with a database of their own whose CONNECTION LIMIT keeps the shared server usable.
3. idle: `--idle` SSE streams (`/api/v1/stream`) then as many WebSockets (`/ws/v1/stream`,
   subscribed to events) on one web process: RSS per connection, and every connection's
   longest silence against 2 x STREAM_KEEPALIVE_SECONDS (set to 5 s).
4. stall: 100 clients open `/output/stream?from=0` on a finished 1,000,000-line execution
   (rows COPYed in directly) and never read, while 50 clients follow a live execution: RSS
   growth per stalled client, healthy p99 against the same run without the stalled clients.
5. replay: the finished log to one client as SSE and as plain text (`/output`), lines/s,
   against a bare `SELECT` of the same rows through a psycopg server-side cursor, on a web
   process that has served one stream before (its first pays for imports and connections).

Every process it starts is killed at the end (also on Ctrl-C or an error); figures are medians
of `--repeat` runs; the targets of issue 10 are printed beside them. Results also go to
`--json` and plots to docs/img/fanout_latency.png and docs/img/fanout_memory.png.
"""

import argparse
import contextlib
import fcntl
import json
import os
import queue
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from array import array
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, database_url, ensure_database
from bench.fanout_peers import EVENTSTREAM_PATTERN, NAIVE_PATTERN, PeerProject
from bench.fanout_report import TARGET_CLIENTS, TARGET_P99_MS, plot, report

BENCH_DB = "tailgate_bench_fanout"
PEER_DB = "tailgate_bench_fanout_peer"
PEER_ROLE = "tailgate_bench_fanout_peer"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
CLIENT = Path(__file__).resolve().parent / "fanout_client.py"
USER = "bench-fanout"


# What Tailgate's per-execution SSE sends for a line: `id: SEQ` then the chunk as JSON whose
# "data" is the printed line, starting with its print time.
TAILGATE_PATTERN = r'id: (\d+)\ndata: [^\n]*?"data": ?"([0-9.]+) line'
TAILGATE_DONE = "event: done"

# The action: waits for GOFILE (every client is connected by then), then prints COUNT lines at
# RATE per second on an absolute schedule, each starting with the wall-clock time it was printed.
PRINTER = (
    "import os, sys, time\n"
    "count, rate, gofile = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]\n"
    "waited = time.time() + 600\n"
    "while not os.path.exists(gofile) and time.time() < waited:\n"
    "    time.sleep(0.01)\n"
    "start = time.time()\n"
    "for i in range(count):\n"
    "    delay = start + i / rate - time.time()\n"
    "    if delay > 0:\n"
    "        time.sleep(delay)\n"
    "    print(f'{time.time():.6f} line {i}', flush=True)\n"
)

# Stream-limit settings raised for the run: any STREAM_* setting (in project/settings.py
# or rbac/limits.py of the code measured) whose name says it caps connections or streams.
LIMIT_NAME = re.compile(r"""["']((?:SSE|STREAM)_[A-Z0-9_]+)["']""")
# Settings read through a helper that adds the prefix (`_stream_limit("int", "MAX_…", 10)`
# reads STREAM_MAX_…): without these a run measured 429s instead of streams.
PREFIXED_LIMIT_NAME = re.compile(r"""_stream_limit\(\s*["'][a-z]+["'],\s*["']([A-Z0-9_]+)["']""")
LIMIT_WORDS = re.compile(r"MAX_(CONNECTIONS|STREAMS)|(CONNECTIONS|STREAMS)_PER|_LIMIT$")
RAISED_LIMIT = "1000000"
# A peer's clients that miss lines never see an end: they are stopped this long after its
# publisher has sent the last one.
DRAIN_SECONDS = 15


def log(message: str = "") -> None:
    print(message, flush=True)


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:3]} exited with {process.returncode}")
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {seconds} s")


def percentile(ordered, fraction: float) -> float:
    if not len(ordered):
        return float("nan")
    return float(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))])


def med(values) -> float:
    values = [v for v in values if v is not None and v == v]
    return statistics.median(values) if values else float("nan")


# --- processes --------------------------------------------------------------------------------
class Processes:
    """Every process the benchmark starts, in its own session, so that its children go too."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen] = []

    def start(self, command: list[str], *, cwd, env, log_path=None, pipes=False):
        stderr = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else stderr,
            stderr=stderr,
            start_new_session=True,
        )
        if log_path:
            stderr.close()
        self.running.append(process)
        return process

    def stop(self, process: subprocess.Popen, grace: float = 10) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        # The process group may hold children that outlived their parent (actions).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        if process in self.running:
            self.running.remove(process)

    def stop_all(self) -> None:
        for process in list(reversed(self.running)):
            try:
                self.stop(process, grace=5)
            except Exception as exc:  # keep stopping the others
                log(f"  could not stop {process.pid}: {exc}")


# --- measurements from /proc, PostgreSQL and Redis ---------------------------------------------
def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def runqueue_seconds(pid: int) -> float:
    """Time the process's threads spent runnable but waiting for a CPU (schedstat), in s: on
    a shared machine, what other processes' load took from this one."""
    total = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            path = f"/proc/{pid}/task/{task}/schedstat"
            with contextlib.suppress(OSError, ValueError, IndexError), open(path) as fh:
                total += int(fh.read().split()[1])
    return total / 1e9


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def local_ports_to(pids: list[int], remote_port: int) -> set[int]:
    """Local ports of the ESTABLISHED TCP connections `pids` hold to `remote_port`."""
    inodes = set().union(*(socket_inodes(pid) for pid in pids)) if pids else set()
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            next(fh)
            for line in fh:
                parts = line.split()
                if parts[3] != "01" or int(parts[2].rsplit(":", 1)[1], 16) != remote_port:
                    continue
                if int(parts[9]) in inodes:
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


class Sampler(threading.Thread):
    """Samples, every `interval` s until stopped: RSS and CPU of the web processes, the
    PostgreSQL connections to `database`, and the Redis connections the web processes hold
    (CLIENT LIST entries whose address is one of their sockets)."""

    def __init__(self, pids, database, admin_url, redis_url, redis_port, interval=1.0):
        super().__init__(daemon=True)
        self.pids, self.database, self.interval = list(pids), database, interval
        self.admin_url, self.redis_url, self.redis_port = admin_url, redis_url, redis_port
        self.samples: list[dict] = []
        self.halt = threading.Event()
        self.cpu0 = {pid: cpu_seconds(pid) for pid in self.pids}
        self.t0 = time.monotonic()

    def run(self) -> None:
        import psycopg
        import redis

        with psycopg.connect(self.admin_url, autocommit=True) as pg:
            client = redis.Redis.from_url(self.redis_url)
            try:
                while not self.halt.is_set():
                    self.samples.append(self.sample(pg, client))
                    self.halt.wait(self.interval)
            finally:
                client.close()

    def sample(self, pg, client) -> dict:
        rss = sum(rss_kb(pid) for pid in self.pids)
        try:
            pg_conns = pg.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [self.database]
            ).fetchone()[0]
        except Exception:
            pg_conns = None
        try:
            ports = local_ports_to(self.pids, self.redis_port)
            redis_conns = 0
            for entry in client.client_list():
                if int(entry["addr"].rsplit(":", 1)[1]) in ports:
                    redis_conns += 1
        except Exception:
            redis_conns = None
        return {
            "t": time.monotonic() - self.t0,
            "rss_kb": rss,
            "pg": pg_conns,
            "redis": redis_conns,
        }

    def mark(self) -> tuple[float, float, float]:
        """(time, CPU seconds, seconds runnable but waiting for a CPU) of the web processes
        now, to measure a window's shares."""
        return (
            time.monotonic(),
            sum(cpu_seconds(pid) for pid in self.pids),
            sum(runqueue_seconds(pid) for pid in self.pids),
        )

    def finish(self) -> dict:
        self.halt.set()
        self.join(timeout=30)
        elapsed = time.monotonic() - self.t0
        cpu = sum(cpu_seconds(pid) - self.cpu0.get(pid, 0.0) for pid in self.pids)

        def peak(key):
            values = [s[key] for s in self.samples if s[key] is not None]
            return max(values) if values else None

        return {
            "rss_peak_mb": (peak("rss_kb") or 0) / 1024,
            "pg_peak": peak("pg"),
            "redis_peak": peak("redis"),
            "web_cpu_pct": 100 * cpu / elapsed if elapsed else None,
        }


# --- load clients -----------------------------------------------------------------------------
class Worker:
    """One bench/fanout_client.py process and the JSON lines it prints."""

    def __init__(self, procs: Processes, spec: dict, workdir: Path, index: int):
        self.path = workdir / f"client-{index}-{os.getpid()}-{time.monotonic_ns()}.json"
        self.path.write_text(json.dumps(spec))
        self.process = procs.start(
            [sys.executable, str(CLIENT), str(self.path)],
            cwd=ROOT,
            env=os.environ.copy(),
            log_path=workdir / "clients.log",
            pipes=True,
        )
        self.lines: queue.Queue = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                self.lines.put(json.loads(line))
        self.lines.put(None)

    def wait_for(self, event: str, seconds: float) -> dict | None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                message = self.lines.get(timeout=min(1.0, max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                continue
            if message is None:
                return None
            if message.get("event") == event:
                return message
        return None

    def send(self, command: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.process.stdin.write(f"{command}\n".encode())
            self.process.stdin.flush()


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# --- Tailgate ---------------------------------------------------------------------------------
class Tailgate:
    def __init__(self, args, procs: Processes, workdir: Path):
        self.args, self.procs, self.workdir = args, procs, workdir
        self.redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
        self.db_url = database_url(BENCH_DB)
        self.admin_url = database_url("postgres")
        revision = "HEAD" if args.source in ("head", "tree") else args.source
        if args.source == "tree":
            self.src = ROOT
        else:
            self.src = workdir / "src"
            self.src.mkdir()
            archive = subprocess.run(
                ["git", "archive", revision], cwd=ROOT, capture_output=True, check=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(self.src)], input=archive, check=True)
        self.commit = subprocess.run(
            ["git", "rev-parse", "--short", revision], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        tag = f"bench-fanout-{os.getpid()}"
        self.env = {
            **os.environ,
            "DATABASE_URL": self.db_url,
            "REDIS_URL": self.redis_url,
            "CHANNEL_LAYER_PREFIX": tag,
            "STREAM_LIMIT_KEY_PREFIX": f"{tag}:streams",
            "TAILGATE_DATA_DIR": str(workdir / "var"),
            "LOG_LEVEL": "WARNING",
            "RUNNER_POLL_SECONDS": "0.2",
            "PYTHONUNBUFFERED": "1",
        }
        self.raised = self.limit_settings()
        for name in self.raised:
            self.env[name] = RAISED_LIMIT
        for item in args.env:
            name, _, value = item.partition("=")
            self.env[name] = value
        self.key = ""
        self.webs: list[subprocess.Popen] = []
        self.runner: subprocess.Popen | None = None

    def limit_settings(self) -> list[str]:
        names = set()
        for rel in ("project/settings.py", "rbac/limits.py"):
            path = self.src / rel
            if path.exists():
                text = path.read_text()
                names.update(LIMIT_NAME.findall(text))
                names.update(f"STREAM_{name}" for name in PREFIXED_LIMIT_NAME.findall(text))
        return sorted(n for n in names if LIMIT_WORDS.search(n) and "PREFIX" not in n)

    def manage(self, *argv: str, check=True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *argv],
            cwd=self.src,
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=600,
        )

    def setup(self) -> None:
        ensure_database(self.db_url)
        self.manage("migrate", "--noinput")
        self.manage("register_actions")
        created = self.manage(
            "createsuperuser", "--noinput", "--username", USER, "--email", "b@example.com",
            check=False,
        )  # fmt: skip
        if created.returncode and "already" not in created.stderr:
            raise RuntimeError(created.stderr)
        self.key = self.manage("create_api_key", USER, "--name", "fanout").stdout.strip()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def start_web(self, count: int = 1, extra_env: dict | None = None) -> list[int]:
        ports = []
        env = {**self.env, **(extra_env or {})}
        for _ in range(count):
            port = free_port()
            web = self.procs.start(
                [sys.executable, "manage.py", "serve", "--no-runner", "--port", str(port)],
                cwd=self.src,
                env=env,
                log_path=self.workdir / "web.log",
            )
            self.webs.append(web)
            wait_for_port(port, web)
            ports.append(port)
        return ports

    def stop_webs(self) -> None:
        for web in self.webs:
            self.procs.stop(web)
        self.webs = []

    def start_runner(self) -> None:
        if self.runner is None or self.runner.poll() is not None:
            self.runner = self.procs.start(
                [sys.executable, "manage.py", "actionrunner", "--concurrency", "4"],
                cwd=self.src,
                env=self.env,
                log_path=self.workdir / "runner.log",
            )

    def api(self, method: str, port: int, path: str, body=None) -> dict:
        import httpx

        response = httpx.request(
            method, f"http://127.0.0.1:{port}{path}", json=body, headers=self.headers, timeout=60
        )
        response.raise_for_status()
        return response.json()

    def create(self, port: int, cmd: str) -> str:
        body = {"action": "core.local", "parameters": {"cmd": cmd, "timeout": 900}}
        return self.api("POST", port, "/api/v1/executions/", body)["id"]

    def create_printer(self, port: int, count: int, rate: float, gofile: Path) -> str:
        argv = [sys.executable, "-c", PRINTER, str(count), str(rate), str(gofile)]
        return self.create(port, " ".join(shlex.quote(a) for a in argv))

    def execution(self, port: int, execution_id: str) -> dict:
        return self.api("GET", port, f"/api/v1/executions/{execution_id}/")

    def wait_finished(self, port: int, execution_id: str, seconds: float) -> dict:
        deadline = time.monotonic() + seconds
        while True:
            state = self.execution(port, execution_id)
            if state.get("finished_at") or time.monotonic() > deadline:
                return state
            time.sleep(0.5)

    def seed_log(self, port: int, lines: int) -> str:
        """A finished execution with `lines` output rows, COPYed in directly."""
        import psycopg

        execution_id = self.create(port, "true")
        state = self.wait_finished(port, execution_id, 120)
        if not state.get("finished_at"):
            raise RuntimeError(f"seed execution {execution_id} did not finish")
        stamp = datetime.now(UTC).isoformat()
        with psycopg.connect(self.db_url) as conn:
            with conn.cursor() as cur:
                cur.execute(
                    "DELETE FROM executions_outputchunk WHERE execution_id = %s", [execution_id]
                )
                step = 100_000
                for first in range(1, lines + 1, step):
                    last = min(lines, first + step - 1)
                    payload = "".join(
                        f"{execution_id}\t{seq}\tstdout\t"
                        f"stored line {seq:07d} of a finished run of {lines} lines, for replay\\n"
                        f"\t{stamp}\n"
                        for seq in range(first, last + 1)
                    )
                    with cur.copy(
                        "COPY executions_outputchunk (execution_id, seq, output_type, data, "
                        "timestamp) FROM STDIN"
                    ) as copy:
                        copy.write(payload)
                cur.execute(
                    "UPDATE executions_execution SET last_seq = %s WHERE id = %s",
                    [lines, execution_id],
                )
            conn.commit()
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            conn.execute("ANALYZE executions_outputchunk")
        return execution_id


# --- one live fan-out run (Tailgate or a peer) ---------------------------------------------
def follow_run(
    ctx,
    *,
    label: str,
    n: int,
    ports: list[int],
    web_pids: list[int],
    path: str,
    pattern: str,
    done_marker: str | None,
    expected: int,
    headers: dict,
    database: str,
    go,
    finish,
    on_live=None,
    ended=None,
) -> dict:
    """N clients on `path` across `ports`; `go()` starts the publisher, `finish()` returns the
    stored (or sent) count once it is over."""
    workdir: Path = ctx.workdir
    per_proc = max(1, ctx.args.clients_per_process)
    nprocs = max(1, -(-n // per_proc))
    shares = split(n, nprocs)
    workers = []
    deadline = ctx.args.seconds + 180
    for i, share in enumerate(shares):
        targets = [
            {"port": port, "path": path, "count": c}
            for port, c in zip(ports, split(share, len(ports)), strict=True)
            if c
        ]
        spec = {
            "mode": "follow",
            "targets": targets,
            "headers": headers,
            "pattern": pattern,
            "done_marker": done_marker,
            "expected": 0 if done_marker else expected,
            "latency_file": str(workdir / f"lat-{i}.bin"),
            "deadline": deadline,
            "connect_concurrency": 64,
            "dump_file": ctx.args.dump
            and i == 0
            and str(workdir / f"dump-{label.replace('/', '-')}-{n}.txt"),
        }
        workers.append(Worker(ctx.procs, spec, workdir, i))
    sampler = Sampler(web_pids, database, ctx.admin_url, ctx.redis_url, ctx.redis_port)
    sampler.start()
    ready = [w.wait_for("ready", 300) for w in workers]
    connect_errors: dict[str, int] = {}
    for r in ready:
        for k, v in ((r or {}).get("errors") or {}).items():
            connect_errors[k] = connect_errors.get(k, 0) + v
    time.sleep(1.0)  # let the last streams subscribe
    live_from = sampler.mark()
    go()
    if on_live is not None:
        threading.Thread(target=on_live, daemon=True).start()
    # The run lasts `seconds`; give the streams time to drain, then stop whoever is left.
    results = []
    stop_at = time.monotonic() + ctx.args.seconds + ctx.args.grace
    for w in workers:
        result = None
        while result is None and time.monotonic() < stop_at:
            result = w.wait_for("result", min(1.0, max(0.1, stop_at - time.monotonic())))
            if result is None and ended is not None and ended():
                # The publisher is done: what has not arrived DRAIN_SECONDS later never will.
                stop_at = min(stop_at, time.monotonic() + DRAIN_SECONDS)
        if result is None:
            w.send("stop")
            result = w.wait_for("result", 30)
        results.append(result or {})
    live_to = sampler.mark()
    stored = finish()
    usage = sampler.finish()
    for w in workers:
        ctx.procs.stop(w.process)
    counts = [c for r in results for c in r.get("counts", [])]
    errors: dict[str, int] = {}
    for r in results:
        for k, v in (r.get("errors") or {}).items():
            errors[k] = errors.get(k, 0) + v
    latencies = array("d")
    for i in range(len(workers)):
        f = workdir / f"lat-{i}.bin"
        if f.exists():
            data = f.read_bytes()
            latencies.frombytes(data[: len(data) // 8 * 8])
            f.unlink()
    ordered = sorted(latencies)
    ok = sum(r.get("ok", 0) for r in results)
    http_errors = sum(v for k, v in errors.items() if k.startswith("HTTP"))
    ended_early = sum(v for k, v in errors.items() if not k.startswith("HTTP"))
    lost = [max(0, stored - c) for c in counts[:ok]] if stored else []
    row = {
        "target": label,
        "clients": n,
        "web_processes": len(ports),
        "connected": ok,
        "http_errors": http_errors,
        "ended_early": ended_early,
        "errors": errors,
        "stored": stored,
        "lost_lines": sum(max(0, stored - c) for c in counts) if stored else None,
        "clients_losing": sum(1 for x in lost if x),
        "duplicates": sum(r.get("dups", 0) for r in results),
        "out_of_order": sum(r.get("ooo", 0) for r in results),
        "p50_ms": percentile(ordered, 0.50),
        "p99_ms": percentile(ordered, 0.99),
        "max_ms": ordered[-1] if ordered else float("nan"),
        "samples": len(ordered),
        "client_cpu_s": sum(r.get("cpu_seconds", 0) for r in results),
        "connect_errors": connect_errors,
        "connect_seconds": max((r or {}).get("seconds", 0) for r in ready),
        "retried_429": sum(r.get("retried_429", 0) for r in results),
        **usage,
    }
    # The web processes' CPU while the lines flow (go → every client done), per process.
    if live_to[0] > live_from[0]:
        span = (live_to[0] - live_from[0]) * max(1, len(ports))
        row["web_cpu_pct"] = 100 * (live_to[1] - live_from[1]) / span
        row["web_cpu_wait_pct"] = 100 * (live_to[2] - live_from[2]) / span
    log(
        f"  {label:<12} N={n:<5} webx{len(ports)} connected {ok}/{n}  http-err {http_errors}  "
        f"ended-early {ended_early}  lost {row['lost_lines']} ({row['clients_losing']} clients)  "
        f"dup {row['duplicates']}  ooo {row['out_of_order']}  p50 {row['p50_ms']:.1f} ms  "
        f"p99 {row['p99_ms']:.1f} ms  max {row['max_ms']:.1f} ms  RSS {row['rss_peak_mb']:.0f} MB  "
        f"PG {row['pg_peak']}  Redis {row['redis_peak']}  web CPU {row['web_cpu_pct'] or 0:.0f} % "
        f"(+{row.get('web_cpu_wait_pct') or 0:.0f} % waiting for a CPU)"
    )
    if errors or row["retried_429"]:
        log(f"      errors: {errors}; 429 answers retried after Retry-After: {row['retried_429']}")
    return row


class Context:
    def __init__(self, args, procs, workdir):
        self.args, self.procs, self.workdir = args, procs, workdir
        self.redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
        self.redis_port = urlsplit(self.redis_url).port or 6379
        self.admin_url = database_url("postgres")


def follow_printer(ctx, tg: Tailgate, label: str, n: int, ports, web_pids, on_live=None) -> dict:
    """N SSE clients follow a new printer execution on Tailgate's web processes (`follow_run`)."""
    args = ctx.args
    count = int(args.seconds * args.rate)
    gofile = ctx.workdir / f"go-{time.monotonic_ns()}"
    execution_id = tg.create_printer(ports[0], count, args.rate, gofile)

    def finish() -> int:
        return int(tg.wait_finished(ports[0], execution_id, 60).get("last_seq") or 0)

    return follow_run(
        ctx,
        label=label,
        n=n,
        ports=ports,
        web_pids=web_pids,
        path=f"/api/v1/executions/{execution_id}/output/stream?from=0",
        pattern=TAILGATE_PATTERN,
        done_marker=TAILGATE_DONE,
        expected=count,
        headers=tg.headers,
        database=BENCH_DB,
        go=gofile.touch,
        finish=finish,
        on_live=on_live,
    )


def tailgate_fanout(ctx, tg: Tailgate, n: int, webs: int, extra_env=None, on_live=None) -> dict:
    ports = tg.start_web(webs, extra_env)
    try:
        web_pids = [w.pid for w in tg.webs]
        return follow_printer(
            ctx, tg, "tailgate", n, ports, web_pids, on_live=on_live and (lambda: on_live(web_pids))
        )
    finally:
        tg.stop_webs()
        errors = server_errors(ctx.workdir / "web.log")
        if errors:
            log(f"      web log: {errors}")


# --- peers ------------------------------------------------------------------------------------
def peer_env(ctx) -> dict[str, str]:
    db = urlsplit(database_url(PEER_DB))
    redis_url = urlsplit(ctx.redis_url)
    tag = f"benchfanout{os.getpid()}"
    return {
        "PEER_DB_NAME": PEER_DB,
        "PEER_DB_USER": PEER_ROLE,
        "PEER_DB_HOST": db.hostname or "127.0.0.1",
        "PEER_DB_PORT": str(db.port or 5432),
        "REDIS_URL": ctx.redis_url,
        "PEER_REDIS_HOST": redis_url.hostname or "127.0.0.1",
        "PEER_REDIS_PORT": str(redis_url.port or 6379),
        "PEER_REDIS_DB": (redis_url.path or "/0").lstrip("/") or "0",
        "PEER_PREFIX": f"{tag}:",
        "PEER_GROUP": f"{tag}-naive",
        "PEER_CHANNEL": f"{tag}",
        "PYTHONUNBUFFERED": "1",
    }


def prepare_peer_database(ctx) -> int:
    """A fresh database for the peers, owned by a role of their own whose CONNECTION LIMIT
    keeps a client-per-connection peer from taking the shared server's last connections
    (limits do not bind superusers, so the peers must not connect as one); returns the cap."""
    import psycopg

    with psycopg.connect(ctx.admin_url, autocommit=True) as conn:
        total = int(conn.execute("SHOW max_connections").fetchone()[0])
        used = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename IS DISTINCT FROM %s", [PEER_ROLE]
        ).fetchone()[0]
        cap = max(10, min(ctx.args.peer_db_limit, total - used - 15))
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [PEER_ROLE]).fetchone():
            conn.execute(f'CREATE ROLE "{PEER_ROLE}" LOGIN NOSUPERUSER')
        conn.execute(f'ALTER ROLE "{PEER_ROLE}" CONNECTION LIMIT {cap}')
        conn.execute(f'DROP DATABASE IF EXISTS "{PEER_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{PEER_DB}" OWNER "{PEER_ROLE}" CONNECTION LIMIT {cap}')
    return cap


def peer_fanout(ctx, peer: PeerProject, kind: str, n: int) -> dict:
    args = ctx.args
    count = int(args.seconds * args.rate)
    env = {**os.environ, **peer.env}
    port = free_port()
    web = ctx.procs.start(
        peer.server_command(port), cwd=peer.root, env=env, log_path=ctx.workdir / f"{kind}.log"
    )
    publisher = None
    try:
        wait_for_port(port, web)
        gofile = ctx.workdir / f"go-{time.monotonic_ns()}"
        publisher = ctx.procs.start(
            peer.publisher_command(kind, count, args.rate, str(gofile)),
            cwd=peer.root,
            env=env,
            log_path=ctx.workdir / f"{kind}-publisher.log",
            pipes=True,
        )

        def finish() -> int:
            try:
                out, _ = publisher.communicate(timeout=120)
                return int(json.loads(out.decode().strip().splitlines()[-1])["sent"])
            except Exception:
                return count

        channel = peer.env["PEER_CHANNEL"]
        path = f"/events/{channel}/" if kind == "eventstream" else "/naive/"
        row = follow_run(
            ctx,
            ended=lambda: publisher.poll() is not None,
            label=kind,
            n=n,
            ports=[port],
            web_pids=[web.pid],
            path=path,
            pattern=EVENTSTREAM_PATTERN if kind == "eventstream" else NAIVE_PATTERN,
            done_marker=None,
            expected=count,
            headers={},
            database=PEER_DB,
            go=gofile.touch,
            finish=finish,
        )
        row["server_errors"] = server_errors(ctx.workdir / f"{kind}.log")
        row["publisher_errors"] = server_errors(ctx.workdir / f"{kind}-publisher.log")
        for what in ("server", "publisher"):
            if row[f"{what}_errors"]:
                log(f"      {what} log: {row[f'{what}_errors']}")
        return row
    finally:
        if publisher is not None:
            ctx.procs.stop(publisher)
        ctx.procs.stop(web)


def server_errors(path: Path) -> dict[str, int]:
    """The distinct exception lines of a server log (and how often each), then empties it."""
    found: dict[str, int] = {}
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            if re.match(r"^[\w.]+(Error|Exception|Exhausted)\b.*:", line) or "FATAL" in line:
                key = line.strip()[:160]
                found[key] = found.get(key, 0) + 1
        path.write_text("")
    return dict(sorted(found.items(), key=lambda kv: -kv[1])[:3])


# --- idle connections -------------------------------------------------------------------------
def idle_run(ctx, tg: Tailgate, kind: str, n: int) -> dict:
    interval = ctx.args.keepalive
    ports = tg.start_web(1, {"STREAM_KEEPALIVE_SECONDS": str(interval)})
    pid = tg.webs[0].pid
    try:
        if kind == "sse":
            spec_base = {"protocol": "sse", "path": "/api/v1/stream"}
        else:
            spec_base = {
                "protocol": "ws",
                "path": "/ws/v1/stream",
                "ws_subscribe": json.dumps({"action": "subscribe_events"}),
            }

        def spec(count: int, deadline: float) -> dict:
            return {
                "mode": "idle",
                "protocol": spec_base["protocol"],
                "targets": [{"port": ports[0], "path": spec_base["path"], "count": count}],
                "headers": tg.headers,
                "ws_subscribe": spec_base.get("ws_subscribe"),
                "deadline": deadline,
                "connect_concurrency": 128,
                "connect_timeout": 60,
            }

        # Warm the process up (imports, pools) before the baseline.
        warm = Worker(ctx.procs, spec(20, 60), ctx.workdir, 90)
        warm.wait_for("ready", 60)
        time.sleep(2)
        warm.send("stop")
        warm.wait_for("result", 30)
        ctx.procs.stop(warm.process)
        time.sleep(3)
        base = med([rss_kb(pid) for _ in range(5) if not time.sleep(0.2)])
        sampler = Sampler([pid], BENCH_DB, ctx.admin_url, ctx.redis_url, ctx.redis_port, 2.0)
        sampler.start()
        started = time.monotonic()
        worker = Worker(ctx.procs, spec(n, 900), ctx.workdir, 91)
        ready = worker.wait_for("ready", 600) or {}
        connect_seconds = time.monotonic() - started
        time.sleep(interval)
        worker.send("observe")
        hold = max(3 * interval, ctx.args.idle_hold)
        time.sleep(hold / 2)
        during = med([rss_kb(pid) for _ in range(5) if not time.sleep(0.2)])
        time.sleep(hold / 2)
        worker.send("stop")
        result = worker.wait_for("result", 120) or {}
        usage = sampler.finish()
        ctx.procs.stop(worker.process)
        opened = int(result.get("open") or 0)
        gaps = sorted(result.get("gaps") or [])
        late = sum(1 for g in gaps if g > 2 * interval)
        row = {
            "kind": kind,
            "requested": n,
            "open": opened,
            "connect_errors": ready.get("errors"),
            "retried_429": ready.get("retried_429"),
            "connect_seconds": connect_seconds,
            "rss_base_mb": base / 1024,
            "rss_mb": during / 1024,
            "kb_per_conn": (during - base) / opened if opened else float("nan"),
            "keepalive_s": interval,
            "max_silence_s": gaps[-1] if gaps else None,
            "late": late,
            "silent": result.get("silent"),
            "ws_frames": result.get("ws_frames") if kind == "ws" else None,
            **usage,
        }
        log(
            f"  idle {kind:<3} {opened}/{n} open in {connect_seconds:.0f} s  "
            f"RSS {base / 1024:.0f} → {during / 1024:.0f} MB = {row['kb_per_conn']:.1f} KB/conn  "
            f"longest silence {row['max_silence_s'] or 0:.1f} s (limit {2 * interval:g} s), "
            f"{late} late, {row['silent']} silent  PG {usage['pg_peak']}  Redis {usage['redis_peak']}"
        )
        if ready.get("errors") or ready.get("retried_429"):
            log(
                f"      connect errors: {ready.get('errors')}; 429 retried: {ready.get('retried_429')}"
            )
        if kind == "ws":
            log(f"      frames received while idle: {row['ws_frames']}")
        return row
    finally:
        tg.stop_webs()


# --- stalled clients --------------------------------------------------------------------------
def stall_paths(big_id: str, args) -> dict[str, str]:
    """What a stalled client asks for: SSE from the start (replaying the most the API allows,
    `--sse-replay-limit`), and the whole log as plain text."""
    return {
        "sse": f"/api/v1/executions/{big_id}/output/stream?from=0&replay_limit={args.sse_replay_limit}",
        "text": f"/api/v1/executions/{big_id}/output",
    }


def stall_run(ctx, tg: Tailgate, big_id: str) -> dict:
    """Per repetition and per kind (SSE, plain text): 50 healthy clients alone, then the same
    with 100 stalled clients open on the big log; RSS growth while they are open."""
    args = ctx.args
    ports = tg.start_web(1)
    pid = tg.webs[0].pid
    stall = None
    try:

        def healthy(tag: str) -> dict:
            return follow_printer(ctx, tg, f"healthy/{tag}", args.healthy, ports, [pid])

        runs: dict[str, list[dict]] = {"sse": [], "text": []}
        for _ in range(args.repeat):
            for kind, path in stall_paths(big_id, args).items():
                alone = healthy("alone")
                time.sleep(2)
                base = med([rss_kb(pid) for _ in range(5) if not time.sleep(0.2)])
                spec = {
                    "mode": "stall",
                    "protocol": "sse" if kind == "sse" else "text",
                    "targets": [{"port": ports[0], "path": path, "count": args.stalled}],
                    "headers": tg.headers,
                    "rcvbuf": 65536,
                    "deadline": 900,
                }
                stall = Worker(ctx.procs, spec, ctx.workdir, 92)
                ready = stall.wait_for("ready", 120) or {}
                peak = [base]
                watching = threading.Event()

                def watch(peak=peak, watching=watching) -> None:
                    while not watching.is_set():
                        peak.append(rss_kb(pid))
                        watching.wait(0.5)

                watcher = threading.Thread(target=watch, daemon=True)
                watcher.start()
                time.sleep(args.stall_settle)
                settled = rss_kb(pid)
                with_stalled = healthy(f"with-stalled-{kind}")
                watching.set()
                watcher.join()
                stall.send("stop")
                stall_result = stall.wait_for("result", 60) or {}
                ctx.procs.stop(stall.process)
                stall = None
                time.sleep(3)
                after = rss_kb(pid)
                row = {
                    "kind": kind,
                    "stalled": args.stalled,
                    "stalled_open": stall_result.get("open"),
                    "connect_errors": ready.get("errors"),
                    "rss_base_mb": base / 1024,
                    "rss_settled_mb": settled / 1024,
                    "rss_peak_mb": max(peak) / 1024,
                    "rss_after_close_mb": after / 1024,
                    "mib_per_stalled": (max(peak) - base) / 1024 / args.stalled,
                    "healthy_alone_p99_ms": alone["p99_ms"],
                    "healthy_with_p99_ms": with_stalled["p99_ms"],
                    "healthy_alone_lost": alone["lost_lines"],
                    "healthy_with_lost": with_stalled["lost_lines"],
                    "healthy_with_errors": with_stalled["http_errors"]
                    + with_stalled["ended_early"],
                }
                runs[kind].append(row)
                log(
                    f"  stalled x{args.stalled} ({kind}): RSS {row['rss_base_mb']:.0f} → peak "
                    f"{row['rss_peak_mb']:.0f} MB = {row['mib_per_stalled']:.2f} MiB per stalled "
                    f"client; {row['rss_after_close_mb']:.0f} MB after they close; healthy p99 "
                    f"{alone['p99_ms']:.1f} alone, {with_stalled['p99_ms']:.1f} ms with them"
                )
        out = {}
        for kind, rows in runs.items():
            summary = median_rows(rows)
            alone_p99, with_p99 = summary["healthy_alone_p99_ms"], summary["healthy_with_p99_ms"]
            summary["p99_ratio"] = with_p99 / alone_p99 if alone_p99 else None
            summary["path"] = stall_paths("{id}", args)[kind]
            out[kind] = summary
        return out
    finally:
        if stall is not None:
            ctx.procs.stop(stall.process)
        tg.stop_webs()


# --- replay -----------------------------------------------------------------------------------
def replay_once(ctx, tg: Tailgate, port: int, path: str, protocol: str) -> tuple[float, int, float]:
    """lines/s from the request, lines received, lines/s from the response's headers."""
    spec = {
        "mode": "replay",
        "protocol": protocol,
        "targets": [{"port": port, "path": path, "count": 1}],
        "headers": tg.headers,
        "done_marker": TAILGATE_DONE if protocol == "sse" else None,
        "deadline": 600,
    }
    worker = Worker(ctx.procs, spec, ctx.workdir, 93)
    result = worker.wait_for("result", 620) or {}
    ctx.procs.stop(worker.process)
    seconds = result.get("seconds") or float("nan")
    # The part before the headers (authentication, access, subscription, state) is not replay.
    streaming = seconds - result.get("headers_seconds", 0.0)
    count = result.get("count", 0)
    return count / seconds, count, count / streaming


def bare_select(tg: Tailgate, execution_id: str) -> tuple[float, int]:
    import psycopg

    started = time.perf_counter()
    rows = 0
    with psycopg.connect(tg.db_url) as conn, conn.cursor(name="fanout_replay") as cur:
        cur.itersize = 10_000
        cur.execute(
            "SELECT seq, output_type, data, timestamp FROM executions_outputchunk "
            "WHERE execution_id = %s ORDER BY seq",
            [execution_id],
        )
        for _ in cur:
            rows += 1
    return rows / (time.perf_counter() - started), rows


def replay_run(ctx, tg: Tailgate, big_id: str, lines: int) -> dict:
    ports = tg.start_web(1)
    try:
        # One stream of the log's last line first: a fresh process's first stream pays for
        # its imports and its first database and Redis connections (~0.1 s, a fifth of a
        # 50,000-line replay), once per process, not per replay. Its page is not one the
        # replays read.
        replay_once(ctx, tg, ports[0], f"/api/v1/executions/{big_id}/output/stream?from=-1", "sse")
        sse, text, select, sse_streaming, text_streaming = [], [], [], [], []
        counts = {}
        for _ in range(ctx.args.repeat):
            rate, counts["sse"], streaming = replay_once(
                ctx, tg, ports[0], stall_paths(big_id, ctx.args)["sse"], "sse"
            )
            sse.append(rate)
            sse_streaming.append(streaming)
            rate, counts["text"], streaming = replay_once(
                ctx, tg, ports[0], f"/api/v1/executions/{big_id}/output", "text"
            )
            text.append(rate)
            text_streaming.append(streaming)
            rate, counts["select"] = bare_select(tg, big_id)
            select.append(rate)
        row = {
            "lines": lines,
            "sse_lps": med(sse),
            "text_lps": med(text),
            "select_lps": med(select),
            "sse_streaming_lps": med(sse_streaming),
            "text_streaming_lps": med(text_streaming),
            "sse_ratio": med([a / b for a, b in zip(sse, select, strict=True)]),
            "text_ratio": med([a / b for a, b in zip(text, select, strict=True)]),
            "counts": counts,
            "runs": {"sse": sse, "text": text, "select": select},
        }
        row["sse_lines"] = min(lines, ctx.args.sse_replay_limit)
        log(
            f"  replay of {lines:,} lines: SSE ({row['sse_lines']:,} lines, the API's most) {row['sse_lps']:,.0f} lines/s, text "
            f"{row['text_lps']:,.0f} lines/s, bare SELECT {row['select_lps']:,.0f} rows/s  "
            f"(received {counts}); same-run ratio to the SELECT: SSE x{row['sse_ratio']:.2f}, "
            f"text x{row['text_ratio']:.2f}; from the headers on: SSE "
            f"{row['sse_streaming_lps']:,.0f}, text {row['text_streaming_lps']:,.0f} lines/s"
        )
        return row
    finally:
        tg.stop_webs()


# --- profile ----------------------------------------------------------------------------------
def profile_web(ctx, pid: int, seconds: int, out: Path) -> dict:
    """py-spy record --format raw of `pid` for `seconds`: the top 15 functions by own time, and
    the top 10 Tailgate functions (streaming/, rbac/, executions/) that those samples run under
    (the deepest project frame of each sample), so that a wait in psycopg names its caller."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    subprocess.run(
        [py_spy, "record", "--format", "raw", "-d", str(seconds), "-p", str(pid), "-o", str(out)],
        capture_output=True,
        timeout=seconds + 60,
    )
    return summarize_profile(out)


def summarize_profile(out: Path) -> dict:
    """Samples whose leaf is a wait (a pool thread's idle `get`, a selector, psycopg waiting
    for the server) are counted apart; the rest, the samples that compute, are ranked by
    function (own time) and by the Tailgate function they run under, in % of those samples."""
    own: dict[str, int] = {}
    under: dict[str, int] = {}
    total = waiting = 0
    if out.exists():
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames, n = stack.split(";"), int(count)
            total += n
            if IDLE_FRAMES.search(frames[-1]):
                waiting += n
                continue
            own[frames[-1]] = own.get(frames[-1], 0) + n
            mine = [f for f in frames if PROJECT_FRAME.search(f)]
            key = mine[-1] if mine else "(no Tailgate frame: daphne, Twisted, asyncio, channels)"
            under[key] = under.get(key, 0) + n
    active = max(1, total - waiting)

    def top(counts: dict[str, int], size: int) -> list:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:size]
        return [(name, n, 100 * n / active) for name, n in ranked]

    return {
        "top": top(own, 15),
        "project": top(under, 10),
        "samples": total,
        "waiting_pct": 100 * waiting / total if total else None,
    }


PROJECT_FRAME = re.compile(r"\((streaming|rbac|executions|project)/")
# Leaves where a thread waits rather than computes (py-spy cannot always tell).
IDLE_FRAMES = re.compile(
    r"^(_worker \(concurrent/futures/thread|\w*Selector\.(select|poll)|wait \(threading|"
    r"Connection\.wait \(psycopg)"
)


# --- report -----------------------------------------------------------------------------------
def median_rows(rows: list[dict]) -> dict:
    """The median of each numeric figure over repeated runs (the first run's other fields)."""
    out = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            values = [r.get(key) for r in rows if isinstance(r.get(key), int | float)]
            out[key] = med(values)
    out["runs"] = len(rows)
    return out


def machine_load() -> str:
    load = os.getloadavg()
    return f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} on {os.cpu_count()} cores"


@contextlib.contextmanager
def scenario(name: str, results: dict):
    """Run one scenario; an error is logged and recorded, and the next scenario still runs."""
    try:
        yield
    except Exception as exc:
        log(f"  {name} failed: {exc!r}")
        traceback.print_exc()
        results.setdefault("failed", {})[name] = repr(exc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="50,200,500,1000", help="N, comma separated")
    parser.add_argument(
        "--multi", type=int, default=2, help="web processes for the last run (0: skip)"
    )
    parser.add_argument("--multi-clients", type=int, default=0,
                        help="clients per web process in that run (default: the largest N)")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=float, default=100, help="lines per second")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (medians)")
    parser.add_argument("--quick", action="store_true",
                        help="one run per figure, 2,000 idle connections, a 200,000-line log")  # fmt: skip
    parser.add_argument("--only", default="fanout,peers,stall,replay,idle")
    parser.add_argument("--source", default="head",
                        help="run `git archive HEAD` (head, the default), the working tree "
                             "(tree), or any commit (`git archive COMMIT`: before/after runs)")  # fmt: skip
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections of each kind")
    parser.add_argument("--idle-hold", type=float, default=20)
    parser.add_argument("--keepalive", type=float, default=5, help="STREAM_KEEPALIVE_SECONDS")
    parser.add_argument("--log-lines", type=int, default=1_000_000)
    parser.add_argument("--stalled", type=int, default=100)
    parser.add_argument("--healthy", type=int, default=50)
    parser.add_argument("--stall-settle", type=float, default=10)
    parser.add_argument("--sse-replay-limit", type=int, default=50_000,
                        help="replay_limit of the SSE replay and stalled SSE clients (API max)")  # fmt: skip
    parser.add_argument("--grace", type=float, default=60, help="seconds to drain after a run")
    parser.add_argument("--clients-per-process", type=int, default=500)
    parser.add_argument("--peer-db-limit", type=int, default=60,
                        help="CONNECTION LIMIT of the peers' database (the server is shared)")  # fmt: skip
    parser.add_argument("--profile", type=int, default=0,
                        help="py-spy the web process for 10 s at this N (0: only on a miss at 1,000)")  # fmt: skip
    parser.add_argument("--peer-dir", default="",
                        help="where the peers' venv and project go (default: the temp dir)")  # fmt: skip
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the servers")
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument("--plots", default=str(ROOT / "docs" / "img"))
    parser.add_argument("--keep-temp", action="store_true")
    parser.add_argument("--dump", action="store_true",
                        help="keep the first client's stream of each run in the temp dir")  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.repeat = 1
        args.idle = min(args.idle, 2000)
        args.log_lines = min(args.log_lines, 200_000)
    only = set(args.only.split(","))
    clients = [int(x) for x in args.clients.split(",") if x]
    # One run at a time: two would share the databases (the peers' is dropped and re-made)
    # and each other's CPU.
    lock = open(Path(tempfile.gettempdir()) / "tailgate-bench-fanout.lock", "w")  # noqa: SIM115
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit("another bench/fanout.py is running on this machine") from None
    hard = raise_fd_limit()
    os.environ["REDIS_URL"] = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL

    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="tailgate-fanout-"))

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)

    def save(results: dict) -> None:
        """The results so far (each scenario adds its own as it ends)."""
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))

    results: dict = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "args": vars(args)}
    try:
        ctx = Context(args, procs, workdir)
        tg = Tailgate(args, procs, workdir)
        results["commit"] = tg.commit
        results["load_start"] = machine_load()
        log(f"fan-out benchmark: main {tg.commit} ({args.source}), {results['date']}, "
            f"{results['load_start']}; fd limit {hard}; work dir {workdir}")  # fmt: skip
        log(f"  stream limits raised for the run: {', '.join(tg.raised) or 'none found'}")
        tg.setup()
        tg.start_runner()
        peer = None
        with scenario("peers set-up", results):
            if "peers" in only:
                cap = prepare_peer_database(ctx)
                peer_dir = Path(args.peer_dir) if args.peer_dir else workdir / "peers"
                peer = PeerProject.create(peer_dir, peer_env(ctx), log)
                results["peer_db_limit"] = cap
                results["eventstream_version"] = peer.version("django-eventstream")
                log(f"  django-eventstream {results['eventstream_version']}; peer database "
                    f"role CONNECTION LIMIT {cap} (the PostgreSQL server is shared)")  # fmt: skip
        with scenario("fanout", results):
            kinds = ["tailgate"] if "fanout" in only else []
            kinds += ["eventstream", "naive"] if peer is not None else []
            if kinds:
                log(f"== 1-2. fan-out: {args.rate:g} lines/s for {args.seconds:g} s to N SSE "
                    f"clients; {', '.join(kinds)} back to back at each N (the same load)")  # fmt: skip
                runs: dict[tuple[str, int], list[dict]] = {}
                failed_at: dict[str, int] = {}
                for n in clients:
                    for _ in range(args.repeat):
                        for kind in kinds:
                            if kind in failed_at:
                                continue
                            if kind == "tailgate":
                                row = tailgate_fanout(ctx, tg, n, 1)
                            else:
                                row = peer_fanout(ctx, peer, kind, n)
                                if row["connected"] < 0.5 * n or row["ended_early"] > 0.5 * n:
                                    failed_at[kind] = n
                            runs.setdefault((kind, n), []).append(row)
                rows = [
                    median_rows(runs[("tailgate", n)]) for n in clients if ("tailgate", n) in runs
                ]
                if "tailgate" in kinds and args.multi > 1:
                    per = args.multi_clients or max(clients)
                    multi = [
                        tailgate_fanout(ctx, tg, per * args.multi, args.multi)
                        for _ in range(args.repeat)
                    ]
                    rows.append(median_rows(multi))
                if "tailgate" in kinds:
                    results["fanout"] = rows
                if peer is not None:
                    results["peers"] = [
                        median_rows(runs[(kind, n)])
                        for kind in ("eventstream", "naive")
                        for n in clients
                        if (kind, n) in runs
                    ]
                    results["peers_not_run"] = [
                        {
                            "target": kind,
                            "clients": n,
                            "web_processes": 1,
                            "connected": 0,
                            "not_run": True,
                            "failed_at": failed_at[kind],
                        }
                        for kind in ("eventstream", "naive")
                        for n in clients
                        if kind in failed_at and n > failed_at[kind]
                    ]
                    for row in results["peers_not_run"]:
                        log(f"  {row['target']:<12} N={row['clients']:<5} not run: failed at "
                            f"N={row['failed_at']}")  # fmt: skip
                save(results)
                missed = [r for r in rows if r["clients"] == TARGET_CLIENTS and r["web_processes"] == 1
                          and (r["p99_ms"] > TARGET_P99_MS or r["lost_lines"] or r["http_errors"] or r["ended_early"])]  # fmt: skip
                if "tailgate" in kinds and (args.profile or missed):
                    results["profile"] = profile_run(ctx, tg, args.profile or TARGET_CLIENTS)
                    save(results)
        with scenario("profile", results):
            if "profile" in only and "fanout" not in only:
                results["profile"] = profile_run(ctx, tg, args.profile or TARGET_CLIENTS)
                save(results)
        with scenario("stall/replay", results):
            if "stall" in only or "replay" in only:
                port = tg.start_web(1)[0]
                log(f"  seeding a finished {args.log_lines:,}-line execution (COPY)")
                big_id = tg.seed_log(port, args.log_lines)
                tg.stop_webs()
                if "stall" in only:
                    log(f"== 4. stalled: {args.stalled} clients never read a {args.log_lines:,}-line "
                        f"log while {args.healthy} follow a live execution")  # fmt: skip
                    results["stall"] = stall_run(ctx, tg, big_id)
                    save(results)
                if "replay" in only:
                    log(f"== 5. replay of the {args.log_lines:,}-line log to one client")
                    results["replay"] = replay_run(ctx, tg, big_id, args.log_lines)
                    save(results)
        with scenario("idle", results):
            if "idle" in only:
                log(
                    f"== 3. idle: {args.idle:,} SSE streams, then {args.idle:,} WebSockets, one web process"
                )
                results["idle"] = []
                for kind in ("sse", "ws"):
                    results["idle"].append(idle_run(ctx, tg, kind, args.idle))
                    save(results)
        results["load_end"] = machine_load()
        report(results, tg.commit)
        if "fanout" in only or "idle" in only:
            for path in plot(results, Path(args.plots)):
                log(f"  plot: {path}")
    finally:
        procs.stop_all()
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
        if args.keep_temp:
            log(f"  kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def profile_run(ctx, tg: Tailgate, n: int) -> dict:
    """One more fan-out run at N with py-spy on the web process (10 s, from 3 s after the
    first line)."""
    log(f"  profiling the web process at N={n} (py-spy record, 10 s)")
    out = ctx.workdir / "profile.txt"
    profile: dict = {}

    def during(pids):
        time.sleep(3)  # the lines are flowing
        profile.update(profile_web(ctx, pids[0], 10, out))

    row = tailgate_fanout(ctx, tg, n, 1, on_live=during)
    log(f"  {profile.get('waiting_pct') or 0:.0f} % of the samples wait (idle pool threads, "
        "the selector, psycopg); of the others, top 15 by own time (py-spy):")  # fmt: skip
    for name, _count, pct in profile.get("top", []):
        log(f"    {pct:5.1f} %  {name}")
    log("  samples by the Tailgate function they run under (deepest project frame):")
    for name, _count, pct in profile.get("project", []):
        log(f"    {pct:5.1f} %  {name}")
    return {"run": row, **profile}


if __name__ == "__main__":
    main()
