"""Benchmark: the gate controller at cluster scale, against the fake API server and an ideal client's floor.

    flock /tmp/bench.lock .venv/bin/python bench/scale.py [--quick] [--only NAMES] [--workers N] [--output FILE]

Runs `cilium-startup-guard controller` as a process of its own against tests/fakekube.py (in this process, on
127.0.0.1, TCP_NODELAY, every write delayed by --write-latency, 5 ms by default), with objects of real size
(bench/scale_objects.py), and prints each figure. Scenarios (--only picks some; all by default):

- floor:      the ideal client (bench/scale_floor.py, its own process): --burst strategic merge patches on
              pods/status over 16 keep-alive connections, no reads, no Events, against the same fake.
- burst:      --nodes nodes, --pods gated pods waiting; --burst CiliumEndpoints created at once: time until every
              condition is set, and per pod endpoint-created -> condition-written p50/p99/max, against the floor.
- trickle:    once the burst has drained, 50 endpoints a second for --trickle-seconds: p50/p99/max.
- throttled:  --throttled pods whose first pods/status patch is answered 429 with Retry-After: 5: how many were
              patched again sooner than 5 s after their 429.
- faults:     the rest of the pods: endpoints in four waves, between them a watch cut with compaction (410), a
              burst of 503s, a restart of the fake; some endpoints not ready, some pods missing theirs, some
              recreated under the same name with a stale endpoint. Lost updates and false conditions are counted.
- memory:     controller RSS (the median of three starts) with 2k and 10k gated pods (gates True, endpoints
              ready), and with 500 and 5000 nodes and no pods, without and with a Cilium agent pod each: the slope
              per pod+endpoint, per Node and per Node with its agent pod.
- unmanaged:  500 pods with no endpoint behind --recycle-rate 60 for --unmanaged-seconds: half of them gated,
              half of them ReplicaSet pods (scope all, action recycle, when the controller has --unmanaged-scope);
              evictions, GETs of pods, endpoints and owners per eviction, log lines.

Every load is bounded in count and time; a wait that times out is reported, never hangs. Exit status 1 when a
correctness check fails (a lost update, a false condition), else 0: the figures themselves are never judged here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import processes  # noqa: E402
import scale_objects as objects  # noqa: E402

from tests.fakekube import FakeKube  # noqa: E402

SCENARIOS = ("floor", "burst", "trickle", "throttled", "faults", "memory", "unmanaged")
RETRY_AFTER = 5


# --- the controller process ------------------------------------------------------------------------------------

class Controller:
    """`cilium-startup-guard controller` against the fake, its stderr in a file."""

    def __init__(self, fake: FakeKube, workdir: Path, *, grace: float, recycle_rate: float, extra: list[str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(fake.kubeconfig()), encoding="utf-8")
        self.metrics_port = processes.free_port()
        self.log_path = workdir / "controller.log"
        env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
        command = [sys.executable, "-m", "webhook", "controller", "--kubeconfig", str(kubeconfig), "--context", "fake",
                   "--lease-namespace", "default", "--metrics-port", str(self.metrics_port),
                   "--grace-period", str(grace), "--recycle-rate", str(recycle_rate), "--release-after", "0", *extra]
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self._log)

    def wait_ready(self, timeout: float = 120.0) -> bool:
        return wait(lambda: self._get("/readyz") == 200, timeout)

    def _get(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=2) as answer:
                return int(answer.status)
        except (OSError, ValueError):
            return None

    def metric(self, name: str) -> float:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as answer:
                text = answer.read().decode()
        except OSError:
            return float("nan")
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#") and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
        return total

    def rss_kib(self) -> int:
        return processes.status_kib(self.process.pid, "VmRSS") or 0

    def cpu_seconds(self) -> float:
        """utime + stime of the controller process so far."""
        return processes.cpu_seconds(self.process.pid)

    def log_lines(self) -> int:
        self._log.flush()
        return len(self.log_path.read_bytes().splitlines())

    def log_messages(self, start: int = 0) -> list[str]:
        messages = []
        for line in self.log_path.read_bytes().splitlines()[start:]:
            with contextlib.suppress(ValueError):
                messages.append(str(orjson.loads(line).get("message", "")))
        return messages

    def stop(self) -> int | None:
        code = processes.stop(self.process, timeout=30)
        self._log.close()
        return code


def supports(flags: list[str]) -> bool:
    """Whether `controller` takes these flags (the benchmark also measures older versions of it)."""
    done = subprocess.run([sys.executable, "-m", "webhook", "controller", "--help"], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    return all(flag in done.stdout for flag in flags)


def wait(predicate: Callable[[], Any], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


# --- the cluster ------------------------------------------------------------------------------------------------

class Cluster:
    """Nodes with a ready Cilium agent each, and gated pods spread over them, in the fake API server."""

    def __init__(self, fake: FakeKube, nodes: int, pods: int, *, gate_true: bool = False, endpoints: bool = False,
                 first_pod: int = 0, agents: bool = True) -> None:
        self.fake = fake
        self.node_names = [f"ip-192-168-{i // 250}-{i % 250}.us-west-2.compute.internal" for i in range(nodes)]
        for i, name in enumerate(self.node_names):
            fake.create(objects.node(name, i), share=True)
            if agents:
                fake.create(objects.agent_pod(name), share=True)
        self.pods: list[dict[str, Any]] = []
        for i in range(first_pod, first_pod + pods):
            self.add_pod(i, gate_true=gate_true, endpoint=endpoints)

    def add_pod(self, i: int, *, gate_true: bool = False, endpoint: bool = False) -> dict[str, Any]:
        namespace = objects.NAMESPACES[i % len(objects.NAMESPACES)]
        node = self.node_names[i % len(self.node_names)] if self.node_names else ""
        pod = self.fake.create(objects.gated_pod(f"ebs-csi-node-{i:05d}", namespace, node, i, gate_true=gate_true),
                               share=True)
        self.pods.append(pod)
        if endpoint:
            self.fake.create(objects.endpoint(pod), share=True)
        return pod


def key_of(pod: dict[str, Any]) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


class Patches:
    """The successful pods/status patches the fake has answered, by pod, read incrementally."""

    def __init__(self, fake: FakeKube) -> None:
        self.fake = fake
        self._seen = len(fake.answers)  # from now on: the floor's writes are not the controller's
        self.done: dict[str, float] = {}

    def update(self) -> dict[str, float]:
        answers = self.fake.answers
        end = len(answers)
        for answer in answers[self._seen:end]:
            request = answer.request
            if answer.status == 200 and request.method == "PATCH" and request.path.endswith("/status"):
                parts = request.path.split("/")  # /api/v1/namespaces/NS/pods/NAME/status
                self.done.setdefault(f"{parts[4]}/{parts[6]}", answer.at)
        self._seen = end
        return self.done

    def wait_for(self, keys: Iterable[str], timeout: float) -> bool:
        wanted = set(keys)
        return wait(lambda: wanted <= self.update().keys(), timeout, step=0.1)


def latencies(created: dict[str, float], done: dict[str, float]) -> dict[str, Any]:
    values = sorted(done[k] - created[k] for k in created if k in done)
    missing = len(created) - len(values)
    if not values:
        return {"count": 0, "missing": missing}
    return {"count": len(values), "missing": missing, "p50_s": round(percentile(values, 50), 3),
            "p99_s": round(percentile(values, 99), 3), "max_s": round(values[-1], 3),
            "all_set_s": round(max(done[k] for k in created if k in done) - min(created.values()), 3)}


def percentile(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, max(0, round(p / 100 * len(values) + 0.5) - 1))]


# --- scenarios --------------------------------------------------------------------------------------------------

def run_floor(fake: FakeKube, pods: list[dict[str, Any]]) -> dict[str, Any]:
    lines = b"".join(orjson.dumps([p["metadata"]["namespace"], p["metadata"]["name"], p["metadata"]["uid"]]) + b"\n"
                     for p in pods)
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "scale_floor.py"), "--url", fake.url,
                           "--connections", "16"], input=lines, capture_output=True, timeout=600, check=True)
    result = orjson.loads(done.stdout)
    times = sorted(result["done"].values())
    return {"writes": result["writes"], "failures": result["failures"], "seconds": round(result["seconds"], 3),
            "p50_s": round(percentile(times, 50), 3), "p99_s": round(percentile(times, 99), 3),
            "writes_per_s": round(result["writes"] / result["seconds"], 1)}


def reset_conditions(fake: FakeKube, pods: list[dict[str, Any]]) -> None:
    """Undo the floor's writes, so that the same pods wait on their gate again."""
    for pod in pods:
        fake.modify("pods", pod["metadata"]["namespace"], pod["metadata"]["name"], lambda p: p["status"].update(
            conditions=[c for c in p["status"]["conditions"] if c["type"] != objects.GATE]))


