"""Benchmark: `cilium-startup-guard serve` (strip mode) against its floor, over HTTPS keep-alive.

    .venv/bin/python bench/run.py [--quick] [--duration S] [--warmup S] [--connections 1,16,64]
                                  [--cold-starts N] [--repeat N] [--generator auto|wrk|python] [--output FILE]

Starts each server on 127.0.0.1 (a free port, TLS with a throwaway CA) pinned to one core (sched_setaffinity, as
taskset does), and loads it from another core with each review in turn, a fresh uid on every request: the EBS CSI
node DaemonSet (tests/fixtures/daemonset_ebs_csi_node.json, stripped) and one of its pods as the DaemonSet
controller creates it (tests/fixtures/pod_daemonset_ebs_csi_node.json, gated: pod creation is a hot path), at 1, 16
and 64 keep-alive connections,
with `wrk` when it is installed and bench/loadgen.py otherwise. The floor (bench/floor.py) is a bare ASGI app on
the same uvicorn that parses the body and answers "allowed". Before anything is counted, each server's answers are
checked: the uid is echoed and, for the webhook, the patch decodes and applies (jsonpatch) and gives the expected
tolerations, readiness gate, label and annotation, and a second pass yields no patch. During the load every answer
is checked again (status, uid, patch present). Any failed check stops the run with exit status 1.

Per server and connection count: requests/s, p50 and p99 latency, server CPU time per request (utime+stime from
/proc/PID/stat over the step, divided by the requests completed), and how busy the server core was; per
server: RSS after the load and cold start (process start to the first 200 from GET /healthz). Each figure is
also given as a ratio to the floor's. Stdlib, orjson, jsonpatch and PyYAML only (all in the webhook's
dependencies); run it with the project's virtualenv.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonpatch
import orjson
import yaml

from webhook import certs

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
if str(BENCH) not in sys.path:  # imported by path (the tests) rather than run as a script
    sys.path.append(str(BENCH))

import processes  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"


@dataclass(frozen=True)
class ReviewKind:
    """A review the servers are loaded with, and where its patch writes (the pod spec and the pod metadata)."""

    fixture: str
    pod_spec: tuple[str, ...]
    pod_metadata: tuple[str, ...]


REVIEWS = {
    "daemonset": ReviewKind("daemonset_ebs_csi_node", ("spec", "template", "spec"), ("spec", "template", "metadata")),
    "pod": ReviewKind("pod_daemonset_ebs_csi_node", ("spec",), ("metadata",)),
}
PLACEHOLDER = "00000000-0000-4000-8000-000000000000"  # as in loadgen.py and post.lua
SERVERS = ("webhook", "floor")
STRIPPED_ANNOTATION = "startupguard.io/stripped-tolerations"
GATE_LABEL = "startupguard.io/gated"

# The performance targets: measured and reported here, never asserted by a test.
TARGET_CPU_RATIO = 1.5  # webhook CPU per request at 16 connections, over the floor's
TARGET_P99_MS = 10.0  # at 16 connections
TARGET_RSS_MIB = 80.0
TARGET_COLD_START_S = 1.0


class CheckFailed(Exception):
    """An answer that is not what the server must say: nothing measured after it counts."""


# --- the machine -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pinning:
    server_cpu: int | None
    load_cpu: int | None

    @staticmethod
    def choose() -> Pinning:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return Pinning(None, None)  # one core: server and load share it, say so in the report
        return Pinning(cpus[0], cpus[1])

    def pin_self(self) -> None:
        # This process and every load generator it starts run on the load core.
        if self.load_cpu is not None:
            os.sched_setaffinity(0, {self.load_cpu})

    def server_preexec(self) -> Callable[[], None] | None:
        server_cpu = self.server_cpu
        if server_cpu is None:
            return None
        return lambda: os.sched_setaffinity(0, {server_cpu})


def machine(pinning: Pinning, generator: str) -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "cpu_model": processes.cpu_model(), "python": platform.python_version(),
            "platform": platform.platform(), "generator": _generator_version(generator),
            "server_cpu": pinning.server_cpu, "load_cpu": pinning.load_cpu}


def _generator_version(generator: str) -> str:
    if generator != "wrk":
        return "bench/loadgen.py (Python, asyncio)"
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    first_line = ((out.stdout or out.stderr).splitlines() or ["wrk"])[0]
    return first_line.split(" Copyright")[0].strip()  # e.g. "wrk debian/4.1.0-3+b2 [epoll]"


def core_busy_seconds(cpu: int | None) -> float:
    """Time the core spent busy (anyone's work, interrupts included); 0 when the server is not pinned."""
    if cpu is None:
        return 0.0
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            ticks = [int(v) for v in line.split()[1:9]]  # user nice system idle iowait irq softirq steal
            return (sum(ticks) - ticks[3] - ticks[4]) / processes.CLOCK_TICKS
    return 0.0


# --- the servers -----------------------------------------------------------------------------------------------

@dataclass
class Workspace:
    directory: Path
    ca: Path
    cert: Path
    key: Path
    body: Path  # the review with PLACEHOLDER as its uid
    review: dict[str, Any]
    expected: dict[str, Any]  # mutate.strip.after of the fixture's expected outcome
    kind: ReviewKind

    @staticmethod
    def make(directory: Path, kind: ReviewKind = REVIEWS["daemonset"]) -> Workspace:
        certs.write_bundle(certs.build_bundle(*certs.default_sans()), directory)  # it makes the directory
        review = orjson.loads((FIXTURES / f"{kind.fixture}.json").read_bytes())
        template = {**review, "request": {**review["request"], "uid": PLACEHOLDER}}
        body = directory / "review.json"
        body.write_bytes(orjson.dumps(template))
        expected = yaml.safe_load((FIXTURES / "expected" / f"{kind.fixture}.yaml").read_text())["mutate"]["strip"]
        return Workspace(directory, directory / certs.CA_CERT_FILE, directory / certs.CERT_FILE,
                         directory / certs.KEY_FILE, body, review, expected["after"], kind)


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    cold_start_s: float = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        processes.stop(self.process, timeout=30)


def start_server(name: str, ws: Workspace, pinning: Pinning, attempt: int) -> Server:
    port = processes.free_port()
    tls = ["--host", "127.0.0.1", "--port", str(port), "--tls-cert", str(ws.cert), "--tls-key", str(ws.key)]
    if name == "webhook":
        command = [*processes.guard_command(), "serve", *tls, "--mode", "strip"]
    else:
        command = [sys.executable, str(BENCH / "floor.py"), *tls]
    log = ws.directory / f"{name}-{attempt}.log"
    with log.open("wb") as log_file:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                   cwd=ROOT, preexec_fn=pinning.server_preexec())
    server = Server(name, process, port, log)
    try:
        server.cold_start_s = _wait_healthy(server, ws, started)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_healthy(server: Server, ws: Workspace, started: float, timeout: float = 30.0) -> float:
    context = ssl.create_default_context(cafile=str(ws.ca))
    while time.perf_counter() - started < timeout:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{server.log.read_text()}")
        connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=5)
        try:
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return time.perf_counter() - started
        except (ConnectionError, OSError, http.client.HTTPException):
            time.sleep(0.005)
        finally:
            connection.close()
    raise RuntimeError(f"{server.name} not healthy within {timeout} s:\n{server.log.read_text()}")


