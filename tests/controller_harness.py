"""The gate controller under test: a replica with its own client, metrics and thread against the fake API server,
shrunk timings (grace 0.4 s, lease 2 s), and what the tests look at (evictions, events, plans, logs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.fakekube import FakeKube, Request
from tests.objects import agent_pod, gate_status, node
from webhook.controller.lease import LeaseConfig
from webhook.controller.loop import ControllerOptions, GateController
from webhook.controller.metrics import ControllerMetrics
from webhook.controller.reachability import connect
from webhook.controller.rules import Action, Timings

GRACE = 0.4


def options(identity: str = "replica-a", **changes: Any) -> ControllerOptions:
    base = ControllerOptions(
        timings=Timings(grace_period=GRACE, release_after=0),
        recycle_rate=600,
        lease=LeaseConfig("default", "guard", identity, lease_duration=2, renew_deadline=1.2, retry_period=0.1),
        identity=identity,
        eviction_retry_floor=0.6,
        resync_period=30,
        watch_timeout=5,
        absent_recheck=0.3,
        backoff_initial=0.05,
        backoff_max=0.4,
    )
    return replace(base, **changes)


class Replica:
    """One controller process: its own client, metrics and thread."""

    def __init__(self, kubeconfig: Path, opts: ControllerOptions) -> None:
        # As `controller` connects: urllib3 retries nothing, outages are logged once by Reachability.
        self.client = connect(kubeconfig, "fake", f"cilium-startup-guard/{opts.identity}", opts.workers)
        self.metrics = ControllerMetrics(dry_run=opts.dry_run)
        self.controller = GateController(self.client, opts, self.metrics)
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.exit_code = self.controller.run()

    def stop(self) -> int | None:
        self.controller.stop()
        self.thread.join(timeout=20)
        self.client.close()
        return self.exit_code

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def cluster(fake: FakeKube, *nodes: str, agent_ready: bool = True, tainted: bool = False) -> None:
    for name in nodes or ("node-a",):
        fake.create(node(name, tainted=tainted))
        fake.create(agent_pod(name, ready=agent_ready))


def gate_of(fake: FakeKube, name: str, namespace: str = "default") -> str | None:
    return gate_status(fake.get("pods", namespace, name))


def evictions(fake: FakeKube) -> list[Request]:
    return fake.calls("POST", "/eviction$")


def events(fake: FakeKube, reason: str) -> list[dict[str, Any]]:
    return [e for e in fake.list("events.events.k8s.io") if e["reason"] == reason]


def planned(replica: Replica, action: Action, reason: str, times: int = 1) -> None:
    """Wait until the worker has planned `action` for `reason` at least `times` times in all."""
    wait_until(lambda: replica.controller.books.plans(action, reason) >= times)


def logged(caplog: pytest.LogCaptureFixture, message: str, pod: str | None = None) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message and pod in (None, getattr(r, "pod", None))]


def lease_reads_by(fake: FakeKube, identity: str) -> int:
    return len([r for r in fake.calls("GET", "/leases/guard$") if r.user_agent == f"cilium-startup-guard/{identity}"])


