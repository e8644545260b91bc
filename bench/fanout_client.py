"""Load client for bench/fanout.py: many SSE / WebSocket / plain-text connections, raw sockets.

    python bench/fanout_client.py SPEC.json

One process, one `selectors` loop, non-blocking sockets, no HTTP library: a client costs a
socket, a few hundred bytes of state, and per received event one regex match (the event's
sequence number and the print time in its data). It talks to its parent over stdin/stdout,
one JSON object per line:

    stdout  {"event": "ready", ...}    every connection attempt has ended (open or failed)
    stdin   observe                    idle mode: start timing the keep-alives from now
    stdin   stop                       close everything, print the result, exit
    stdout  {"event": "result", ...}   counts; latencies (ms) go to spec["latency_file"]

Modes (spec["mode"]):
- follow: read a live stream; per event (seq, print time): count, duplicates, out-of-order,
  latency = receive time - print time. A client is finished at spec["done_marker"] (Tailgate's
  `event: done`) or when it holds spec["expected"] distinct events (peers), or at `stop`.
- idle: hold connections open; per connection the longest silence between two arrivals
  (keep-alives) after `observe`. WebSockets answer pings (daphne closes unanswered ones).
- stall: send the request, then never read (a small SO_RCVBUF makes the kernel's share small).
- replay: one connection; count events (SSE, `\\nid: `) or lines (text) until the end.
Every loop is bounded by spec["deadline"] seconds.
"""

import array
import base64
import contextlib
import errno
import json
import os
import random
import re
import resource
import selectors
import socket
import struct
import sys
import time

