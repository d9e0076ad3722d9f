"""The gate controller's metrics and its plain-HTTP /metrics, /healthz and /readyz."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from webhook.controller.metrics import ControllerMetrics, ProbeServer


def test_series_exist_at_zero_from_the_start():
    metrics = ControllerMetrics()
    sample = metrics.registry.get_sample_value
    assert sample("cilium_startup_guard_gate_conditions_set_total", {"dry_run": "false"}) == 0
    assert sample("cilium_startup_guard_gates_released_total", {"reason": "max-wait", "dry_run": "false"}) == 0
    assert sample("cilium_startup_guard_cilium_endpoints_available") == 1


def test_a_dry_run_replica_counts_under_dry_run_true():
    metrics = ControllerMetrics(dry_run=True)
    assert metrics.registry.get_sample_value("cilium_startup_guard_pods_recycled_total", {"dry_run": "true"}) == 0
    assert metrics.registry.get_sample_value("cilium_startup_guard_pods_recycled_total", {"dry_run": "false"}) is None


@pytest.mark.slow  # an HTTP server
def test_probe_server_serves_metrics_health_and_readiness():
    metrics = ControllerMetrics()
    metrics.leader.set(1)
    ready = False
    server = ProbeServer(metrics, "127.0.0.1", 0, healthy=lambda: True, ready=lambda: ready).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            text = response.read().decode()
        for name in ("cilium_startup_guard_gate_conditions_set_total", "cilium_startup_guard_pods_recycled_total",
                     "cilium_startup_guard_pods_waiting", "cilium_startup_guard_gate_wait_seconds_bucket",
                     "cilium_startup_guard_leader 1.0"):
            assert name in text
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/readyz", timeout=5)
        assert refused.value.code == 503
        ready = True
        with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
            assert response.status == 200
    finally:
        server.close()


def test_the_unmanaged_gauge_follows_the_counts_and_drops_a_series_at_zero():
    metrics = ControllerMetrics()
    metrics.set_unmanaged([(("shop", "ReplicaSet"), 2), (("kube-system", "Node"), 1)])
    sample = metrics.registry.get_sample_value
    assert sample("cilium_startup_guard_unmanaged_pods", {"namespace": "shop", "owner_kind": "ReplicaSet"}) == 2
    metrics.set_unmanaged([(("shop", "ReplicaSet"), 0)])
    assert sample("cilium_startup_guard_unmanaged_pods", {"namespace": "shop", "owner_kind": "ReplicaSet"}) is None
    assert sample("cilium_startup_guard_unmanaged_pods", {"namespace": "kube-system", "owner_kind": "Node"}) == 1
