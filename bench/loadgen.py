"""The Python load generator of bench/run.py, used when `wrk` is not installed (as in CI).

Closed loop over HTTPS keep-alive, like kube-apiserver's connection pool: each of N connections sends the next
request as soon as the answer to the last one has arrived, until the time is up. Every request carries a fresh
uid (the body is the template with its placeholder uid replaced) and every answer must be a 200 that echoes
that uid (and, with --expect-patch, carries a patch); anything else is counted as a failure.

Prints one JSON object on stdout: requests, failures, first_failure, duration_s, p50_ms, p99_ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import sys
import time
import uuid
from pathlib import Path

PLACEHOLDER = b"00000000-0000-4000-8000-000000000000"  # a uid of the usual length: Content-Length stays fixed


class Result:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.failures = 0
        self.first_failure: str | None = None

    def fail(self, why: str) -> None:
        self.failures += 1
        if self.first_failure is None:
            self.first_failure = why


async def connection(host: str, port: int, context: ssl.SSLContext, head: bytes, prefix: bytes, suffix: bytes,
                     expect_patch: bool, deadline: float, result: Result) -> None:
    reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname="localhost")
    clock = time.perf_counter
    try:
        while clock() < deadline:
            uid = str(uuid.uuid4()).encode()
            started = clock()
            writer.write(head + prefix + uid + suffix)
            answer_head = await reader.readuntil(b"\r\n\r\n")
            length = _content_length(answer_head)
            body = await reader.readexactly(length)
            result.latencies.append(clock() - started)
            if not answer_head.startswith(b"HTTP/1.1 200 "):
                result.fail(answer_head.split(b"\r\n", 1)[0].decode("latin-1"))
            elif b'"uid":"' + uid + b'"' not in body:
                result.fail(f"uid {uid.decode()} not echoed: {body[:200]!r}")
            elif expect_patch and b'"patch":"' not in body:
                result.fail(f"no patch: {body[:200]!r}")
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise ValueError(f"answer without Content-Length: {head!r}")


async def run(args: argparse.Namespace) -> dict[str, object]:
    body = args.body.read_bytes()
    prefix, found, suffix = body.partition(PLACEHOLDER)
    if not found:
        raise SystemExit(f"{args.body} does not hold the placeholder uid {PLACEHOLDER.decode()}")
    head = (f"POST {args.path} HTTP/1.1\r\nHost: localhost:{args.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    context = ssl.create_default_context(cafile=str(args.ca))
    result = Result()
    started = time.perf_counter()
    deadline = started + args.duration
    await asyncio.gather(*(connection(args.host, args.port, context, head, prefix, suffix, args.expect_patch,
                                      deadline, result) for _ in range(args.connections)))
    elapsed = time.perf_counter() - started
    latencies = sorted(result.latencies)
    return {"requests": len(latencies), "failures": result.failures, "first_failure": result.first_failure,
            "duration_s": elapsed, "p50_ms": _percentile(latencies, 50) * 1000,
            "p99_ms": _percentile(latencies, 99) * 1000}


def _percentile(ordered: list[float], pct: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/mutate")
    parser.add_argument("--ca", type=Path, required=True, help="CA that signed the server's certificate")
    parser.add_argument("--body", type=Path, required=True, help="request body with the placeholder uid")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds")
    parser.add_argument("--expect-patch", action="store_true")
    args = parser.parse_args()
    try:
        import uvloop  # the cheaper loop leaves more of this core for sending
    except ImportError:
        outcome = asyncio.run(run(args))
    else:
        outcome = uvloop.run(run(args))
    json.dump(outcome, sys.stdout)
    print()


if __name__ == "__main__":
    main()