def create_endpoints(fake: FakeKube, pods: list[dict[str, Any]], created: dict[str, float], *,
                     per_second: float | None = None, state: str = "ready") -> None:
    started = time.monotonic()
    for n, pod in enumerate(pods):
        if per_second:
            delay = started + n / per_second - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        created[key_of(pod)] = time.monotonic()
        fake.create(objects.endpoint(pod, state=state), share=True)


def main_run(args: argparse.Namespace, results: dict[str, Any], workdir: Path) -> bool:
    """floor, burst, trickle, throttled and faults share one fake and one controller process."""
    wanted = set(args.only)
    fake = FakeKube(write_latency=args.write_latency).start()
    ok = True
    controller: Controller | None = None
    try:
        cluster = Cluster(fake, args.nodes, args.pods)
        fake.compact()
        pods = cluster.pods
        burst = pods[:args.burst]
        trickle = pods[args.burst:args.burst + args.trickle_rate * args.trickle_seconds]
        throttled_from = args.burst + len(trickle)
        throttled = pods[throttled_from:throttled_from + args.throttled]
        rest = pods[throttled_from + len(throttled):]
        if "floor" in wanted:
            results["floor"] = floor = run_floor(fake, burst)
            print(f"floor: {floor['writes']} writes in {floor['seconds']} s ({floor['writes_per_s']}/s), "
                  f"p50 {floor['p50_s']} s, p99 {floor['p99_s']} s, {floor['failures']} failures", flush=True)
            reset_conditions(fake, burst)
            fake.compact()
        controller = Controller(fake, workdir / "main", grace=3600, recycle_rate=5, extra=args.controller_args)
        if not controller.wait_ready():
            raise RuntimeError(f"the controller did not become ready; see {controller.log_path}")
        wait(lambda: controller is not None and controller.metric("cilium_startup_guard_pods_waiting") >= len(pods),
             60)
        results["rss_waiting_kib"] = controller.rss_kib()
        patches = Patches(fake)
        if "burst" in wanted:
            created: dict[str, float] = {}
            cpu = controller.cpu_seconds()
            create_endpoints(fake, burst, created)
            patches.wait_for(created, args.timeout)
            results["burst"] = burst_result = latencies(created, patches.update())
            burst_result["controller_cpu_ms_per_condition"] = round(
                (controller.cpu_seconds() - cpu) * 1000 / max(1, len(created)), 2)
            floor_s = results.get("floor", {}).get("seconds")
            if floor_s:
                burst_result["p99_over_floor"] = round(burst_result.get("p99_s", 0) / floor_s, 2)
                burst_result["max_over_floor"] = round(burst_result.get("max_s", 0) / floor_s, 2)
            burst_result["rss_kib"] = controller.rss_kib()
            print(f"burst: {burst_result}", flush=True)
            time.sleep(2)  # let Events and the queue drain
        if "trickle" in wanted:
            created = {}
            create_endpoints(fake, trickle, created, per_second=args.trickle_rate)
            patches.wait_for(created, 30)
            results["trickle"] = trickle_result = latencies(created, patches.update())
            print(f"trickle: {trickle_result}", flush=True)
        if "throttled" in wanted and throttled:
            results["throttled"] = throttled_result = run_throttled(fake, throttled, patches, args.timeout)
            print(f"throttled: {throttled_result}", flush=True)
        if "faults" in wanted and rest:
            results["faults"] = faults = run_faults(fake, cluster, rest, patches, controller, args.timeout)
            print(f"faults: {faults}", flush=True)
            ok = ok and faults["lost_updates"] == 0 and faults["false_conditions"] == 0
        results["rss_end_kib"] = controller.rss_kib()
        results["log_lines"] = controller.log_lines()
    finally:
        if controller is not None:
            results["exit_code"] = controller.stop()
        fake.stop()
    return ok