# --- correctness -----------------------------------------------------------------------------------------------

def check_answers(server: Server, ws: Workspace, count: int = 5) -> int:
    """Reviews with fresh uids on one keep-alive connection; raises CheckFailed on any wrong answer."""
    context = ssl.create_default_context(cafile=str(ws.ca))
    connection = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=10)
    try:
        for _ in range(count):
            answer, uid = _post(connection, ws.review["request"]["object"], ws)
            if server.name == "webhook":
                patched = _check_patch(answer, uid, ws)
                again, uid = _post(connection, patched, ws)
                _check_allowed(again, uid)
                if "patch" in again or "patchType" in again:
                    raise CheckFailed(f"a second pass over the patched object returned a patch: {again}")
            else:
                _check_allowed(answer, uid)
                if "patch" in answer:
                    raise CheckFailed(f"the floor returned a patch: {answer}")
    finally:
        connection.close()
    return count * (2 if server.name == "webhook" else 1)


def _post(connection: http.client.HTTPSConnection, obj: dict[str, Any], ws: Workspace) -> tuple[dict[str, Any], str]:
    uid = str(uuid.uuid4())
    review = {**ws.review, "request": {**ws.review["request"], "uid": uid, "object": obj}}
    connection.request("POST", "/mutate", body=orjson.dumps(review), headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise CheckFailed(f"POST /mutate answered {response.status}: {body[:300]!r}")
    document = orjson.loads(body)
    if document.get("apiVersion") != "admission.k8s.io/v1" or document.get("kind") != "AdmissionReview":
        raise CheckFailed(f"not an admission.k8s.io/v1 AdmissionReview: {body[:300]!r}")
    answer: dict[str, Any] = document["response"]
    return answer, uid


def _check_allowed(answer: dict[str, Any], uid: str) -> None:
    if answer.get("uid") != uid:
        raise CheckFailed(f"uid {uid} not echoed: {answer.get('uid')!r}")
    if answer.get("allowed") is not True:
        raise CheckFailed(f"not allowed: {answer}")


def _check_patch(answer: dict[str, Any], uid: str, ws: Workspace) -> dict[str, Any]:
    _check_allowed(answer, uid)
    if answer.get("patchType") != "JSONPatch":
        raise CheckFailed(f"no JSONPatch in strip mode: {answer}")
    try:
        operations = json.loads(base64.b64decode(answer["patch"], validate=True))
        patched: dict[str, Any] = jsonpatch.apply_patch(ws.review["request"]["object"], operations)
    except (ValueError, jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
        raise CheckFailed(f"the patch does not decode or apply: {err}") from None
    pod_spec, pod_metadata = _at(patched, ws.kind.pod_spec), _at(patched, ws.kind.pod_metadata)
    stripped = patched["metadata"].get("annotations", {}).get(STRIPPED_ANNOTATION)
    found = {
        "tolerations": pod_spec.get("tolerations", []),
        "readinessGates": pod_spec.get("readinessGates", []),
        "gatedLabel": pod_metadata.get("labels", {}).get(GATE_LABEL) == "true",
        "strippedAnnotation": None if stripped is None else json.loads(stripped),
    }
    expected = ws.expected
    for key, value in found.items():
        if value != expected[key]:
            raise CheckFailed(f"patched object: {key} is {value!r}, expected {expected[key]!r}")
    return patched


def _at(obj: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for key in path:
        obj = obj.get(key) or {}
    return obj


# --- the load ----------------------------------------------------------------------------------------------------

@dataclass
class Step:
    connections: int
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    server_busy: float  # server CPU seconds / wall seconds of the step
    load_busy: float  # the same for the load generator
    others_on_core: float  # the rest of the server core's busy time (other processes, interrupts) / wall
    failures: int
    first_failure: str | None = None


def load(server: Server, ws: Workspace, connections: int, duration: float, generator: str,
         server_core: int | None) -> Step:
    before_core = core_busy_seconds(server_core)
    before_server = processes.cpu_seconds(server.pid)
    before_load = resource.getrusage(resource.RUSAGE_CHILDREN)
    outcome = _run_generator(server, ws, connections, duration, generator)
    after_load = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu = processes.cpu_seconds(server.pid) - before_server
    others = max(0.0, core_busy_seconds(server_core) - before_core - server_cpu)
    load_cpu = (after_load.ru_utime + after_load.ru_stime) - (before_load.ru_utime + before_load.ru_stime)
    requests = int(outcome["requests"])
    elapsed = float(outcome["duration_s"])
    failures = int(outcome["failures"]) + int(outcome.get("socket_errors", 0))
    return Step(connections=connections, requests=requests, duration_s=elapsed,
                rps=requests / elapsed if elapsed else 0.0, p50_ms=float(outcome["p50_ms"]),
                p99_ms=float(outcome["p99_ms"]),
                cpu_us_per_request=server_cpu / requests * 1e6 if requests else float("nan"),
                server_busy=server_cpu / elapsed if elapsed else 0.0,
                load_busy=load_cpu / elapsed if elapsed else 0.0,
                others_on_core=others / elapsed if elapsed else 0.0,
                failures=failures, first_failure=outcome.get("first_failure") or None)


def _run_generator(server: Server, ws: Workspace, connections: int, duration: float,
                   generator: str) -> dict[str, Any]:
    expectation = "patch" if server.name == "webhook" else "nopatch"
    if generator == "wrk":
        seconds: float = max(1, round(duration))  # wrk counts whole seconds
        command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--timeout", "10s", "--latency",
                   "-s", str(BENCH / "post.lua"), f"https://127.0.0.1:{server.port}/mutate", "--",
                   str(ws.body), expectation]
    else:
        seconds = duration
        command = [sys.executable, str(BENCH / "loadgen.py"), "--port", str(server.port), "--ca", str(ws.ca),
                   "--body", str(ws.body), "--connections", str(connections), "--duration", str(duration)]
        if expectation == "patch":
            command.append("--expect-patch")
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    for line in done.stdout.splitlines():
        if generator != "wrk":
            return dict(json.loads(line))
        if line.startswith("BENCH "):
            return dict(json.loads(line.removeprefix("BENCH ")))
    raise RuntimeError(f"no result from {command[0]}:\n{done.stdout}\n{done.stderr}")


# --- one run -----------------------------------------------------------------------------------------------------

@dataclass
class ServerRun:
    name: str
    cold_starts_s: list[float]
    checked: int
    steps: dict[int, Step]
    rss_mib: float
    peak_rss_mib: float
    decision_lines: int | None


@dataclass
class Options:
    connections: list[int]
    duration: float
    warmup: float
    cold_starts: int
    repeat: int
    generator: str
    pinning: Pinning = field(default_factory=lambda: Pinning(None, None))


def run_server(name: str, ws: Workspace, options: Options, say: Callable[[str], None]) -> ServerRun:
    cold: list[float] = []
    server = None
    for attempt in range(options.cold_starts):
        if server is not None:
            server.stop()
        server = start_server(name, ws, options.pinning, attempt)
        cold.append(server.cold_start_s)
    assert server is not None
    try:
        checked = check_answers(server, ws)
        say(f"  {name}: cold start {statistics.median(cold) * 1000:.0f} ms; {checked} answers checked")
        if options.warmup > 0:
            warm = load(server, ws, max(options.connections), options.warmup, options.generator,
                        options.pinning.server_cpu)
            _require_clean(name, warm)
        steps = {}
        for connections in options.connections:
            step = load(server, ws, connections, options.duration, options.generator, options.pinning.server_cpu)
            _require_clean(name, step)
            say(f"  {name} x{connections}: {step.rps:.0f} req/s, p99 {step.p99_ms:.2f} ms, "
                f"{step.cpu_us_per_request:.0f} us CPU/request")
            steps[connections] = step
        rss, peak = processes.memory_mib(server.pid, "VmRSS"), processes.memory_mib(server.pid, "VmHWM")
    finally:
        server.stop()
    text = server.log.read_bytes()
    decisions = text.count(b'"message":"admission decision"') if name == "webhook" else None
    if name == "webhook" and b'"level":"error"' in text:
        raise CheckFailed(f"the webhook logged an error; see {server.log}")
    return ServerRun(name, cold, checked, steps, rss, peak, decisions)


def _require_clean(name: str, step: Step) -> None:
    if step.failures or not step.requests:
        raise CheckFailed(f"{name} x{step.connections}: {step.failures} wrong answers or socket errors of "
                          f"{step.requests} (first: {step.first_failure})")


# --- the report --------------------------------------------------------------------------------------------------

STEP_METRICS = ("rps", "p50_ms", "p99_ms", "cpu_us_per_request", "server_busy", "load_busy", "others_on_core")


def summarise(runs: list[dict[str, ServerRun]], connections: Sequence[int]) -> dict[str, Any]:
    """Median over the runs and the spread (min, max) of every figure, then the webhook's ratios to the floor."""
    summary: dict[str, Any] = {}
    for name in SERVERS:
        own = [run[name] for run in runs]
        summary[name] = {
            "cold_start_s": _spread([statistics.median(r.cold_starts_s) for r in own]),
            "rss_mib": _spread([r.rss_mib for r in own]),
            "peak_rss_mib": _spread([r.peak_rss_mib for r in own]),
            "steps": {str(c): {m: _spread([getattr(r.steps[c], m) for r in own]) for m in STEP_METRICS}
                      for c in connections},
        }
    web, floor = summary["webhook"], summary["floor"]
    summary["ratios"] = {
        "cold_start_s": _ratio(web["cold_start_s"], floor["cold_start_s"]),
        "rss_mib": _ratio(web["rss_mib"], floor["rss_mib"]),
        "steps": {str(c): {m: _ratio(web["steps"][str(c)][m], floor["steps"][str(c)][m])
                           for m in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request")} for c in connections},
    }
    return summary


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _ratio(web: dict[str, float], floor: dict[str, float]) -> float:
    return web["median"] / floor["median"] if floor["median"] else float("nan")


def targets(summary: dict[str, Any], connections: Sequence[int]) -> list[dict[str, Any]]:
    if 16 not in connections:
        return []
    web = summary["webhook"]
    found = [
        ("server CPU per request at 16 connections, x floor", summary["ratios"]["steps"]["16"]["cpu_us_per_request"],
         TARGET_CPU_RATIO),
        ("p99 latency at 16 connections, ms", web["steps"]["16"]["p99_ms"]["median"], TARGET_P99_MS),
        ("RSS after load, MiB", web["rss_mib"]["median"], TARGET_RSS_MIB),
        ("cold start, s", web["cold_start_s"]["median"], TARGET_COLD_START_S),
    ]
    return [{"target": what, "measured": value, "limit": limit, "met": value <= limit} for what, value, limit in found]


def render_machine(info: dict[str, Any], options: Options) -> str:
    return "\n".join([
        f"machine: {info['cpus']} cores, {info['cpu_model']}, Python {info['python']}; "
        f"load generator: {info['generator']}",
        ("pinning: server on CPU {server_cpu}, load generator on CPU {load_cpu}".format(**info)
         if info["server_cpu"] is not None else "pinning: none (fewer than 2 cores): figures are not comparable"),
        f"{options.duration:g} s per step after {options.warmup:g} s of warm-up, "
        f"{options.repeat} run(s): medians, (min-max) when repeated"])


def render(summary: dict[str, Any], review: str, options: Options, checked: dict[str, int]) -> str:
    lines = [f"{review} review (tests/fixtures/{REVIEWS[review].fixture}.json); "
             f"answers checked before the load: {checked}", ""]
    header = ("conns", "server", "req/s", "p50 ms", "p99 ms", "CPU us/req", "server busy", "load busy",
              "others on core")
    rows: list[tuple[str, ...]] = [header]
    for c in options.connections:
        for name in ("floor", "webhook"):
            step = summary[name]["steps"][str(c)]
            ratios = summary["ratios"]["steps"][str(c)] if name == "webhook" else None
            rows.append((str(c), name,
                         _cell(step["rps"], "{:.0f}", ratios and ratios["rps"], options.repeat),
                         _cell(step["p50_ms"], "{:.2f}", ratios and ratios["p50_ms"], options.repeat),
                         _cell(step["p99_ms"], "{:.2f}", ratios and ratios["p99_ms"], options.repeat),
                         _cell(step["cpu_us_per_request"], "{:.0f}", ratios and ratios["cpu_us_per_request"],
                               options.repeat),
                         *(f"{step[m]['median'] * 100:.0f}%" for m in ("server_busy", "load_busy", "others_on_core"))))
    lines += _table(rows)
    lines.append("")
    rows = [("server", "RSS after load MiB", "peak RSS MiB", "cold start ms")]
    for name in ("floor", "webhook"):
        own = summary[name]
        is_web = name == "webhook"
        rows.append((name, _cell(own["rss_mib"], "{:.1f}", summary["ratios"]["rss_mib"] if is_web else None,
                                 options.repeat),
                     _cell(own["peak_rss_mib"], "{:.1f}", None, options.repeat),
                     _cell({k: v * 1000 for k, v in own["cold_start_s"].items()}, "{:.0f}",
                           summary["ratios"]["cold_start_s"] if is_web else None, options.repeat)))
    lines += _table(rows)
    found = targets(summary, options.connections)
    if found:
        lines += ["", "targets:"]
        lines += [f"  {'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['measured']:.3g} "
                  f"(limit {t['limit']:g})" for t in found]
    return "\n".join(lines)


def _cell(spread: dict[str, float], fmt: str, ratio: float | None, repeat: int) -> str:
    text = fmt.format(spread["median"])
    if repeat > 1:
        text += f" ({fmt.format(spread['min'])}-{fmt.format(spread['max'])})"
    if ratio is not None:
        text += f" {ratio:.2f}x"
    return text


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.rjust(w) if i > 1 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths,
                                                                                                  strict=True)))
            for row in rows]


