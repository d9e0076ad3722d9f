"""Attack benchmark: hostile clients against one `cilium-startup-guard serve` each, with default settings.

    .venv/bin/python bench/attacks.py [--only NAME,...] [--scale F] [--settle S] [--output FILE] [--list]

For every attack a fresh `serve` process (default settings, a throwaway CA) listens on 127.0.0.1. A probe process
plays kube-apiserver from another loopback address, 127.0.0.2: one keep-alive connection, one normal review (the
EBS CSI node DaemonSet, tests/fixtures/daemonset_ebs_csi_node.json, a fresh uid each time) every 100 ms, 10 s
timeout, reconnecting after a failure. Its latency counts from the time a request was due, so a stalled server is
not hidden by the probe waiting. The attack comes from 127.0.0.1 (the `-spread` variants from 64 addresses
127.0.1.x); every attack is bounded in count and time. Printed per attack:

- peak RSS of the `serve` process (VmHWM, sampled also every 20 ms) and its RSS 10 s after the attack ended;
- the probe's answers, failures and p99 latency during the attack and the 10 s after it;
- the largest answer seen (by an attacking client that reads, or by one reading request made after the
  measurement window for attacks whose clients never read);
- what the attacker saw (connections refused or closed and when, statuses, bytes received).

Stdlib and orjson only; run it with the project's virtualenv, under `flock /tmp/bench.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import random
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import processes  # bench/processes.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "daemonset_ebs_csi_node.json"
MIB = 1024 * 1024
HOST = "127.0.0.1"
PROBE_SOURCE = "127.0.0.2"
SPREAD_SOURCES = [f"127.0.1.{i}" for i in range(1, 65)]
PROBE_INTERVAL = 0.1
PROBE_TIMEOUT = 10.0  # kube-apiserver's default webhook timeout
SETTLE_S = 10.0  # RSS is read this long after the attack ends
TCP_OPEN_STATES = (1, 2)  # tcpi_state ESTABLISHED, and SYN_SENT while the server's accept queue is full


# --- the server and its memory ------------------------------------------------------------------------------------

@dataclass
class Workspace:
    directory: Path
    ca: Path
    cert: Path
    key: Path

    @staticmethod
    def make(directory: Path) -> Workspace:
        from webhook import certs  # only the certificates come from the package under test

        certs.write_bundle(certs.build_bundle(*certs.default_sans()), directory)  # it makes the directory
        return Workspace(directory, directory / certs.CA_CERT_FILE, directory / certs.CERT_FILE,
                         directory / certs.KEY_FILE)

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


class Server:
    """One `serve` process with its log in a file."""

    def __init__(self, ws: Workspace, name: str, extra: list[str]) -> None:
        self.port = processes.free_port(HOST)
        self.log = ws.directory / f"{name}.log"
        command = [*processes.guard_command(), "serve", "--host", HOST, "--port", str(self.port),
                   "--tls-cert", str(ws.cert), "--tls-key", str(ws.key), *extra]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=ROOT)
        self._wait_healthy(ws)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_healthy(self, ws: Workspace, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with {self.process.returncode}:\n{self.log.read_text()}")
            connection = http.client.HTTPSConnection(HOST, self.port, context=ws.context(), timeout=5)
            try:
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    return
            except (OSError, http.client.HTTPException):
                time.sleep(0.02)
            finally:
                connection.close()
        raise RuntimeError(f"serve not healthy within {timeout} s:\n{self.log.read_text()}")

    def memory_mib(self, field_name: str) -> float:
        return processes.memory_mib(self.pid, field_name)

    def metrics(self, ws: Workspace) -> str:
        connection = http.client.HTTPSConnection(HOST, self.port, context=ws.context(), timeout=10,
                                                 source_address=(PROBE_SOURCE, 0))
        try:
            connection.request("GET", "/metrics")
            return connection.getresponse().read().decode()
        finally:
            connection.close()

    def stop(self) -> None:
        processes.stop(self.process, timeout=40)


class RssSampler:
    """Samples the server's RSS every 20 ms from a thread, to see the peak of one phase."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError, RuntimeError):
                self.peak = max(self.peak, self.server.memory_mib("VmRSS"))


