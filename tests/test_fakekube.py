"""The fake API server itself, over plain HTTP: the behaviour other tests (and colleagues) rely on."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.fakekube import DEFAULT_RESOURCES, FakeKube, parse_field_selector, parse_label_selector
from tests.objects import GATE, gated_pod


def raw(fake: FakeKube, method: str, path: str, body: Any = None,
        content_type: str = "application/json") -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(fake.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def call(fake: FakeKube, method: str, path: str, body: Any = None,
         content_type: str = "application/json") -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(fake.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.parametrize("selector, labels, expected", [
    pytest.param("a=1", {"a": "1"}, True, id="equals"),
    pytest.param("a==1", {"a": "2"}, False, id="double-equals"),
    pytest.param("a!=1", {}, True, id="not-equals-absent"),
    pytest.param("a", {"a": ""}, True, id="exists"),
    pytest.param("!a", {"a": "1"}, False, id="does-not-exist"),
    pytest.param("a in (1,2),b notin (3)", {"a": "2", "b": "4"}, True, id="set-based"),
    pytest.param("a in (1,2),b notin (3)", {"a": "2", "b": "3"}, False, id="set-based-miss"),
])
def test_label_selectors(selector, labels, expected):
    assert all(test(labels) for test in parse_label_selector(selector)) is expected


PODS = next(rt for rt in DEFAULT_RESOURCES if rt.plural == "pods" and not rt.group)
ENDPOINTS = next(rt for rt in DEFAULT_RESOURCES if rt.plural == "ciliumendpoints")


@pytest.mark.parametrize("selector, pod, expected", [
    pytest.param("spec.hostNetwork=false", {"spec": {}}, True, id="host-network-unset-selects-as-false"),
    pytest.param("spec.hostNetwork=false", {"spec": {"hostNetwork": False}}, True, id="host-network-false"),
    pytest.param("spec.hostNetwork=false", {"spec": {"hostNetwork": True}}, False, id="host-network-true"),
    pytest.param("spec.hostNetwork=true", {"spec": {"hostNetwork": True}}, True, id="host-network-selects-true"),
    pytest.param("status.phase=Running,spec.hostNetwork=false", {"status": {"phase": "Running"}}, True,
                 id="terms-are-anded"),
    pytest.param("metadata.namespace!=kube-system", {"metadata": {"namespace": "kube-system"}}, False,
                 id="namespace-not-equal"),
    pytest.param("status.podIP=10.0.0.1", {"status": {"podIPs": [{"ip": "10.0.0.1"}], "podIP": "10.0.0.1"}}, True,
                 id="pod-ip-is-the-first-of-pod-ips"),
])
def test_pod_field_selectors_select_as_kube_apiserver_does(selector, pod, expected):
    assert all(test(pod) for test in parse_field_selector(selector, PODS)) is expected


@pytest.mark.parametrize("selector, rt", [
    pytest.param("spec.containers=x", PODS, id="pod-field-not-selectable"),
    pytest.param("spec.nodeName=node-a", ENDPOINTS, id="custom-resource-only-metadata"),
])
def test_a_field_that_cannot_be_selected_answers_400(selector, rt):
    with pytest.raises(Exception, match="field label not supported") as caught:
        parse_field_selector(selector, rt)
    assert caught.value.code == 400


@pytest.mark.slow
def test_watch_with_a_field_selector_sees_a_pod_leave_the_selection(fake_kube: FakeKube):
    pod = fake_kube.create(gated_pod("agent-1"))
    status, _ = call(fake_kube, "GET", "/api/v1/pods?fieldSelector=spec.hostNetwork%3Dfalse")
    assert status == 200
    request = urllib.request.Request(fake_kube.url + "/api/v1/pods?watch=true&fieldSelector=spec.hostNetwork%3Dfalse"
                                     f"&resourceVersion={pod['metadata']['resourceVersion']}&timeoutSeconds=2")
    with urllib.request.urlopen(request, timeout=5) as response:
        fake_kube.modify("pods", "default", "agent-1", lambda p: p["spec"].update(hostNetwork=True))
        events = [json.loads(line) for line in response.read().splitlines() if line.strip()]
    assert [e["type"] for e in events] == ["DELETED"]


@pytest.mark.slow
def test_discovery_lists_groups_resources_and_subresources(fake_kube: FakeKube):
    status, groups = call(fake_kube, "GET", "/apis")
    assert status == 200
    assert "cilium.io" in {g["name"] for g in groups["groups"]}
    _, core = call(fake_kube, "GET", "/api/v1")
    assert {"pods", "pods/status", "pods/eviction", "nodes"} <= {r["name"] for r in core["resources"]}


@pytest.mark.slow
def test_a_removed_resource_is_gone_from_discovery_and_paths(fake_kube: FakeKube):
    fake_kube.remove_resource("ciliumendpoints.cilium.io")
    assert call(fake_kube, "GET", "/apis/cilium.io/v2")[0] == 404
    assert call(fake_kube, "GET", "/apis/cilium.io/v2/ciliumendpoints")[0] == 404


@pytest.mark.slow
def test_create_assigns_uid_version_and_generated_name(fake_kube: FakeKube):
    status, secret = call(fake_kube, "POST", "/api/v1/namespaces/ns/secrets",
                          {"apiVersion": "v1", "kind": "Secret", "metadata": {"generateName": "tls-"}})
    assert status == 201
    assert secret["metadata"]["name"].startswith("tls-") and secret["metadata"]["uid"]
    assert secret["metadata"]["namespace"] == "ns"
    again = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret["metadata"]["name"]}}
    assert call(fake_kube, "POST", "/api/v1/namespaces/ns/secrets", again)[0] == 409


@pytest.mark.slow
def test_cluster_scoped_and_group_resources_share_the_store_rules(fake_kube: FakeKube):
    hook = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "guard"}, "webhooks": []}
    assert call(fake_kube, "POST", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
                hook)[0] == 201
    status, got = call(fake_kube, "GET", "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/guard")
    assert status == 200 and "namespace" not in got["metadata"]


@pytest.mark.slow
def test_json_merge_patch_on_pod_status_replaces_the_whole_conditions_list(fake_kube: FakeKube):
    # Why the controller never sends one: the kubelet's conditions would be wiped.
    fake_kube.create(gated_pod("p"))
    patch = {"status": {"conditions": [{"type": GATE, "status": "True"}]}}
    call(fake_kube, "PATCH", "/api/v1/namespaces/default/pods/p/status", patch, "application/merge-patch+json")
    assert [c["type"] for c in fake_kube.get("pods", "default", "p")["status"]["conditions"]] == [GATE]


@pytest.mark.slow
def test_json_patch_test_operation_failing_answers_422(fake_kube: FakeKube):
    fake_kube.create(gated_pod("p"))
    patch = [{"op": "test", "path": "/metadata/uid", "value": "other"},
             {"op": "add", "path": "/status/conditions/-", "value": {"type": GATE, "status": "True"}}]
    status, _ = call(fake_kube, "PATCH", "/api/v1/namespaces/default/pods/p/status", patch,
                     "application/json-patch+json")
    assert status == 422


@pytest.mark.slow
def test_status_subresource_writes_only_status(fake_kube: FakeKube):
    fake_kube.create(gated_pod("p"))
    patch = {"metadata": {"labels": {"new": "x"}}, "status": {"phase": "Failed"}}
    call(fake_kube, "PATCH", "/api/v1/namespaces/default/pods/p/status", patch,
         "application/strategic-merge-patch+json")
    pod = fake_kube.get("pods", "default", "p")
    assert pod["status"]["phase"] == "Failed" and "new" not in pod["metadata"]["labels"]


@pytest.mark.slow
def test_an_expired_continue_token_answers_410(fake_kube: FakeKube):
    for i in range(3):
        fake_kube.create(gated_pod(f"p{i}"))
    _, page = call(fake_kube, "GET", "/api/v1/pods?limit=1")
    fake_kube.create(gated_pod("later"))
    fake_kube.compact()
    status, body = call(fake_kube, "GET", f"/api/v1/pods?limit=1&continue={page['metadata']['continue']}")
    assert (status, body["reason"]) == (410, "Expired")


@pytest.mark.slow
def test_delete_honours_the_uid_precondition(fake_kube: FakeKube):
    fake_kube.create(gated_pod("p"))
    status, _ = call(fake_kube, "DELETE", "/api/v1/namespaces/default/pods/p", {"preconditions": {"uid": "old"}})
    assert status == 409
    assert fake_kube.get("pods", "default", "p") is not None


@pytest.mark.slow
def test_graceful_pod_deletion_leaves_the_pod_terminating(fake_kube: FakeKube):
    fake_kube.graceful_pod_deletion = True
    fake_kube.create(gated_pod("p"))
    call(fake_kube, "DELETE", "/api/v1/namespaces/default/pods/p")
    assert fake_kube.get("pods", "default", "p")["metadata"]["deletionTimestamp"]
    fake_kube.finish_deletion("default", "p")
    assert fake_kube.get("pods", "default", "p") is None


@pytest.mark.slow
def test_eviction_of_a_pending_pod_ignores_the_budget(fake_kube: FakeKube):
    fake_kube.create(gated_pod("p", phase="Pending"))
    fake_kube.block_evictions("default")
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "p", "namespace": "default"}}
    assert call(fake_kube, "POST", "/api/v1/namespaces/default/pods/p/eviction", eviction)[0] == 201


@pytest.mark.slow
def test_events_v1_validation_rejects_an_incomplete_event(fake_kube: FakeKube):
    event = {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "default"},
             "eventTime": "2024-01-01T00:00:00Z", "reason": "X", "type": "Normal"}
    status, body = call(fake_kube, "POST", "/apis/events.k8s.io/v1/namespaces/default/events", event)
    assert status == 422
    assert "reportingController" in body["message"] and "eventTime" in body["message"]


@pytest.mark.slow
def test_injected_faults_answer_then_clear(fake_kube: FakeKube):
    fake_kube.fail("GET", "/api/v1/nodes$", status=503, times=1)
    assert call(fake_kube, "GET", "/api/v1/nodes")[0] == 503
    assert call(fake_kube, "GET", "/api/v1/nodes")[0] == 200


@pytest.mark.slow
def test_every_request_is_recorded_with_its_query(fake_kube: FakeKube):
    call(fake_kube, "GET", "/api/v1/pods?labelSelector=a%3D1&limit=5")
    [request] = fake_kube.calls("GET", "^/api/v1/pods$")
    assert request.query == {"labelSelector": "a=1", "limit": "5"}


@pytest.mark.slow
def test_a_patch_that_carries_a_stale_resource_version_answers_409(fake_kube: FakeKube):
    stored = fake_kube.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}})
    path = "/api/v1/namespaces/ns/configmaps/c"
    current = {"metadata": {"resourceVersion": stored["metadata"]["resourceVersion"]}, "data": {"a": "1"}}
    status, patched = call(fake_kube, "PATCH", path, current, "application/merge-patch+json")
    assert status == 200 and patched["data"] == {"a": "1"}
    stale = {"metadata": {"resourceVersion": stored["metadata"]["resourceVersion"]}, "data": {"a": "2"}}
    assert call(fake_kube, "PATCH", path, stale, "application/strategic-merge-patch+json")[0] == 409
    assert fake_kube.get("configmaps", "ns", "c")["data"] == {"a": "1"}


@pytest.mark.slow
def test_strategic_merge_patch_merges_webhooks_by_name(fake_kube: FakeKube):
    hooks = [{"name": "a.example.io", "clientConfig": {"service": {"name": "s", "namespace": "ns"}}},
             {"name": "b.example.io", "clientConfig": {"url": "https://b.example.io"}}]
    fake_kube.create({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
                      "metadata": {"name": "v"}, "webhooks": hooks})
    patch = {"webhooks": [{"name": "b.example.io", "clientConfig": {"caBundle": "Q0E="}}]}
    path = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/v"
    status, patched = call(fake_kube, "PATCH", path, patch, "application/strategic-merge-patch+json")
    assert status == 200
    assert patched["webhooks"] == [hooks[0], {**hooks[1], "clientConfig": {"url": "https://b.example.io",
                                                                          "caBundle": "Q0E="}}]


@pytest.mark.slow
@pytest.mark.parametrize("secret, old_type, status", [
    pytest.param({"type": "kubernetes.io/tls", "data": {"tls.crt": "QQ=="}}, None, 422, id="tls-without-key"),
    pytest.param({"data": {"x": "not base64!"}}, None, 400, id="bad-base64"),
    pytest.param({"type": "Opaque", "data": {}}, "kubernetes.io/tls", 422, id="type-is-immutable"),
])
def test_secrets_are_validated_as_kube_apiserver_does(fake_kube: FakeKube, secret, old_type, status):
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "ns"}, **secret}
    if old_type is None:
        assert call(fake_kube, "POST", "/api/v1/namespaces/ns/secrets", body)[0] == status
        return
    fake_kube.create({**body, "type": old_type, "data": {"tls.crt": "QQ==", "tls.key": "QQ=="}})
    assert call(fake_kube, "PUT", "/api/v1/namespaces/ns/secrets/s", body)[0] == status


# --- behaving like kube-apiserver at scale: latency, the watch cache, throttling, outages, restarts ---


@pytest.mark.slow
def test_every_accepted_connection_has_tcp_nodelay(fake_kube: FakeKube):
    for _ in range(2):
        call(fake_kube, "GET", "/api/v1/nodes")
    assert len(fake_kube.nodelay) >= 1 and all(fake_kube.nodelay)


@pytest.mark.slow
def test_write_latency_delays_writes_and_not_reads():
    fake = FakeKube(write_latency=0.2).start()
    try:
        fake.create(gated_pod("p"))
        started = time.monotonic()
        call(fake, "GET", "/api/v1/namespaces/default/pods/p")
        read = time.monotonic() - started
        started = time.monotonic()
        call(fake, "PATCH", "/api/v1/namespaces/default/pods/p/status", {"status": {"phase": "Running"}},
             "application/strategic-merge-patch+json")
        write = time.monotonic() - started
    finally:
        fake.stop()
    assert read < 0.15 <= 0.2 <= write


@pytest.mark.slow
def test_concurrent_writes_wait_their_latency_in_parallel():
    fake = FakeKube(write_latency=0.3).start()
    try:
        for i in range(4):
            fake.create(gated_pod(f"p{i}"))
        started = time.monotonic()
        connections = [http.client.HTTPConnection("127.0.0.1", int(fake.url.rsplit(":", 1)[1])) for _ in range(4)]
        for i, connection in enumerate(connections):
            connection.request("PATCH", f"/api/v1/namespaces/default/pods/p{i}/status", b'{"status":{}}',
                               {"Content-Type": "application/strategic-merge-patch+json"})
        statuses = [c.getresponse().status for c in connections]
        elapsed = time.monotonic() - started
    finally:
        fake.stop()
    assert statuses == [200] * 4
    assert 0.3 <= elapsed < 1.0  # four writes of 0.3 s each, overlapping


@pytest.mark.slow
def test_a_list_at_resource_version_zero_is_whole_and_ignores_the_limit(fake_kube: FakeKube):
    for i in range(5):
        fake_kube.create(gated_pod(f"p{i}"))
    status, body = call(fake_kube, "GET", "/api/v1/pods?limit=2&resourceVersion=0")
    assert status == 200
    assert len(body["items"]) == 5 and "continue" not in body["metadata"]
    assert fake_kube.cached_lists == 1
    _, paged = call(fake_kube, "GET", "/api/v1/pods?limit=2")
    assert len(paged["items"]) == 2 and paged["metadata"]["continue"]


@pytest.mark.slow
def test_a_list_newer_than_the_store_is_too_large_a_resource_version(fake_kube: FakeKube):
    status, body = call(fake_kube, "GET", "/api/v1/pods?resourceVersion=999999")
    assert status == 504
    assert body["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"


@pytest.mark.slow
@pytest.mark.parametrize("refusal, reason", [(429, "TooManyRequests"), (410, "Expired"), (504, "Timeout")])
def test_cached_lists_can_be_refused_while_quorum_lists_are_served(fake_kube: FakeKube, refusal, reason):
    fake_kube.create(gated_pod("p"))
    fake_kube.refuse_cached_lists(refusal)
    status, body = call(fake_kube, "GET", "/api/v1/pods?resourceVersion=0")
    assert (status, body["reason"]) == (refusal, reason)
    assert call(fake_kube, "GET", "/api/v1/pods?limit=500")[0] == 200
    fake_kube.refuse_cached_lists(None)
    assert call(fake_kube, "GET", "/api/v1/pods?resourceVersion=0")[0] == 200


@pytest.mark.slow
def test_throttle_answers_429_in_plain_text_with_retry_after(fake_kube: FakeKube):
    fake_kube.create(gated_pod("p"))
    fake_kube.throttle("/pods/p/status$", retry_after=5, times=1)
    status, headers, body = raw(fake_kube, "PATCH", "/api/v1/namespaces/default/pods/p/status", {"status": {}},
                                "application/strategic-merge-patch+json")
    assert (status, headers["Retry-After"]) == (429, "5")
    assert headers["Content-Type"].startswith("text/plain") and b"Too many requests" in body
    assert call(fake_kube, "GET", "/api/v1/namespaces/default/pods/p")[0] == 200  # reads are not throttled
    assert raw(fake_kube, "PATCH", "/api/v1/namespaces/default/pods/p/status", {"status": {}},
               "application/strategic-merge-patch+json")[0] == 200


@pytest.mark.slow
def test_an_outage_fails_every_request_for_its_seconds_then_ends(fake_kube: FakeKube):
    fake_kube.outage(0.3, status=503)
    assert call(fake_kube, "GET", "/api/v1/nodes")[0] == 503
    assert call(fake_kube, "GET", "/apis/cilium.io/v2/ciliumendpoints")[0] == 503
    time.sleep(0.35)
    assert call(fake_kube, "GET", "/api/v1/nodes")[0] == 200


@pytest.mark.slow
def test_restart_cuts_connections_keeps_objects_and_forgets_watch_history(fake_kube: FakeKube):
    fake_kube.create(gated_pod("p"))
    _, listed = call(fake_kube, "GET", "/api/v1/pods")
    version = listed["metadata"]["resourceVersion"]
    fake_kube.create(gated_pod("q"))
    port = fake_kube.url
    connection = http.client.HTTPConnection("127.0.0.1", int(port.rsplit(":", 1)[1]), timeout=5)
    connection.request("GET", "/api/v1/nodes")
    connection.getresponse().read()
    fake_kube.restart(down_for=0.1)
    assert fake_kube.url == port
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        connection.request("GET", "/api/v1/nodes")  # the keep-alive connection was cut
        connection.getresponse()
    assert {p["metadata"]["name"] for p in call(fake_kube, "GET", "/api/v1/pods")[1]["items"]} == {"p", "q"}
    _, _, body = raw(fake_kube, "GET", f"/api/v1/pods?watch=true&resourceVersion={version}"
                       "&timeoutSeconds=1")
    event = json.loads(body.splitlines()[0])
    assert (event["type"], event["object"]["code"]) == ("ERROR", 410)