# --- main --------------------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> tuple[Options, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 1 s per step, short warm-up, one cold start (figures are rough)")
    parser.add_argument("--duration", type=float, help="seconds of load per step (default 5, quick 1)")
    parser.add_argument("--warmup", type=float, help="seconds of unmeasured load first (default 2, quick 0.5)")
    parser.add_argument("--connections", default="1,16,64", help="comma-separated (default %(default)s)")
    parser.add_argument("--cold-starts", type=int, help="cold starts per server and run (default 3, quick 1)")
    parser.add_argument("--repeat", type=int, default=1, help="whole runs, for the spread (default 1)")
    parser.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto",
                        help="auto: wrk when installed, else bench/loadgen.py")
    parser.add_argument("--output", type=Path, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "python"
    elif generator == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed")
    connections = [int(c) for c in args.connections.split(",")]
    if len(set(connections)) != len(connections) or min(connections) < 1:
        parser.error("--connections: positive counts, each once")
    duration = args.duration if args.duration is not None else (1.0 if args.quick else 5.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 2.0)
    if generator == "wrk":  # wrk runs for whole seconds
        duration = max(1.0, float(round(duration)))
        warmup = max(1.0, float(round(warmup))) if warmup > 0 else 0.0
    options = Options(
        connections=connections, duration=duration, warmup=warmup,
        cold_starts=max(1, args.cold_starts if args.cold_starts is not None else (1 if args.quick else 3)),
        repeat=max(1, args.repeat), generator=generator, pinning=Pinning.choose())
    return options, args.output


def main(argv: Sequence[str] | None = None) -> int:
    options, output = parse_args(argv)
    options.pinning.pin_self()
    info = machine(options.pinning, options.generator)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    results: dict[str, Any] = {}
    print(render_machine(info, options))
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for review, kind in REVIEWS.items():
            ws = Workspace.make(Path(tmp) / review, kind)
            runs: list[dict[str, ServerRun]] = []
            try:
                for index in range(options.repeat):
                    say(f"{review} review: run {index + 1} of {options.repeat}")
                    # Alternate the order, so that neither server always runs on a warmer (or busier) machine.
                    order = SERVERS if index % 2 == 0 else SERVERS[::-1]
                    runs.append({name: run_server(name, ws, options, say) for name in order})
            except CheckFailed as err:
                say(f"check failed: {err}")
                if output is not None:
                    output.write_text(json.dumps({"ok": False, "error": str(err), "machine": info}, indent=2))
                return 1
            summary = summarise(runs, options.connections)
            checked = {name: sum(run[name].checked for run in runs) for name in SERVERS}
            print("\n" + render(summary, review, options, checked))
            results[review] = {
                "body_bytes": len(ws.body.read_bytes()), "checked": checked, "summary": summary,
                "targets": targets(summary, options.connections),
                "runs": [{name: _as_json(run[name]) for name in SERVERS} for run in runs]}
    if output is not None:
        output.write_text(json.dumps({
            "ok": True, "machine": info,
            "settings": {"connections": options.connections, "duration_s": options.duration,
                         "warmup_s": options.warmup, "cold_starts": options.cold_starts, "repeat": options.repeat},
            "reviews": results,
        }, indent=2))
    return 0


def _as_json(run: ServerRun) -> dict[str, Any]:
    return {"cold_starts_s": run.cold_starts_s, "checked": run.checked, "rss_mib": run.rss_mib,
            "peak_rss_mib": run.peak_rss_mib, "decision_lines": run.decision_lines,
            "steps": {str(c): vars(step) for c, step in run.steps.items()}}


if __name__ == "__main__":
    sys.exit(main())
