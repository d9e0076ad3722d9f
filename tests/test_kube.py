"""webhook/kube.py with the real kubernetes client against the fake API server (tests/fakekube.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import urllib3

from tests.fakekube import FakeKube
from tests.objects import GATE, GATE_LABEL, endpoint, gate_status, gated_pod
from tests.support import SilentServer, kubeconfig_for, load_fixture
from webhook import kube, kubeclient


@pytest.mark.parametrize("status, message, expected", [
    pytest.param(0, "Max retries exceeded: Connection refused",
                 "cannot reach the Kubernetes API server https://k:6443: Max retries exceeded: Connection refused",
                 id="unreachable"),
    pytest.param(0, "Read timed out. (read timeout=2)", "no answer from the Kubernetes API server https://k:6443 "
                 "within 2 s", id="timed-out"),
    pytest.param(401, "Unauthorized", "the Kubernetes API server https://k:6443 does not accept the credentials "
                 "(401): Unauthorized", id="unauthorized"),
    pytest.param(403, 'nodes is forbidden: User "x"\ncannot list', 'no permission to list nodes (403): nodes is '
                 'forbidden: User "x" cannot list (see the ClusterRole)', id="forbidden-on-one-line"),
    pytest.param(500, "etcd is down", "cannot list nodes (500): etcd is down", id="other"),
])
def test_an_api_error_is_described_on_one_line(status: int, message: str, expected: str):
    err = kube.ApiError(status, message)
    assert err.describe("list nodes", server="https://k:6443", timeout=2, rbac="see the ClusterRole") == expected


def test_a_timeout_without_a_known_bound_keeps_the_clients_words():
    err = kube.ApiError(0, "Read timed out.")
    assert err.describe("read Secret a/b") == "no answer from the Kubernetes API server: Read timed out."


@pytest.mark.slow
def test_list_all_follows_continue_tokens(fake_kube: FakeKube, kube_client):
    for i in range(5):
        fake_kube.create(gated_pod(f"pod-{i}"))
    fake_kube.create(gated_pod("other", labels={GATE_LABEL: "false"}))
    items, version = kube.list_all(kube_client, kube.Target(kube.PODS, label_selector=f"{GATE_LABEL}=true"),
                                   page_size=2)
    assert sorted(p["metadata"]["name"] for p in items) == [f"pod-{i}" for i in range(5)]
    assert version
    pages = fake_kube.calls("GET", "^/api/v1/pods$")
    assert [p.query.get("limit") for p in pages] == ["2", "2", "2"]
    assert "continue" not in pages[0].query and all(p.query.get("continue") for p in pages[1:])


@pytest.mark.slow
def test_list_selects_by_field(fake_kube: FakeKube, kube_client):
    fake_kube.create(gated_pod("on-a", node="node-a"))
    fake_kube.create(gated_pod("on-b", node="node-b"))
    items, _ = kube.list_all(kube_client, kube.Target(kube.PODS, field_selector="spec.nodeName=node-b"))
    assert [p["metadata"]["name"] for p in items] == ["on-b"]


@pytest.mark.slow
def test_watch_streams_changes_after_the_listed_version(fake_kube: FakeKube, kube_client):
    target = kube.Target(kube.PODS, namespace="default")
    _, version = kube.list_all(kube_client, target)
    events: list[tuple[str, str]] = []
    stream = kube.watch(kube_client, target, version, timeout_seconds=5)

    def consume() -> None:
        for event in stream:
            events.append((event.type, event.object["metadata"]["name"]))
            if len(events) == 3:
                stream.close()

    reader = threading.Thread(target=consume)
    reader.start()
    fake_kube.create(gated_pod("p"))
    fake_kube.modify("pods", "default", "p", lambda pod: pod["metadata"]["labels"].update(x="y"))
    fake_kube.delete("pods", "default", "p")
    reader.join(timeout=5)
    assert events == [("ADDED", "p"), ("MODIFIED", "p"), ("DELETED", "p")]


@pytest.mark.slow
def test_watch_from_a_compacted_version_raises_gone(fake_kube: FakeKube, kube_client):
    target = kube.Target(kube.PODS)
    _, version = kube.list_all(kube_client, target)
    fake_kube.create(gated_pod("p"))
    fake_kube.compact()
    with pytest.raises(kube.Gone):
        list(kube.watch(kube_client, target, version, timeout_seconds=5))


@pytest.mark.slow
def test_a_dropped_watch_raises_api_error(fake_kube: FakeKube, kube_client):
    _, version = kube.list_all(kube_client, kube.Target(kube.PODS))
    stream = kube.watch(kube_client, kube.Target(kube.PODS), version, timeout_seconds=30)
    threading.Timer(0.3, fake_kube.drop_watches).start()
    with pytest.raises(kube.ApiError) as raised:
        list(stream)
    assert raised.value.status == 0


def gate_patch(uid: str) -> dict:
    return {"metadata": {"uid": uid}, "status": {"conditions": [{"type": GATE, "status": "True"}]}}


@pytest.mark.slow
def test_patch_pod_status_merges_conditions_by_type(fake_kube: FakeKube, kube_client):
    pod = fake_kube.create(gated_pod("p"))
    kube.patch_pod_status(kube_client, "default", "p", gate_patch(pod["metadata"]["uid"]))
    stored = fake_kube.get("pods", "default", "p")
    assert gate_status(stored) == "True"
    assert {c["type"] for c in stored["status"]["conditions"]} == {"Ready", "PodScheduled", GATE}
    assert fake_kube.calls("PATCH")[0].content_type == "application/strategic-merge-patch+json"


@pytest.mark.slow
def test_patch_pod_status_refuses_another_pods_uid(fake_kube: FakeKube, kube_client):
    fake_kube.create(gated_pod("p"))
    with pytest.raises(kube.ApiError) as raised:
        kube.patch_pod_status(kube_client, "default", "p", gate_patch("an-old-uid"))
    assert raised.value.status == 422
    assert gate_status(fake_kube.get("pods", "default", "p")) is None


@pytest.mark.slow
def test_evict_pod_posts_an_eviction_with_the_uid(fake_kube: FakeKube, kube_client):
    pod = fake_kube.create(gated_pod("p"))
    kube.evict_pod(kube_client, "default", "p", pod["metadata"]["uid"])
    assert fake_kube.get("pods", "default", "p") is None
    body = fake_kube.calls("POST", "/eviction$")[0].body
    assert body["apiVersion"] == "policy/v1"
    assert body["deleteOptions"]["preconditions"]["uid"] == pod["metadata"]["uid"]


@pytest.mark.slow
def test_evict_pod_refused_by_a_budget_reports_429_and_retry_after(fake_kube: FakeKube, kube_client):
    pod = fake_kube.create(gated_pod("p"))
    fake_kube.block_evictions("default", retry_after=45)
    with pytest.raises(kube.ApiError) as raised:
        kube.evict_pod(kube_client, "default", "p", pod["metadata"]["uid"])
    assert (raised.value.status, raised.value.retry_after) == (429, 45)
    assert fake_kube.get("pods", "default", "p") is not None


@pytest.mark.slow
def test_has_resource_follows_discovery(fake_kube: FakeKube, kube_client):
    assert kube.has_resource(kube_client, kube.CILIUM_ENDPOINTS)
    fake_kube.remove_resource("ciliumendpoints.cilium.io")
    assert not kube.has_resource(kube_client, kube.CILIUM_ENDPOINTS)


@pytest.mark.slow
def test_get_cilium_endpoint_reads_the_endpoint_or_none(fake_kube: FakeKube, kube_client):
    pod = fake_kube.create(gated_pod("p"))
    assert kube.get_cilium_endpoint(kube_client, "default", "p") is None
    fake_kube.create(endpoint(pod))
    assert kube.get_cilium_endpoint(kube_client, "default", "p")["status"]["state"] == "ready"


@pytest.mark.slow
def test_create_event_passes_the_body_through_untouched(fake_kube: FakeKube, kube_client):
    # A MicroTime with zero microseconds: a round trip through the client's models would drop the fraction.
    event = {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "p.1", "namespace": "default"},
             "eventTime": "2023-11-14T22:13:20.000000Z", "reportingController": "startupguard.io/controller",
             "reportingInstance": "replica-1", "action": "SetCondition", "reason": "CiliumManaged", "type": "Normal",
             "regarding": {"apiVersion": "v1", "kind": "Pod", "namespace": "default", "name": "p"}}
    kube.create_event(kube_client, "default", event)
    assert fake_kube.calls("POST", "/events$")[0].body == event


@pytest.mark.slow
def test_replace_lease_conflicts_on_a_stale_resource_version(fake_kube: FakeKube, kube_client):
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": "l", "namespace": "default"}, "spec": {"holderIdentity": "a"}}
    created = kube.create_lease(kube_client, "default", lease)
    kube.replace_lease(kube_client, "default", "l", dict(created, spec={"holderIdentity": "b"}))
    with pytest.raises(kube.ApiError) as raised:
        kube.replace_lease(kube_client, "default", "l", dict(created, spec={"holderIdentity": "c"}))
    assert raised.value.status == 409
    assert kube.get_lease(kube_client, "default", "l")["spec"]["holderIdentity"] == "b"


@pytest.mark.slow
def test_list_all_timeout_bounds_a_server_that_never_answers_with_one_attempt(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with SilentServer() as server:
        client = kubeclient.connect(kubeconfig_for(server.url, tmp_path / "kubeconfig"), "fake", retries=0)
        started = time.monotonic()
        try:
            with pytest.raises(kube.ApiError) as caught:
                kube.list_all(client, kube.Target(kube.NODES), timeout=0.3)
        finally:
            client.close()
        elapsed = time.monotonic() - started
        assert caught.value.status == 0
        assert elapsed < 2.0
        assert server.connections == 1  # urllib3's default would have tried four times


@pytest.mark.slow
def test_has_resource_timeout_bounds_a_server_that_never_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with SilentServer() as server:
        client = kubeclient.connect(kubeconfig_for(server.url, tmp_path / "kubeconfig"), "fake", retries=0)
        started = time.monotonic()
        try:
            with pytest.raises(kube.ApiError):
                kube.has_resource(client, kube.CILIUM_ENDPOINTS, timeout=0.3)
        finally:
            client.close()
        assert time.monotonic() - started < 2.0


@pytest.mark.slow
def test_list_all_lists_daemonsets_of_every_namespace(fake_kube: FakeKube, kube_client):
    for namespace in ("kube-system", "monitoring"):
        ds = load_fixture("daemonset_node_exporter.json")["request"]["object"]
        fake_kube.create({**ds, "metadata": {**ds["metadata"], "namespace": namespace}})
    items, _ = kube.list_all(kube_client, kube.Target(kube.DAEMONSETS))
    assert sorted(d["metadata"]["namespace"] for d in items) == ["kube-system", "monitoring"]
    assert fake_kube.calls("GET", "^/apis/apps/v1/daemonsets$")


# --- lists from the watch cache ---


@pytest.mark.slow
def test_list_at_resource_version_zero_is_one_request_without_a_limit(fake_kube: FakeKube, kube_client):
    for i in range(3):
        fake_kube.create(gated_pod(f"p{i}"))
    items, version = kube.list_all(kube_client, kube.Target(kube.PODS), page_size=2, resource_version="0")
    assert len(items) == 3 and int(version) > 0
    [request] = fake_kube.calls("GET", "^/api/v1/pods$")
    assert request.query.get("resourceVersion") == "0" and "limit" not in request.query
    assert fake_kube.cached_lists == 1


@pytest.mark.slow
@pytest.mark.parametrize("refusal", [410, 504])
def test_a_refused_cached_list_falls_back_to_pages_at_the_current_version(fake_kube: FakeKube, kube_client,
                                                                          refusal):
    for i in range(3):
        fake_kube.create(gated_pod(f"p{i}"))
    fake_kube.refuse_cached_lists(refusal)
    items, _ = kube.list_all(kube_client, kube.Target(kube.PODS), page_size=2, resource_version="0")
    assert len(items) == 3
    queries = [r.query for r in fake_kube.calls("GET", "^/api/v1/pods$")]
    assert queries[0].get("resourceVersion") == "0"
    assert [q.get("limit") for q in queries[1:]] == ["2", "2"] and not any("resourceVersion" in q
                                                                           for q in queries[1:])


@pytest.mark.slow
def test_a_cached_list_refused_while_the_cache_initializes_is_raised_with_its_retry_after(fake_kube: FakeKube,
                                                                                        kubeconfig_path: Path):
    fake_kube.refuse_cached_lists(429)
    client = kubeclient.connect(kubeconfig_path, "fake", retries=0)  # urllib3 would otherwise retry a 429 itself
    try:
        with pytest.raises(kube.ApiError) as raised:
            kube.list_all(client, kube.Target(kube.PODS), resource_version="0")
    finally:
        client.close()
    assert (raised.value.status, raised.value.retry_after) == (429, 1.0)
    assert len(fake_kube.calls("GET", "^/api/v1/pods$")) == 1


def test_an_answer_cut_short_is_an_api_error_without_an_answer():
    class CutShort:
        @property
        def data(self) -> bytes:
            raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead(4038656 bytes read)")

    with pytest.raises(kube.ApiError) as raised:
        kube._json(CutShort())
    assert raised.value.status == 0 and "cut short" in raised.value.message