def run_throttled(fake: FakeKube, pods: list[dict[str, Any]], patches: Patches, timeout: float) -> dict[str, Any]:
    targets = {f"/api/v1/namespaces/{p['metadata']['namespace']}/pods/{p['metadata']['name']}/status" for p in pods}
    refused: set[str] = set()

    def first_patch(request: Any) -> bool:
        if request.path in targets and request.path not in refused:
            refused.add(request.path)
            return True
        return False

    fault = fake.throttle(r"/status$", retry_after=RETRY_AFTER, when=first_patch)
    created: dict[str, float] = {}
    start = len(fake.answers)
    create_endpoints(fake, pods, created)
    patches.wait_for(created, timeout + RETRY_AFTER)
    fake.clear_fault(fault)
    first_429: dict[str, float] = {}
    sooner, retried = 0, 0
    for answer in fake.answers[start:]:
        path = answer.request.path
        if path not in targets or answer.request.method != "PATCH":
            continue
        if answer.status == 429 and path not in first_429:
            first_429[path] = answer.at
        elif path in first_429 and answer.request.at > first_429[path]:
            retried += 1
            if answer.request.at - first_429[path] < RETRY_AFTER:
                sooner += 1
            first_429[path] = float("inf")  # count each pod's first retry only
    result = latencies(created, patches.update())
    return {"pods": len(pods), "answered_429": len(refused), "retried": retried,
            "retried_sooner_than_retry_after": sooner, **result}