CONNECTING, HEADERS, BODY, CLOSED = range(4)
# The close code of a WebSocket Tailgate refused for its stream limits (4000 + HTTP 429).
WS_TOO_MANY = 4429


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Dechunker:
    """HTTP/1.1 chunked transfer decoding, incremental."""

    __slots__ = ("ended", "left", "pending", "skip")

    def __init__(self) -> None:
        self.pending = b""
        self.left = 0  # bytes of chunk data still to come
        self.skip = 0  # CRLF after a chunk's data still to skip
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        buf = self.pending + data if self.pending else data
        out = []
        pos, size = 0, len(buf)
        while pos < size:
            if self.left:
                take = min(self.left, size - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self.left -= take
                if not self.left:
                    self.skip = 2
                continue
            if self.skip:
                step = min(self.skip, size - pos)
                pos += step
                self.skip -= step
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            length = int(buf[pos:eol].split(b";", 1)[0] or b"0", 16)
            pos = eol + 2
            if length == 0:
                self.ended = True
                pos = size
                break
            self.left = length
        self.pending = buf[pos:]
        return out[0] if len(out) == 1 else b"".join(out)


class Conn:
    __slots__ = (
        "arrivals",
        "body",
        "buf",
        "chunks",
        "count",
        "dechunk",
        "done",
        "dups",
        "error",
        "last_arrival",
        "last_seq",
        "max_gap",
        "max_seq",
        "ooo",
        "opened",
        "path",
        "port",
        "retries",
        "seen",
        "sock",
        "state",
        "status",
        "ws_buf",
    )

    def __init__(self, port: int, path: str) -> None:
        self.port, self.path = port, path
        self.retries = 0
        self.reset()

    def reset(self) -> None:
        self.sock: socket.socket | None = None
        self.state = CONNECTING
        self.buf = b""  # header bytes, then the unparsed tail of the body
        self.body = b""
        self.status = 0
        self.dechunk: Dechunker | None = None
        self.count = self.dups = self.ooo = self.max_seq = self.chunks = 0
        self.last_seq = 0
        self.seen = bytearray()
        self.done = False
        self.error = ""
        self.opened = 0.0
        self.last_arrival = 0.0
        self.max_gap = 0.0
        self.arrivals = 0
        self.ws_buf = b""


class Client:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.mode = spec["mode"]
        self.protocol = spec.get("protocol", "sse")
        self.sel = selectors.DefaultSelector()
        self.pattern = (
            re.compile(spec["pattern"].encode("latin-1")) if spec.get("pattern") else None
        )
        self.done_marker = (spec.get("done_marker") or "").encode() or None
        self.expected = int(spec.get("expected") or 0)
        self.latencies = array.array("d")
        self.conns: list[Conn] = []
        self.errors: dict[str, int] = {}
        self.observe_from: float | None = None
        self.deadline = time.monotonic() + float(spec.get("deadline", 600))
        self.stop = False
        self.finished = 0
        self.host = spec.get("host", "127.0.0.1")
        headers = "".join(f"{k}: {v}\r\n" for k, v in spec.get("headers", {}).items())
        self.extra_headers = headers
        self.replay_started = 0.0
        self.replay_ended = 0.0
        self.replay_headers = 0.0  # when the response's headers came (the stream began)
        self.replay_tail = b""
        self.replay_last_id = b""
        self.max_retries = int(spec.get("retries_429", 5))
        self.retried = 0
        self.delayed: list[tuple[float, Conn]] = []
        self.ws_frames: dict[str, int] = {"ping": 0, "text": 0}
        # For checking the parser: the first connection's body, as received (de-chunked).
        self.dump = open(spec["dump_file"], "wb") if spec.get("dump_file") else None  # noqa: SIM115

    # --- connections --------------------------------------------------------------------
    def request(self, conn: Conn) -> bytes:
        host = f"Host: {self.host}:{conn.port}\r\n"
        if self.protocol == "ws":
            key = base64.b64encode(os.urandom(16)).decode()
            return (
                f"GET {conn.path} HTTP/1.1\r\n{host}Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Origin: http://{self.host}:{conn.port}\r\n{self.extra_headers}\r\n"
            ).encode()
        accept = "text/event-stream" if self.protocol == "sse" else "text/plain"
        return (
            f"GET {conn.path} HTTP/1.1\r\n{host}Accept: {accept}\r\n{self.extra_headers}\r\n"
        ).encode()

    def open(self, conn: Conn) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if self.spec.get("rcvbuf"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, int(self.spec["rcvbuf"]))
        conn.sock = sock
        conn.opened = time.monotonic()
        err = sock.connect_ex((self.host, conn.port))
        if err not in (0, errno.EINPROGRESS):
            self.fail(conn, f"connect: {errno.errorcode.get(err, err)}")
            return
        self.sel.register(sock, selectors.EVENT_WRITE, conn)

    def fail(self, conn: Conn, why: str) -> None:
        if conn.state == CLOSED:
            return
        self.errors[why] = self.errors.get(why, 0) + 1
        conn.error = why
        self.close(conn)

    def close(self, conn: Conn) -> None:
        if conn.state == CLOSED:
            return
        conn.state = CLOSED
        self.finished += 1
        if conn.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(conn.sock)
            conn.sock.close()

    def on_writable(self, conn: Conn) -> None:
        err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.fail(conn, f"connect: {errno.errorcode.get(err, err)}")
            return
        try:
            conn.sock.send(self.request(conn))
        except OSError as exc:
            self.fail(conn, f"send: {exc.__class__.__name__}")
            return
        if self.mode == "stall":
            # Never read: the request is out, the socket stays registered for nothing.
            self.sel.unregister(conn.sock)
            conn.state = BODY
            conn.status = -1
            return
        conn.state = HEADERS
        self.sel.modify(conn.sock, selectors.EVENT_READ, conn)
        if self.mode == "replay":
            self.replay_started = time.perf_counter()

    def on_readable(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(conn, f"recv: {exc.__class__.__name__}")
            return
        now = time.time()
        if not data:
            if conn.state == HEADERS:
                self.fail(conn, "closed before headers")
            elif not conn.done and self.mode != "replay":
                self.fail(conn, "closed before the end")
            else:
                self.finish(conn)
            return
        if conn.state == HEADERS:
            conn.buf += data
            end = conn.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = conn.buf[:end].decode("latin-1"), conn.buf[end + 4 :]
            conn.buf = b""
            try:
                conn.status = int(head.split(" ", 2)[1])
            except (IndexError, ValueError):
                self.fail(conn, "bad status line")
                return
            wanted = 101 if self.protocol == "ws" else 200
            if conn.status == 429 and conn.retries < self.max_retries:
                # What EventSource and the CLI do: come back after Retry-After (plus jitter).
                match = re.search(r"(?im)^retry-after:\s*(\d+)", head)
                self.retry_later(conn, float(match.group(1)) if match else 1.0)
                return
            if conn.status != wanted:
                self.fail(conn, f"HTTP {conn.status}")
                return
            if "transfer-encoding: chunked" in head.lower():
                conn.dechunk = Dechunker()
            conn.state = BODY
            conn.last_arrival = now
            if self.mode == "replay":
                self.replay_headers = time.perf_counter()
            if self.protocol == "ws" and self.spec.get("ws_subscribe"):
                self.ws_send(conn, 0x1, self.spec["ws_subscribe"].encode())
            if not data:
                return
        if self.protocol == "ws":
            self.on_ws(conn, data, now)
            return
        if conn.dechunk is not None:
            data = conn.dechunk.feed(data)
            if conn.dechunk.ended and self.mode == "replay":
                conn.done = True
        if self.dump is not None and conn is self.conns[0]:
            self.dump.write(data)
        if self.mode == "follow":
            self.on_events(conn, data, now)
        elif self.mode == "idle":
            self.on_arrival(conn, now)
        elif self.mode == "replay":
            self.on_replay(conn, data)
        if conn.dechunk is not None and conn.dechunk.ended and conn.state != CLOSED:
            if self.mode == "follow" and not conn.done:
                self.fail(conn, "closed before the end")
            else:
                self.finish(conn)

    def retry_later(self, conn: Conn, delay: float) -> None:
        """Close `conn` and connect it again after `delay` s (plus jitter), counted."""
        self.retried += 1
        conn.retries += 1
        self.close(conn)
        self.finished -= 1
        conn.reset()
        self.delayed.append((time.monotonic() + delay * (1 + random.random()), conn))

    def finish(self, conn: Conn) -> None:
        if self.mode == "replay" and not self.replay_ended:
            self.replay_ended = time.perf_counter()
        self.close(conn)

    # --- follow ---------------------------------------------------------------------------
    def on_events(self, conn: Conn, data: bytes, now: float) -> None:
        buf = conn.buf + data if conn.buf else data
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            conn.buf = buf
            return
        block, conn.buf = buf[: cut + 2], buf[cut + 2 :]
        seen = conn.seen
        lat = self.latencies
        for seq_b, ts_b in self.pattern.findall(block):
            seq = int(seq_b)
            if seq >= len(seen):
                seen.extend(bytes(seq + 1024 - len(seen)))
            if seen[seq]:
                conn.dups += 1
                continue
            seen[seq] = 1
            conn.count += 1
            if seq < conn.max_seq:
                conn.ooo += 1
            else:
                conn.max_seq = seq
            lat.append((now - float(ts_b)) * 1000.0)
        if (self.done_marker is not None and self.done_marker in block) or (
            self.expected and conn.count >= self.expected
        ):
            conn.done = True
            self.close(conn)

    # --- idle -----------------------------------------------------------------------------
    def on_arrival(self, conn: Conn, now: float) -> None:
        if self.observe_from is not None:
            # Silence measured from the last arrival, even one before `observe`.
            gap = now - conn.last_arrival
            if gap > conn.max_gap:
                conn.max_gap = gap
            conn.arrivals += 1
        conn.last_arrival = now

    def on_ws(self, conn: Conn, data: bytes, now: float) -> None:
        buf = conn.ws_buf + data if conn.ws_buf else data
        pos = 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if len(buf) - pos < 4:
                    break
                length, head = struct.unpack_from("!H", buf, pos + 2)[0], 4
            elif length == 127:
                if len(buf) - pos < 10:
                    break
                length, head = struct.unpack_from("!Q", buf, pos + 2)[0], 10
            if len(buf) - pos < head + length:
                break
            opcode = b0 & 0x0F
            payload = buf[pos + head : pos + head + length]
            pos += head + length
            if opcode == 0x8:
                code = struct.unpack_from("!H", payload)[0] if len(payload) >= 2 else None
                if code == WS_TOO_MANY and conn.retries < self.max_retries:
                    # Tailgate refuses a socket it has no slot for as accept, `error`, close
                    # 4429 (a WebSocket has no Retry-After): come back later, as for HTTP.
                    self.retry_later(conn, float(self.spec.get("ws_retry_after", 5)))
                    return
                self.fail(conn, "ws closed by server")
                return
            if opcode == 0x9:  # ping: answer, or daphne closes the socket
                self.ws_send(conn, 0xA, payload)
            name = {0x1: "text", 0x9: "ping"}.get(opcode, str(opcode))
            self.ws_frames[name] = self.ws_frames.get(name, 0) + 1
            self.on_arrival(conn, now)
        conn.ws_buf = buf[pos:]

    def ws_send(self, conn: Conn, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        size = len(payload)
        if size < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
        try:
            conn.sock.send(head + mask + masked)
        except OSError as exc:
            self.fail(conn, f"ws send: {exc.__class__.__name__}")

    # --- replay ---------------------------------------------------------------------------
    def on_replay(self, conn: Conn, data: bytes) -> None:
        buf = self.replay_tail + data
        if self.protocol == "sse":
            conn.count += buf.count(b"\nid: ") - self.replay_tail.count(b"\nid: ")
            last = buf.rfind(b"\nid: ")
            if last >= 0:
                end = buf.find(b"\n", last + 5)
                if end > 0:
                    self.replay_last_id = buf[last + 5 : end]
            if self.done_marker and self.done_marker in buf:
                conn.done = True
                self.finish(conn)
                return
            self.replay_tail = buf[-16:]
        else:
            conn.count += data.count(b"\n")

    # --- loop -----------------------------------------------------------------------------
    def commands(self) -> None:
        try:
            data = os.read(sys.stdin.fileno(), 4096)
        except BlockingIOError:
            return
        if not data:
            self.stop = True
            return
        for line in data.decode().split():
            if line == "observe":
                self.observe_from = time.time()
            elif line == "stop":
                self.stop = True

    def emit(self, payload: dict) -> None:
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()

    def run(self) -> None:
        spec = self.spec
        for target in spec["targets"]:
            for _ in range(int(target["count"])):
                self.conns.append(Conn(int(target["port"]), target["path"]))
        os.set_blocking(sys.stdin.fileno(), False)
        self.sel.register(sys.stdin.fileno(), selectors.EVENT_READ, None)
        concurrency = int(spec.get("connect_concurrency", 64))
        connect_timeout = float(spec.get("connect_timeout", 30))
        waiting = list(reversed(self.conns))
        ready_sent = False
        started = time.monotonic()
        while not self.stop and time.monotonic() < self.deadline:
            if not ready_sent:
                # Keep at most `concurrency` handshakes in flight.
                in_flight = [c for c in self.conns if c.state in (CONNECTING, HEADERS) and c.sock]
                now_m = time.monotonic()
                for conn in in_flight:
                    if now_m - conn.opened > connect_timeout:
                        self.fail(conn, "connect timeout")
                in_flight = [c for c in in_flight if c.state != CLOSED]
                due = [item for item in self.delayed if item[0] <= now_m]
                if due:
                    self.delayed = [item for item in self.delayed if item[0] > now_m]
                    waiting.extend(conn for _, conn in due)
                while waiting and len(in_flight) < concurrency:
                    conn = waiting.pop()
                    self.open(conn)
                    if conn.state != CLOSED:
                        in_flight.append(conn)
                if not waiting and not in_flight and not self.delayed:
                    ready_sent = True
                    self.emit(self.ready(time.monotonic() - started))
            for key, mask in self.sel.select(timeout=0.05 if waiting or not ready_sent else 0.5):
                conn = key.data
                if conn is None:
                    self.commands()
                elif mask & selectors.EVENT_WRITE and conn.state == CONNECTING:
                    self.on_writable(conn)
                elif conn.state in (HEADERS, BODY):
                    self.on_readable(conn)
            if (
                ready_sent
                and self.mode in ("follow", "replay")
                and self.finished >= len(self.conns)
            ):
                break
        if not ready_sent:
            self.emit(self.ready(time.monotonic() - started))
        self.emit(self.result())
        for conn in self.conns:
            self.close(conn)

    def ready(self, seconds: float) -> dict:
        opened = sum(1 for c in self.conns if c.state != CLOSED or c.done)
        return {
            "event": "ready",
            "open": opened,
            "retried_429": self.retried,
            "errors": dict(self.errors),
            "seconds": round(seconds, 3),
        }

    def result(self) -> dict:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out: dict = {
            "event": "result",
            "clients": len(self.conns),
            "errors": dict(self.errors),
            "retried_429": self.retried,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "max_rss_kb": usage.ru_maxrss,
        }
        conns = self.conns
        if self.mode == "follow":
            out["counts"] = [c.count for c in conns]
            out["ok"] = sum(1 for c in conns if c.status == 200)
            out["done"] = sum(1 for c in conns if c.done)
            out["dups"] = sum(c.dups for c in conns)
            out["ooo"] = sum(c.ooo for c in conns)
            out["clients_with_dups"] = sum(1 for c in conns if c.dups)
            out["clients_with_ooo"] = sum(1 for c in conns if c.ooo)
            out["unfinished"] = sum(1 for c in conns if c.state != CLOSED and not c.done)
            path = self.spec.get("latency_file")
            if path:
                with open(path, "wb") as fh:
                    self.latencies.tofile(fh)
            out["samples"] = len(self.latencies)
        elif self.mode == "idle":
            now = time.time()
            gaps = []
            for c in conns:
                if c.state == CLOSED or not c.status:
                    continue
                gaps.append(max(c.max_gap, now - c.last_arrival))
            out["open"] = len(gaps)
            out["gaps"] = gaps
            out["silent"] = sum(1 for c in conns if c.state != CLOSED and c.arrivals == 0)
            out["ws_frames"] = self.ws_frames
        elif self.mode == "stall":
            out["open"] = sum(1 for c in conns if c.state != CLOSED)
        elif self.mode == "replay":
            conn = conns[0]
            out["count"] = conn.count
            out["status"] = conn.status
            out["done"] = conn.done or bool(self.replay_ended)
            out["last_id"] = self.replay_last_id.decode("latin-1")
            end = self.replay_ended or time.perf_counter()
            out["seconds"] = end - self.replay_started if self.replay_started else None
            if self.replay_started and self.replay_headers:
                out["headers_seconds"] = self.replay_headers - self.replay_started
        return out


def main() -> None:
    raise_fd_limit()
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    Client(spec).run()


if __name__ == "__main__":
    main()
