"""Latency benchmark: a line written by an action → an SSE client receiving it (cluster mode).

    .venv/bin/python bench/latency.py [--seconds 10] [--rate 100]

Starts one `manage.py serve --no-runner` and one `manage.py actionrunner` on PostgreSQL
(its own database `tailgate_bench_latency`, created if missing) and Redis, runs an action
printing `--rate` lines per second with the time each was written, and follows it with an
httpx SSE client: latency = receive time - the time in the line. In the same run it measures
a bare Redis PUBLISH → subscriber round trip: the floor under any layer-based design.
Targets: p50 ≤ 10 ms, p99 ≤ 50 ms.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, database_url, ensure_database, figure, setup_django

BENCH_DB = "tailgate_bench_latency"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
TARGET_P50_MS, TARGET_P99_MS = 10, 50
# The action: prints `count` lines at `rate` per second on an absolute schedule, each
# starting with the wall-clock time it was written.
PRINTER = (
    "import sys, time\n"
    "count, rate = int(sys.argv[1]), float(sys.argv[2])\n"
    "start = time.time() + 0.5\n"
    "for i in range(count):\n"
    "    time.sleep(max(0.0, start + i / rate - time.time()))\n"
    "    print(f'{time.time():.6f} line {i}', flush=True)\n"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, "RUNNER_POLL_SECONDS": "0.2", "LOG_LEVEL": "WARNING"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for_server(url: str, process: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            httpx.get(f"{url}/api/v1/stream", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit("the server did not start")


def session_cookie() -> dict[str, str]:
    from django.contrib.auth import get_user_model
    from django.test import Client

    user, _ = get_user_model().objects.get_or_create(
        username="bench-latency", defaults={"is_superuser": True, "is_staff": True}
    )
    client = Client()
    client.force_login(user)
    return {"sessionid": client.cookies["sessionid"].value}


def create_printer(count: int, rate: float) -> str:
    import shlex

    from executions import services
    from executions.models import Action

    cmd = " ".join(shlex.quote(a) for a in (sys.executable, "-c", PRINTER, str(count), str(rate)))
    action = Action.objects.get(ref="core.local")
    return services.create_execution(action, {"cmd": cmd, "timeout": 600}).id


def follow(url: str, cookies: dict, execution_id: str) -> list[tuple[float, float]]:
    """For each line, in seq order: ms from its write to the runner reading it (the chunk's
    timestamp), and ms from there to its arrival here."""
    from datetime import datetime

    import httpx
    from httpx_sse import connect_sse

    latencies = []
    stream = f"{url}/api/v1/executions/{execution_id}/output/stream?from=0"
    with (
        httpx.Client(cookies=cookies, timeout=60) as client,
        connect_sse(client, "GET", stream) as source,
    ):
        for event in source.iter_sse():
            received = time.time()
            if event.event == "execution.output__create":
                chunk = json.loads(event.data)
                written = float(chunk["data"].split()[0])
                read = datetime.fromisoformat(chunk["timestamp"]).timestamp()
                latencies.append(((read - written) * 1000, (received - read) * 1000))
            elif event.event == "done":
                return latencies
    raise SystemExit("the stream ended before `done`")


def redis_floor(redis_url: str, count: int, rate: float, out: list[float]) -> None:
    """PUBLISH → subscriber round trips (ms) at the same rate, in the same run."""
    import redis

    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    pubsub.subscribe("tailgate-bench-latency")
    pubsub.get_message(timeout=5)  # the subscribe confirmation

    def publish() -> None:
        start = time.time()
        for i in range(count):
            time.sleep(max(0.0, start + i / rate - time.time()))
            client.publish("tailgate-bench-latency", repr(time.time()))

    publisher = threading.Thread(target=publish)
    publisher.start()
    while len(out) < count:
        message = pubsub.get_message(timeout=5)
        if message and message["type"] == "message":
            out.append((time.time() - float(message["data"])) * 1000)
    publisher.join()
    pubsub.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(name: str, values: list[float]) -> tuple[float, float]:
    p50, p99 = statistics.median(values), percentile(values, 0.99)
    print(f"{name} ({len(values)} samples)")
    figure("p50", p50, "ms")
    figure("p99", p99, "ms")
    figure("max", max(values), "ms")
    return p50, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=100, help="lines per second")
    args = parser.parse_args()
    count = int(args.seconds * args.rate)
    url_db = database_url(BENCH_DB)
    ensure_database(url_db)
    os.environ["REDIS_URL"] = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    setup_django(url_db)
    cookies = session_cookie()
    port = free_port()
    web = start("serve", "--no-runner", "--port", str(port))
    runner = start("actionrunner", "--concurrency", "2")
    url = f"http://127.0.0.1:{port}"
    floor: list[float] = []
    try:
        wait_for_server(url, web)
        floor_thread = threading.Thread(
            target=redis_floor, args=(os.environ["REDIS_URL"], count, args.rate, floor)
        )
        floor_thread.start()
        latencies = follow(url, cookies, create_printer(count, args.rate))
        floor_thread.join()
    finally:
        for process in (web, runner):
            process.send_signal(signal.SIGTERM)
        for process in (web, runner):
            process.wait(timeout=30)
    print(f"SSE latency, {args.rate:g} lines/s for {args.seconds:g} s (cluster mode)")
    p50, p99 = report("  line written → SSE event received", [a + b for a, b in latencies])
    report("    of which: written → read by the runner", [a for a, _ in latencies])
    report("    of which: read → received (batch, store, layer, stream)", [b for _, b in latencies])
    report("  floor: bare Redis PUBLISH → subscriber", floor)
    verdict = "met" if p50 <= TARGET_P50_MS and p99 <= TARGET_P99_MS else "NOT met"
    print(f"targets p50 ≤ {TARGET_P50_MS} ms, p99 ≤ {TARGET_P99_MS} ms: {verdict}")


if __name__ == "__main__":
    main()