def run_faults(fake: FakeKube, cluster: Cluster, pods: list[dict[str, Any]], patches: Patches,
               controller: Controller, timeout: float) -> dict[str, Any]:
    tenth = max(1, len(pods) // 13)
    not_ready, no_endpoint, replaced = pods[:tenth], pods[tenth:2 * tenth], pods[2 * tenth:3 * tenth]
    ready = pods[3 * tenth:]
    waves = [ready[i::4] for i in range(4)]
    created: dict[str, float] = {}
    log_start = controller.log_lines()
    # Pods recreated under the same name keep a CiliumEndpoint owned by their predecessor: no condition for them.
    for pod in replaced:
        metadata = pod["metadata"]
        fake.delete("pods", metadata["namespace"], metadata["name"])
        index = int(metadata["name"].rsplit("-", 1)[1])
        namespace = objects.NAMESPACES[index % len(objects.NAMESPACES)]
        fresh = objects.gated_pod(metadata["name"], namespace, pod["spec"]["nodeName"], index)
        fake.create(fresh, share=True)
        fake.create(objects.endpoint(fresh, owner_uid=metadata["uid"]), share=True)
    create_endpoints(fake, not_ready, {}, state="waiting-for-identity")
    faults = [
        ("watch cut with compaction", lambda: (fake.drop_watches(), fake.compact())),
        ("503 for 2 s", lambda: fake.outage(2.0)),
        ("restart, down 1 s", lambda: fake.restart(down_for=1.0)),
    ]
    for n, wave in enumerate(waves):
        create_endpoints(fake, wave, created)
        if n < len(faults):
            time.sleep(0.3)
            faults[n][1]()
    patches.wait_for(created, timeout)
    time.sleep(2)  # anything wrong would be written by now
    done = patches.update()
    wrongly_patched = {key_of(p) for p in not_ready + no_endpoint + replaced} & done.keys()
    stored = {key_of(p): p for p in fake.list("pods")}
    gate_true = {k for k, p in stored.items() if any(c.get("type") == objects.GATE and c.get("status") == "True"
                                                      for c in p["status"].get("conditions") or [])}
    wrong = {key_of(p) for p in not_ready + no_endpoint + replaced} & gate_true
    lost = [k for k in created if k not in gate_true]
    messages = controller.log_messages(log_start)
    return {"pods": len(pods), "ready_endpoints": len(created), "not_ready": len(not_ready),
            "no_endpoint": len(no_endpoint), "replaced": len(replaced), "faults": [f[0] for f in faults],
            "lost_updates": len(lost), "false_conditions": len(wrong | wrongly_patched), **latencies(created, done),
            "log_lines": len(messages), "log_messages": _top(messages, 8)}


def _top(messages: list[str], n: int) -> dict[str, int]:
    """The n most frequent log messages, each cut to 120 characters, with their counts."""
    counts: dict[str, int] = {}
    for message in messages:
        counts[message[:120]] = counts.get(message[:120], 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:n])


