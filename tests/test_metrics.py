"""GET /metrics: what is counted, with which labels, in a registry of each app's own."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import AppClient, daemonset_review
from webhook.app import create_app
from webhook.config import build_settings
from webhook.enums import Endpoint, Mode
from webhook.metrics import MAX_NAMESPACES, OTHER_NAMESPACE, Metrics

PREFIX = "cilium_startup_guard_"


def _client(mode: Mode = Mode.WARN) -> AppClient:
    return AppClient(create_app(build_settings(mode=mode)))


def _samples(client: AppClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def _value(samples, name: str, **labels: str) -> float:
    return samples.get((PREFIX + name, tuple(sorted(labels.items()))), 0.0)


def _deployment_review() -> dict:
    review = daemonset_review()
    review["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}
    return review


@pytest.mark.parametrize("mode, endpoint, review_factory, outcome", [
    pytest.param(Mode.WARN, "validate", _deployment_review, "allowed", id="other-kind-allowed"),
    pytest.param(Mode.WARN, "validate", daemonset_review, "warned", id="warn"),
    pytest.param(Mode.STRIP, "mutate", daemonset_review, "patched", id="strip"),
    pytest.param(Mode.DENY, "validate", daemonset_review, "denied", id="deny"),
    pytest.param(Mode.WARN, "mutate", lambda: {"apiVersion": "v1"}, "error", id="bad-request"),
])
def test_each_outcome_is_counted_once(mode, endpoint, review_factory, outcome):
    client = _client(mode)
    client.post(f"/{endpoint}", json=review_factory())
    samples = _samples(client)
    assert _value(samples, "admission_requests_total", endpoint=endpoint, outcome=outcome) == 1
    total = sum(v for (name, _), v in samples.items() if name == PREFIX + "admission_requests_total")
    assert total == 1
    assert _value(samples, "admission_duration_seconds_count", endpoint=endpoint) == 1


def test_blanket_tolerations_seen_and_stripped_by_namespace():
    client = _client(Mode.STRIP)
    two = [{"operator": "Exists"}, {"operator": "Exists", "effect": "NoExecute"}]
    client.post("/mutate", json=daemonset_review(namespace="logging", tolerations=two))
    client.post("/mutate", json=daemonset_review(namespace="monitoring"))
    client.post("/validate", json=daemonset_review(namespace="logging", tolerations=two))
    client.post("/mutate", json=daemonset_review(namespace="logging", tolerations=[{"key": "a", "operator": "Exists"}]))
    samples = _samples(client)
    assert _value(samples, "blanket_tolerations_seen_total", endpoint="mutate", namespace="logging") == 2
    assert _value(samples, "blanket_tolerations_seen_total", endpoint="mutate", namespace="monitoring") == 1
    assert _value(samples, "blanket_tolerations_seen_total", endpoint="validate", namespace="logging") == 2
    assert _value(samples, "blanket_tolerations_stripped_total", namespace="logging") == 2
    assert _value(samples, "blanket_tolerations_stripped_total", namespace="monitoring") == 1


def test_warn_mode_sees_but_does_not_strip():
    client = _client(Mode.WARN)
    client.post("/mutate", json=daemonset_review(namespace="logging"))
    samples = _samples(client)
    assert _value(samples, "blanket_tolerations_seen_total", endpoint="mutate", namespace="logging") == 1
    assert _value(samples, "blanket_tolerations_stripped_total", namespace="logging") == 0


def test_exempt_daemonsets_are_not_counted_as_seen():
    client = _client(Mode.STRIP)
    review = daemonset_review(namespace="kube-system")
    review["request"]["object"]["spec"]["template"]["spec"]["hostNetwork"] = True
    client.post("/mutate", json=review)
    assert not any(name.startswith(PREFIX + "blanket") for name, _ in _samples(client))


def test_namespace_label_is_bounded():
    metrics = Metrics()
    metrics.count_blanket(Endpoint.MUTATE, namespace="Not A Namespace!", seen=1, stripped=0)
    for i in range(MAX_NAMESPACES + 5):
        metrics.count_blanket(Endpoint.MUTATE, namespace=f"ns-{i}", seen=1, stripped=0)
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    namespaces = {s.labels["namespace"] for s in families[PREFIX + "blanket_tolerations_seen"].samples}
    assert len(namespaces) == MAX_NAMESPACES + 1
    assert OTHER_NAMESPACE in namespaces
    assert "Not A Namespace!" not in namespaces


def test_each_app_has_its_own_registry():
    first, second = _client(), _client()
    first.post("/validate", json=daemonset_review())
    assert _value(_samples(first), "admission_requests_total", endpoint="validate", outcome="warned") == 1
    assert _value(_samples(second), "admission_requests_total", endpoint="validate", outcome="warned") == 0


def test_metric_names_follow_prometheus_conventions():
    names = {family.name: family.type for family in text_string_to_metric_families(_client().get("/metrics").text)}
    ours = {name: kind for name, kind in names.items() if name.startswith(PREFIX)}
    assert set(ours) == {
        PREFIX + "admission_requests", PREFIX + "admission_errors", PREFIX + "admission_duration_seconds",
        PREFIX + "blanket_tolerations_seen", PREFIX + "blanket_tolerations_stripped", PREFIX + "http_refused",
        PREFIX + "connections_closed", PREFIX + "connections_open", PREFIX + "config_reloads",
        PREFIX + "config_last_reload_successful", PREFIX + "certificate_reloads",
        PREFIX + "certificate_not_after_timestamp_seconds"}
    for name, kind in ours.items():  # the parser drops _total from counter family names
        assert kind in ("counter", "gauge") or name.endswith("_seconds")
    assert "process_resident_memory_bytes" in names