# --- the probe: kube-apiserver's normal traffic -------------------------------------------------------------------

def probe_main(port: int, ca: Path) -> None:
    """Runs in its own process until stdin closes, then prints its figures as one JSON line."""
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    context = ssl.create_default_context(cafile=str(ca))
    review = orjson.loads(FIXTURE.read_bytes())
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    largest = 0
    conn: ssl.SSLSocket | None = None
    due = time.monotonic()
    while not stop.is_set():
        due += PROBE_INTERVAL
        review["request"]["uid"] = str(uuid.uuid4())
        body = orjson.dumps(review)
        try:
            if conn is None:
                raw = socket.create_connection((HOST, port), timeout=PROBE_TIMEOUT, source_address=(PROBE_SOURCE, 0))
                conn = context.wrap_socket(raw, server_hostname="localhost")
            conn.settimeout(max(0.1, due - PROBE_INTERVAL + PROBE_TIMEOUT - time.monotonic()))
            conn.sendall(b"POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            status, answer = _read_answer(conn)
            if status != 200 or review["request"]["uid"].encode() not in answer:
                failures[f"status {status}"] += 1
            else:
                latencies.append(time.monotonic() - (due - PROBE_INTERVAL))
                largest = max(largest, len(answer))
        except (OSError, ValueError) as err:
            failures[type(err).__name__] += 1
            if conn is not None:
                conn.close()
            conn = None
        pause = due - time.monotonic()
        if pause > 0:
            stop.wait(pause)
        else:
            due = time.monotonic()  # behind schedule: the next request is due now, not a burst of them
    if conn is not None:
        conn.close()
    latencies.sort()
    print(json.dumps({"answers": len(latencies), "failures": sum(failures.values()), "why": dict(failures),
                      "p50_ms": _percentile(latencies, 50) * 1000, "p99_ms": _percentile(latencies, 99) * 1000,
                      "max_ms": (latencies[-1] if latencies else float("nan")) * 1000, "largest_answer": largest}))


def _read_answer(conn: ssl.SSLSocket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the answer")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = conn.recv(1 << 20)
        if not chunk:
            raise ConnectionError("closed in the answer")
        rest += chunk
    return int(head.split(b" ", 2)[1]), rest[:length]


def _percentile(ordered: list[float], pct: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


class Probe:
    def __init__(self, server: Server, ws: Workspace) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, "--probe", str(server.port), str(ws.ca)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)

    def finish(self) -> dict[str, Any]:
        out, _ = self.process.communicate(b"", timeout=PROBE_TIMEOUT + 20)
        return dict(json.loads(out.decode().strip().splitlines()[-1]))


# --- request bodies -----------------------------------------------------------------------------------------------

def review_body(tolerations: list[dict[str, Any]], namespace: str = "kube-system", uid: str | None = None) -> bytes:
    review = orjson.loads(FIXTURE.read_bytes())
    request = review["request"]
    request["uid"] = uid or str(uuid.uuid4())
    request["namespace"] = namespace
    request["object"]["metadata"]["namespace"] = namespace
    request["object"]["spec"]["template"]["spec"]["tolerations"] = tolerations
    return orjson.dumps(review)


def distinct_blankets(count: int) -> list[dict[str, Any]]:
    # Blanket NoExecute tolerations that differ from each other, so that no deduplication makes them one.
    return [{"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": i} for i in range(count)]


def identical_blankets(count: int) -> list[dict[str, Any]]:
    return [{"operator": "Exists"}] * count


def sized(make: Callable[[int], list[dict[str, Any]]], limit: int) -> bytes:
    """The largest body made by `make(n)` that stays within `limit` bytes."""
    low, high = 0, 1
    while len(review_body(make(high))) <= limit:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if len(review_body(make(middle))) <= limit:
            low = middle
        else:
            high = middle
    return review_body(make(low))


def post_head(body_length: int, path: str = "/validate", extra: bytes = b"") -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n%s"
            b"Content-Length: %d\r\n\r\n" % (path.encode(), extra, body_length))


def default_max_body_bytes() -> int:
    from webhook.config import ServerSettings

    return int(ServerSettings().max_body_bytes)


# --- client helpers -----------------------------------------------------------------------------------------------

def tls_connect(ws: Workspace, port: int, source: str = HOST, rcvbuf: int | None = None,
                timeout: float = 30.0) -> ssl.SSLSocket:
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connect(): the window scale is fixed by the handshake
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(timeout)
    raw.bind((source, 0))
    raw.connect((HOST, port))
    return ws.context().wrap_socket(raw, server_hostname="localhost")


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of `sock` (tcpi_state); past TCP_OPEN_STATES it means the peer closed it."""
    return int(struct.unpack("B", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1))[0])


def wait_closed_by_server(socks: list[socket.socket], started: float, hold: float) -> list[float | None]:
    """For each socket, seconds from `started` until the server closed it (FIN or RST seen), None if it was still
    open when `hold` seconds had passed. Reads nothing."""
    closed: list[float | None] = [None] * len(socks)
    deadline = started + hold
    while time.monotonic() < deadline and any(c is None for c in closed):
        now = time.monotonic() - started
        for i, sock in enumerate(socks):
            if closed[i] is None:
                try:
                    state = tcp_state(sock)
                except OSError:
                    state = 0
                if state not in TCP_OPEN_STATES:
                    closed[i] = now
        time.sleep(0.05 if len(socks) < 1000 else 0.25)
    return closed


def held_summary(closed: list[float | None], hold: float) -> dict[str, Any]:
    times = sorted(c for c in closed if c is not None)
    at_once = sum(1 for c in times if c < 1.0)
    return {"closed_within_1s": at_once, "closed_later": len(times) - at_once,
            "still_open_at_end": sum(1 for c in closed if c is None), "hold_limit_s": hold,
            "median_close_s": round(statistics.median(times), 2) if times else None,
            "last_close_s": round(times[-1], 2) if times else None}


# --- the attacks --------------------------------------------------------------------------------------------------

@dataclass
class Context:
    ws: Workspace
    server: Server
    scale: float
    max_body: int
    largest_answer: int = 0
    after: Callable[[], None] | None = None  # run after the measurement window (for example to size an answer)
    notes: dict[str, Any] = field(default_factory=dict)

    def count(self, full: int) -> int:
        return max(1, round(full * self.scale))


def attack_tcp_no_tls(ctx: Context, sources: list[str] | None = None, hold: float = 75.0) -> dict[str, Any]:
    """5000 TCP connections opened in under a second that never start TLS; held until the server closes them."""
    sources = sources or [HOST]
    socks = []
    started = time.monotonic()
    for i in range(ctx.count(5000)):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind((sources[i % len(sources)], 0))
        sock.connect_ex((HOST, ctx.server.port))
        socks.append(sock)
    opened_in = time.monotonic() - started
    closed = wait_closed_by_server(socks, started, hold)
    for sock in socks:
        sock.close()
    return {"connections": len(socks), "sources": len(sources), "opened_in_s": round(opened_in, 2),
            **held_summary(closed, hold)}


def attack_idle_tls(ctx: Context, sources: list[str] | None = None, hold: float = 130.0) -> dict[str, Any]:
    """7000 TLS connections that make one request each and then stay idle (keep-alive)."""
    sources = sources or [HOST]
    total = ctx.count(7000)
    context = ctx.ws.context()
    results: Counter[str] = Counter()
    held: list[socket.socket] = []

    async def one(i: int, gate: asyncio.Semaphore) -> None:
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    HOST, ctx.server.port, ssl=context, server_hostname="localhost",
                    local_addr=(sources[i % len(sources)], 0)), 30)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                await asyncio.wait_for(reader.readexactly(_content_length(head)), 30)
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError) as err:
                results[f"refused: {type(err).__name__}"] += 1
                return
            results["idle after one request"] += 1
            connections.append((reader, writer))
            held.append(writer.get_extra_info("socket"))

    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def run() -> dict[str, Any]:
        gate = asyncio.Semaphore(64)
        started = time.monotonic()
        await asyncio.gather(*(one(i, gate) for i in range(total)))
        opened_in = time.monotonic() - started
        deadline = started + hold
        closed_at: list[float | None] = [None] * len(connections)

        async def watch(index: int, reader: asyncio.StreamReader) -> None:
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(reader.read(), max(0.1, deadline - time.monotonic()))
                closed_at[index] = time.monotonic() - started
        await asyncio.gather(*(watch(i, r) for i, (r, _) in enumerate(connections)))
        for _, writer in connections:
            writer.transport.abort()
        return {"connections_tried": total, "sources": len(sources), **dict(results),
                "handshakes_and_requests_in_s": round(opened_in, 1), **held_summary(closed_at, hold)}

    return asyncio.run(run())


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _send_body(ws: Workspace, port: int, head: bytes, body: bytes, rcvbuf: int | None = None) -> ssl.SSLSocket | str:
    try:
        conn = tls_connect(ws, port, rcvbuf=rcvbuf)
    except OSError as err:
        return f"connect: {type(err).__name__}"
    try:
        conn.sendall(head + body)
    except OSError as err:
        conn.close()
        return f"send: {type(err).__name__}"
    return conn


def attack_unread_answers(ctx: Context, body: bytes, clients: int = 8, hold: float = 60.0) -> dict[str, Any]:
    """Clients (4 KiB receive buffer) that send a review and never read the answer."""
    head = post_head(len(body))
    outcomes: list[ssl.SSLSocket | str] = [""] * ctx.count(clients)

    def send(i: int) -> None:
        outcomes[i] = _send_body(ctx.ws, ctx.server.port, head, body, rcvbuf=4096)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(outcomes))]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=hold)
    socks = [o for o in outcomes if isinstance(o, ssl.SSLSocket)]
    closed = wait_closed_by_server(socks, started, hold)
    for sock in socks:
        sock.close()
    ctx.after = lambda: _size_answer(ctx, head, body)
    return {"body_bytes": len(body), "clients": len(outcomes), "sent": len(socks),
            "not_sent": dict(Counter(o for o in outcomes if isinstance(o, str))), **held_summary(closed, hold)}


def _size_answer(ctx: Context, head: bytes, body: bytes) -> None:
    """One client that reads: how large the answer to `body` is."""
    try:
        with tls_connect(ctx.ws, ctx.server.port, timeout=120) as conn:
            conn.sendall(head + body)
            status, answer = _read_answer(conn)
    except OSError as err:
        ctx.notes["answer"] = f"not read: {type(err).__name__}"
        return
    ctx.notes["answer"] = f"{status}, {len(answer)} bytes"
    ctx.largest_answer = max(ctx.largest_answer, len(answer))


def attack_slow_reader(ctx: Context, body: bytes, limit: float = 240.0, pause: float = 0.05) -> dict[str, Any]:
    """One client with a 4 KiB receive buffer that keeps reading, 4 KiB every 50 ms (80 KiB/s)."""
    started = time.monotonic()
    outcome = _send_body(ctx.ws, ctx.server.port, post_head(len(body)), body, rcvbuf=4096)
    if isinstance(outcome, str):
        return {"body_bytes": len(body), "error": outcome}
    conn = outcome
    data = b""
    expected: int | None = None
    status = None
    ended = "complete"
    conn.settimeout(30)
    try:
        while time.monotonic() - started < limit:
            chunk = conn.recv(4096)
            time.sleep(pause)
            if not chunk:
                ended = "closed by the server"
                break
            data += chunk
            if expected is None and b"\r\n\r\n" in data:
                head, _, _ = data.partition(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                expected = len(head) + 4 + _content_length(head)
            if expected is not None and len(data) >= expected:
                break
        else:
            ended = f"stopped by the benchmark after {limit:g} s"
    except OSError as err:
        ended = f"error: {type(err).__name__}"
    finally:
        conn.close()
    elapsed = time.monotonic() - started
    answer_bytes = len(data) - (data.find(b"\r\n\r\n") + 4 if b"\r\n\r\n" in data else 0)
    ctx.largest_answer = max(ctx.largest_answer, answer_bytes)
    return {"body_bytes": len(body), "status": status, "received": len(data), "expected": expected,
            "ended": ended if expected is None or len(data) >= expected or ended != "complete" else "short",
            "seconds": round(elapsed, 1), "kib_per_s": round(len(data) / 1024 / elapsed, 1)}


def attack_big_reviews_loop(ctx: Context, body: bytes, clients: int = 8, duration: float = 20.0) -> dict[str, Any]:
    """Clients posting a large review in a loop on keep-alive connections, reading each answer."""
    head = post_head(len(body))
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + duration

    def client() -> None:
        conn: ssl.SSLSocket | None = None
        while time.monotonic() < deadline:
            try:
                if conn is None:
                    conn = tls_connect(ctx.ws, ctx.server.port, timeout=60)
                started = time.monotonic()
                conn.sendall(head + body)
                status, answer = _read_answer(conn)
                with lock:
                    statuses[str(status)] += 1
                    latencies.append(time.monotonic() - started)
                    ctx.largest_answer = max(ctx.largest_answer, len(answer))
            except OSError as err:
                with lock:
                    statuses[type(err).__name__] += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(ctx.count(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.sort()
    return {"body_bytes": len(body), "clients": len(threads), "statuses": dict(statuses),
            "p50_s": round(_percentile(latencies, 50), 3), "max_s": round(latencies[-1], 3) if latencies else None}


def attack_big_head(ctx: Context, requests: int = 100) -> dict[str, Any]:
    """Request heads of 75-125 KB, each sent in one write on a new connection."""
    statuses: Counter[str] = Counter()
    rng = random.Random(9)
    for _ in range(ctx.count(requests)):
        filler = b"a" * rng.randint(75_000, 125_000)
        try:
            with tls_connect(ctx.ws, ctx.server.port) as conn:
                # Corked: the kernel sends the TLS records together, so that the server reads the head at once.
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
                conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Filler: %s\r\n\r\n" % filler)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
                status, answer = _read_answer(conn)
                statuses[str(status)] += 1
                ctx.largest_answer = max(ctx.largest_answer, len(answer))
        except OSError as err:
            statuses[type(err).__name__] += 1
    return {"requests": sum(statuses.values()), "statuses": dict(statuses)}


def attack_huge_namespace(ctx: Context, requests: int = 20) -> dict[str, Any]:
    """Reviews whose namespace is 1 MiB long: how long do the server's log lines get?"""
    before = ctx.server.log.stat().st_size
    statuses: Counter[str] = Counter()
    body = review_body(identical_blankets(1), namespace="n" * MIB)
    with tls_connect(ctx.ws, ctx.server.port) as conn:
        for _ in range(ctx.count(requests)):
            conn.sendall(post_head(len(body)) + body)
            status, answer = _read_answer(conn)
            statuses[str(status)] += 1
            ctx.largest_answer = max(ctx.largest_answer, len(answer))
    time.sleep(0.5)
    with ctx.server.log.open("rb") as log:
        log.seek(before)
        lines = log.read().splitlines()
    return {"requests": sum(statuses.values()), "statuses": dict(statuses),
            "longest_log_line": max((len(line) for line in lines), default=0),
            "log_bytes_written": sum(len(line) + 1 for line in lines)}


def attack_pipeline_flood(ctx: Context, connections: int = 16, hold: float = 30.0) -> dict[str, Any]:
    """Connections that each send 256 KiB of pipelined GET requests in one go and never read."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    payload = request * (256 * 1024 // len(request))
    socks = []
    tried = ctx.count(connections)
    started = time.monotonic()
    for _ in range(tried):
        outcome = _send_body(ctx.ws, ctx.server.port, b"", payload, rcvbuf=4096)
        if isinstance(outcome, ssl.SSLSocket):  # else reset by the server while still sending
            socks.append(outcome)
    closed = wait_closed_by_server(socks, started, hold)
    for sock in socks:
        sock.close()
    return {"connections_tried": tried, "sent_whole": len(socks), "requests_each": payload.count(b"GET"),
            **held_summary(closed, hold)}


def attack_many_headers(ctx: Context, connections: int = 64, hold: float = 20.0) -> dict[str, Any]:
    """Connections that each send a POST head made of thousands of tiny headers, within the head limit, then stall
    in the body."""
    headers = b"".join(b"h%d: v\r\n" % i for i in range(6000))
    head = post_head(1000, extra=headers)
    socks = []
    started = time.monotonic()
    for _ in range(ctx.count(connections)):
        outcome = _send_body(ctx.ws, ctx.server.port, head, b"{")
        if isinstance(outcome, ssl.SSLSocket):
            socks.append(outcome)
    closed = wait_closed_by_server(socks, started, hold)
    for sock in socks:
        sock.close()
    return {"connections": len(socks), "head_bytes": len(head), **held_summary(closed, hold)}


@dataclass(frozen=True)
class Attack:
    name: str
    what: str
    run: Callable[[Context], dict[str, Any]]


def attacks() -> list[Attack]:
    six_nine = lambda: review_body(distinct_blankets(100_000))  # noqa: E731 - built when the attack runs
    six_six = lambda: review_body(identical_blankets(300_000))  # noqa: E731
    return [
        Attack("tcp-no-tls", "5000 TCP connections that never start TLS", attack_tcp_no_tls),
        Attack("tcp-no-tls-spread", "the same from 64 source addresses",
               lambda ctx: attack_tcp_no_tls(ctx, SPREAD_SOURCES)),
        Attack("idle-tls", "7000 idle keep-alive TLS connections", attack_idle_tls),
        Attack("idle-tls-spread", "the same from 64 source addresses",
               lambda ctx: attack_idle_tls(ctx, SPREAD_SOURCES)),
        Attack("unread-answers", "6.9 MB review, 100k distinct blanket tolerations, 8 clients never read",
               lambda ctx: attack_unread_answers(ctx, six_nine())),
        Attack("unread-answers-at-limit", "the same, body at maxBodyBytes",
               lambda ctx: attack_unread_answers(ctx, sized(distinct_blankets, ctx.max_body))),
        Attack("slow-reader", "6.9 MB review, 4 KiB receive buffer, reads", lambda ctx: attack_slow_reader(
            ctx, six_nine())),
        Attack("slow-reader-at-limit", "the same, body at maxBodyBytes",
               lambda ctx: attack_slow_reader(ctx, sized(distinct_blankets, ctx.max_body))),
        Attack("big-reviews", "8 clients posting 6.6 MB reviews (300k tolerations) in a loop, 20 s",
               lambda ctx: attack_big_reviews_loop(ctx, six_six())),
        Attack("big-reviews-at-limit", "the same, body at maxBodyBytes",
               lambda ctx: attack_big_reviews_loop(ctx, sized(identical_blankets, ctx.max_body))),
        Attack("big-head", "heads of 75-125 KB in one read", attack_big_head),
        Attack("huge-namespace", "a 1 MiB namespace in a review", attack_huge_namespace),
        Attack("pipeline-flood", "16 connections, 256 KiB of pipelined GETs each, never read", attack_pipeline_flood),
        Attack("many-headers", "64 connections, 6000 tiny headers each, stalled body", attack_many_headers),
    ]


# --- one attack, measured -----------------------------------------------------------------------------------------

def run_attack(attack: Attack, ws: Workspace, scale: float, settle: float,
               say: Callable[[str], None]) -> dict[str, Any]:
    server = Server(ws, attack.name, [])
    try:
        probe = Probe(server, ws)
        time.sleep(2.0)
        rss_before = server.memory_mib("VmRSS")
        ctx = Context(ws, server, scale, default_max_body_bytes())
        with RssSampler(server) as sampler:
            started = time.monotonic()
            attacker = attack.run(ctx)
            attack_s = time.monotonic() - started
            time.sleep(settle)
        rss_after = server.memory_mib("VmRSS")
        peak = max(server.memory_mib("VmHWM"), sampler.peak)
        probe_result = probe.finish()
        if ctx.after is not None:
            ctx.after()
        metrics = _interesting_metrics(server.metrics(ws))
    finally:
        server.stop()
    largest = max(ctx.largest_answer, int(probe_result.get("largest_answer", 0)))
    result = {"attack": attack.name, "what": attack.what, "attack_s": round(attack_s, 1),
              "rss_before_mib": round(rss_before, 1), "peak_rss_mib": round(peak, 1),
              "rss_10s_after_mib": round(rss_after, 1), "probe": probe_result, "largest_answer_bytes": largest,
              "attacker": attacker, "notes": ctx.notes, "metrics": metrics}
    say(json.dumps(result))
    return result


def _interesting_metrics(text: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line.startswith("cilium_startup_guard_") and ("refused" in line or "connections" in line
                                                          or "closed" in line):
            name, _, value = line.rpartition(" ")
            if float(value):
                found[name.removeprefix("cilium_startup_guard_")] = float(value)
    return found


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| attack | peak RSS MiB | RSS 10 s after MiB | probe answers / failures | probe p99 ms | "
            "largest answer | attacker saw |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        p = r["probe"]
        rows.append(f"| {r['attack']} | {r['peak_rss_mib']:.0f} | {r['rss_10s_after_mib']:.0f} | "
                    f"{p['answers']} / {p['failures']} | {p['p99_ms']:.0f} | {_size(r['largest_answer_bytes'])} | "
                    f"{_brief(r['attacker'])} |")
    return "\n".join(rows)


def _size(n: int) -> str:
    return f"{n / MIB:.1f} MiB" if n >= MIB else f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


def _brief(attacker: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in attacker.items() if v not in (None, {}, 0) and k != "hold_limit_s")


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "cpu_model": processes.cpu_model(), "python": platform.python_version(),
            "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated attack names (default: all)")
    parser.add_argument("--list", action="store_true", help="list the attacks and exit")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every count by this (default 1)")
    parser.add_argument("--settle", type=float, default=SETTLE_S,
                        help=f"seconds after the attack before RSS is read again (default {SETTLE_S:g})")
    parser.add_argument("--output", type=Path, help="also write the results as JSON")
    parser.add_argument("--probe", nargs=2, metavar=("PORT", "CA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe_main(int(args.probe[0]), Path(args.probe[1]))
        return
    chosen = attacks()
    if args.list:
        for attack in chosen:
            print(f"{attack.name:26} {attack.what}")
        return
    if args.only:
        names = set(args.only.split(","))
        unknown = names - {a.name for a in chosen}
        if unknown:
            parser.error(f"unknown attack(s): {', '.join(sorted(unknown))}")
        chosen = [a for a in chosen if a.name in names]
    results = []
    with tempfile.TemporaryDirectory(prefix="attacks-") as directory:
        ws = Workspace.make(Path(directory))
        for attack in chosen:
            print(f"# {attack.name}: {attack.what}", file=sys.stderr, flush=True)
            results.append(run_attack(attack, ws, args.scale, args.settle,
                                      lambda text: print(text, file=sys.stderr, flush=True)))
    print(table(results))
    if args.output:
        args.output.write_text(json.dumps({"machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