def run_memory(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    def rss(nodes: int, pods: int, agents: bool = True) -> int:
        """The median of --memory-repeat runs: a controller's RSS moves by a few MiB from one start to the next."""
        return sorted(rss_once(nodes, pods, agents) for _ in range(args.memory_repeat))[args.memory_repeat // 2]

    def rss_once(nodes: int, pods: int, agents: bool) -> int:
        fake = FakeKube(write_latency=args.write_latency).start()
        controller = None
        try:
            Cluster(fake, nodes, pods, gate_true=True, endpoints=True, agents=agents)
            fake.compact()
            controller = Controller(fake, workdir / f"memory-{nodes}-{pods}-{agents}", grace=3600, recycle_rate=5,
                                    extra=args.controller_args)
            if not controller.wait_ready():
                raise RuntimeError(f"the controller did not become ready; see {controller.log_path}")
            time.sleep(args.settle)
            return controller.rss_kib()
        finally:
            if controller is not None:
                controller.stop()
            fake.stop()

    small, large = args.memory_pods
    few, many = args.memory_nodes
    at_small, at_large = rss(args.nodes, small), rss(args.nodes, large)
    bare_few, bare_many = rss(few, 0, agents=False), rss(many, 0, agents=False)
    nodes_few, nodes_many = rss(few, 0), rss(many, 0)
    result = {f"rss_{small}_pods_kib": at_small, f"rss_{large}_pods_kib": at_large,
              "kib_per_pod_with_endpoint": round((at_large - at_small) / (large - small), 2),
              f"rss_{few}_nodes_kib": bare_few, f"rss_{many}_nodes_kib": bare_many,
              "kib_per_node": round((bare_many - bare_few) / (many - few), 2),
              f"rss_{few}_nodes_with_agents_kib": nodes_few, f"rss_{many}_nodes_with_agents_kib": nodes_many,
              "kib_per_node_with_its_agent_pod": round((nodes_many - nodes_few) / (many - few), 2)}
    print(f"memory: {result}", flush=True)
    return result


def run_unmanaged(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    fake = FakeKube(write_latency=args.write_latency).start()
    controller = None
    scope_all = supports(["--unmanaged-scope"])
    try:
        gated = args.unmanaged_pods // 2 if scope_all else args.unmanaged_pods
        cluster = Cluster(fake, 50, gated)
        if scope_all:
            owners = [fake.create(objects.replica_set(f"web-{i:03d}", objects.NAMESPACES[i % 5]))
                      for i in range(args.unmanaged_pods // 20)]
            for i in range(args.unmanaged_pods - gated):
                owner = owners[i % len(owners)]
                fake.create(objects.workload_pod(f"{owner['metadata']['name']}-{i:05d}", owner,
                                                 cluster.node_names[i % 50], 50_000 + i), share=True)
        fake.compact()
        extra = ["--unmanaged-scope", "all", "--unmanaged-action", "recycle"] if scope_all else []
        controller = Controller(fake, workdir / "unmanaged", grace=1, recycle_rate=60,
                                extra=[*extra, *args.controller_args])
        if not controller.wait_ready():
            raise RuntimeError(f"the controller did not become ready; see {controller.log_path}")
        log_start, start = controller.log_lines(), len(fake.requests)
        time.sleep(args.unmanaged_seconds)
        requests = fake.requests[start:]
        evictions = sum(1 for a in fake.answers if a.request.path.endswith("/eviction") and a.status == 201)
        pod_gets = sum(1 for r in requests if r.method == "GET" and "/pods/" in r.path and "watch" not in r.query)
        endpoint_gets = sum(1 for r in requests if r.method == "GET" and "/ciliumendpoints/" in r.path)
        owner_gets = sum(1 for r in requests if r.method == "GET" and "/replicasets/" in r.path)
        messages = controller.log_messages(log_start)
        result = {"pods": args.unmanaged_pods, "scope_all": scope_all, "seconds": args.unmanaged_seconds,
                  "evictions": evictions, "pod_gets": pod_gets, "endpoint_gets": endpoint_gets,
                  "owner_gets": owner_gets,
                  "reads_per_eviction": round((pod_gets + endpoint_gets + owner_gets) / max(1, evictions), 2),
                  "log_lines": len(messages),
                  "log_messages": _top(messages, 6)}
        print(f"unmanaged: {result}", flush=True)
        return result
    finally:
        if controller is not None:
            controller.stop()
        fake.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small numbers, a few seconds each")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--write-latency", type=float, default=0.005, help="seconds added to every write (0.005)")
    parser.add_argument("--workers", type=int, help="passed to the controller as --workers, when given")
    parser.add_argument("--controller-arg", action="append", default=[], dest="controller_args",
                        help="one more argument for the controller (repeatable)")
    parser.add_argument("--output", type=Path, help="write the results as JSON here too")
    parser.add_argument("--logs", type=Path, help="keep the controllers' logs in this directory")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the controller and the fake are stopped
    args.only = [s for s in args.only.split(",") if s]
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if args.workers is not None:
        args.controller_args += ["--workers", str(args.workers)]
    big = not args.quick
    args.nodes, args.pods, args.burst = (500, 10_000, 2_000) if big else (20, 600, 100)
    args.trickle_rate, args.trickle_seconds = 50, (10 if big else 2)
    args.throttled = 1_000 if big else 40
    args.timeout = 300.0 if big else 60.0
    args.memory_pods, args.memory_nodes = ((2_000, 10_000), (500, 5_000)) if big else ((100, 400), (20, 100))
    args.memory_repeat = 3 if big else 1
    args.settle = 3.0 if big else 0.5
    args.unmanaged_pods, args.unmanaged_seconds = (500, 30.0) if big else (50, 3.0)
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "load_average": os.getloadavg()},
                               "write_latency_s": args.write_latency, "controller_args": args.controller_args}
    ok = True
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        workdir = args.logs or Path(tmp)
        if set(args.only) & {"floor", "burst", "trickle", "throttled", "faults"}:
            ok = main_run(args, results, workdir) and ok
        if "memory" in args.only:
            results["memory"] = run_memory(args, workdir)
        if "unmanaged" in args.only:
            results["unmanaged"] = run_unmanaged(args, workdir)
    results["ok"] = ok
    text = json.dumps(results, indent=2)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
