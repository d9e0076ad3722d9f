"""The gate controller's Prometheus metrics and its plain-HTTP /metrics, /healthz and /readyz.
prometheus-client and the stdlib HTTP server only: no FastAPI, no kubernetes client.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# From a quick start (seconds) to the default --release-after and past it.
WAIT_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900, 1800, 3600)


# Each controller owns a registry (not the process-wide default), so tests can run several in one process.
# Counters carry dry_run="true" when a --dry-run replica counts what it would have done.
class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, dry_run: bool = False) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.conditions_set = Counter(
            "cilium_startup_guard_gate_conditions_set", "Gate conditions set True because Cilium manages the pod.",
            ["dry_run"], registry=r)
        self.pods_recycled = Counter(
            "cilium_startup_guard_pods_recycled", "Unmanaged pods evicted so that they come back under Cilium.",
            ["dry_run"], registry=r)
        self.gates_released = Counter(
            "cilium_startup_guard_gates_released", "Gates set True by a fail-safe, without a ready CiliumEndpoint.",
            ["reason", "dry_run"], registry=r)
        self.evictions_refused = Counter(
            "cilium_startup_guard_evictions_refused", "Evictions refused (429), usually by a PodDisruptionBudget.",
            registry=r)
        self.pods_waiting = Gauge(
            "cilium_startup_guard_pods_waiting", "Gated pods whose gate condition is not True yet.", registry=r)
        self.gate_wait = Histogram(
            "cilium_startup_guard_gate_wait_seconds", "From pod start to its gate condition set True.",
            ["dry_run"], buckets=WAIT_BUCKETS, registry=r)
        self.leader = Gauge(
            "cilium_startup_guard_leader", "1 while this replica holds the leader Lease.", registry=r)
        self.endpoints_available = Gauge(
            "cilium_startup_guard_cilium_endpoints_available",
            "1 while the API serves ciliumendpoints; 0 means gates are released after the grace period.",
            registry=r)
        self.endpoints_available.set(1)
        self.events = Counter(
            "cilium_startup_guard_events", "Events by outcome: queued, duplicate (the same pod and reason within 10 "
            "minutes), dropped (the queue was full, or this replica stopped leading), failed.",
            ["outcome"], registry=r)
        self.recycle_waiting = Gauge(
            "cilium_startup_guard_recycle_waiting", "Unmanaged pods waiting in line for the recycling rate limit.",
            registry=r)
        # Set by the replica that reconciles (the leader, or a --dry-run replica), in every action mode, so that
        # alerts need no recycling; a series goes away when its count drops to zero.
        self.unmanaged_pods = Gauge(
            "cilium_startup_guard_unmanaged_pods",
            "Pods Cilium does not manage past the grace period, by namespace and controlling owner kind.",
            ["namespace", "owner_kind"], registry=r)
        # Series exist (at zero) from the start, so that rate() and alerts see the first increment.
        mode = "true" if dry_run else "false"
        for counter in (self.conditions_set, self.pods_recycled, self.gate_wait):
            counter.labels(dry_run=mode)
        for reason in ("max-wait", "no-cilium-endpoints", "host-network"):
            self.gates_released.labels(reason=reason, dry_run=mode)
        for outcome in ("queued", "duplicate", "dropped", "failed"):
            self.events.labels(outcome=outcome)

    def set_unmanaged(self, changed: list[tuple[tuple[str, str], int]]) -> None:
        for (namespace, owner_kind), count in changed:
            if count:
                self.unmanaged_pods.labels(namespace=namespace, owner_kind=owner_kind).set(count)
            else:
                self.unmanaged_pods.remove(namespace, owner_kind)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ProbeServer:
    """/metrics, /healthz and /readyz over plain HTTP on a thread of its own."""

    def __init__(self, metrics: ControllerMetrics, host: str, port: int, *,
                 healthy: Callable[[], bool], ready: Callable[[], bool]) -> None:
        self._server = ThreadingHTTPServer((host, port), _handler(metrics, healthy, ready))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), name="probes", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> ProbeServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(metrics: ControllerMetrics, healthy: Callable[[], bool],
             ready: Callable[[], bool]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/metrics":
                self._answer(200, metrics.render(), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok = (healthy if path == "/healthz" else ready)()
                self._answer(200 if ok else 503, b"ok\n" if ok else b"not ok\n", "text/plain")
            else:
                self._answer(404, b"not found\n", "text/plain")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every few seconds would drown the JSON logs

    return Handler
