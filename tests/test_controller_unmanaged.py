"""The gate controller's scope `all`: every pod on the pod network, observed or recycled, against the fake API
server; the rate limit shared with gated pods; node reboots; the start-up line about Cilium's own recycler; the calls
made in each mode against the documented RBAC."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from tests.controller_harness import Replica, cluster, events, evictions, logged, options, planned, wait_until
from tests.fakekube import FakeKube, rbac_of
from tests.objects import (
    CILIUM_NAMESPACE,
    CONTROLLER_RBAC,
    CONTROLLER_RBAC_ALL_OBSERVE,
    CONTROLLER_RBAC_ALL_RECYCLE,
    GATE,
    endpoint,
    gated_pod,
    owner_object,
    stamp,
    workload_pod,
)
from webhook.config import PodScope, UnmanagedSettings
from webhook.controller.rules import Action, Timings
from webhook.controller.summaries import PodSummary
from webhook.enums import UnmanagedAction, UnmanagedScope

pytestmark = pytest.mark.slow  # the fake API server, and a controller's threads

OBSERVE = UnmanagedSettings(UnmanagedScope.ALL)
RECYCLE = UnmanagedSettings(UnmanagedScope.ALL, UnmanagedAction.RECYCLE)
DISCOVERY = {("nonResourceURL", "/apis/cilium.io/v2", "get")}
GAUGE = "cilium_startup_guard_unmanaged_pods"


def owner(fake: FakeKube, kind: str, name: str, namespace: str = "shop") -> tuple[str, str, str]:
    return kind, name, fake.create(owner_object(kind, name, namespace))["metadata"]["uid"]


def workloads(fake: FakeKube) -> None:
    """node-a: a ready Cilium agent; node-b: an agent that is not ready; node-c: still has the Cilium taint."""
    cluster(fake, "node-a")
    cluster(fake, "node-b", agent_ready=False)
    cluster(fake, "node-c", tainted=True)
    web, db, api = owner(fake, "ReplicaSet", "web-5d8f"), owner(fake, "StatefulSet", "db"), owner(
        fake, "ReplicaSet", "api-7c9d", "pay")
    for pod in (
        workload_pod("web-5d8f-a", "shop", "node-a", owner=web),  # a Deployment's pod
        workload_pod("db-0", "shop", "node-a", owner=db),
        workload_pod("debug", "shop", "node-a"),  # bare
        workload_pod("etcd-node-a", "kube-system", "node-a", mirror=True),
        workload_pod("ingress-1", "shop", "node-a", owner=web, host_network=True),
        workload_pod("web-5d8f-c", "shop", "node-b", owner=web),
        workload_pod("web-5d8f-d", "shop", "node-c", owner=web),
        workload_pod("api-7c9d-a", "pay", "node-a", owner=api),
    ):
        fake.create(pod)
    fake.create(endpoint(fake.create(workload_pod("web-5d8f-b", "shop", "node-a", owner=web))))
    fake.block_evictions("pay")


def gauge(replica: Replica) -> dict[tuple[str, str], float]:
    return {(s.labels["namespace"], s.labels["owner_kind"]): s.value
            for metric in replica.metrics.registry.collect() if metric.name == GAUGE for s in metric.samples}


def regarding(fake: FakeKube, reason: str) -> list[str]:
    return sorted(f"{e['regarding']['namespace']}/{e['regarding']['name']}" for e in events(fake, reason))


def pod_writes(fake: FakeKube) -> list[str]:
    return [f"{r.method} {r.path}" for r in fake.requests
            if r.method in ("POST", "PUT", "PATCH", "DELETE") and "/pods" in r.path]


REPORTED = ["kube-system/etcd-node-a", "pay/api-7c9d-a", "shop/db-0", "shop/debug", "shop/web-5d8f-a"]
ALL_UNMANAGED = {("shop", "ReplicaSet"): 1, ("shop", "StatefulSet"): 1, ("shop", "none"): 1,
                 ("kube-system", "Node"): 1, ("pay", "ReplicaSet"): 1}


def test_observe_counts_and_reports_each_unmanaged_pod_once_and_writes_nothing_to_pods(fake_kube, start):
    workloads(fake_kube)
    replica = start(options(unmanaged=OBSERVE))
    wait_until(lambda: regarding(fake_kube, "UnmanagedPodDetected") == REPORTED)
    wait_until(lambda: gauge(replica) == ALL_UNMANAGED)
    planned(replica, Action.WAIT, "not-ready", times=2)  # node-b's agent, node-c's taint
    planned(replica, Action.SKIP, "managed")  # web-5d8f-b has its endpoint
    recycles = replica.controller.books.plans(Action.RECYCLE, "unmanaged")
    fake_kube.modify("pods", "shop", "db-0", lambda p: p["status"].update(startTime=stamp(time.time() - 3600)))
    planned(replica, Action.RECYCLE, "unmanaged", recycles + 1)
    assert regarding(fake_kube, "UnmanagedPodDetected") == REPORTED  # still one each
    assert pod_writes(fake_kube) == []
    [event] = [e for e in events(fake_kube, "UnmanagedPodDetected") if e["regarding"]["name"] == "debug"]
    assert event["type"] == "Warning" and "no controlling owner" in event["note"]
    [event] = [e for e in events(fake_kube, "UnmanagedPodDetected") if e["regarding"]["name"] == "db-0"]
    assert "--unmanaged-action is observe" in event["note"]
    assert not fake_kube.calls("GET", "/statefulsets/")  # observing reads no owner


def test_recycle_evicts_what_its_owner_recreates_and_reports_the_rest(fake_kube, start):
    workloads(fake_kube)
    replica = start(options(unmanaged=RECYCLE))
    fake_kube.wait_for(lambda: fake_kube.get("pods", "shop", "web-5d8f-a") is None
                       and fake_kube.get("pods", "shop", "db-0") is None)
    fake_kube.wait_for(lambda: len(fake_kube.calls("POST", "/pods/api-7c9d-a/eviction$")) >= 2)  # retried
    wait_until(lambda: regarding(fake_kube, "UnmanagedPodDetected") == ["kube-system/etcd-node-a", "shop/debug"])
    wait_until(lambda: regarding(fake_kube, "UnmanagedPodRecycled") == ["shop/db-0", "shop/web-5d8f-a"])
    wait_until(lambda: gauge(replica) == {("shop", "none"): 1, ("kube-system", "Node"): 1, ("pay", "ReplicaSet"): 1})
    planned(replica, Action.WAIT, "not-ready", times=2)
    assert not fake_kube.calls("DELETE")  # evictions only
    assert fake_kube.get("pods", "pay", "api-7c9d-a") is not None
    assert {r.path.split("/")[6] for r in evictions(fake_kube)} == {"web-5d8f-a", "db-0", "api-7c9d-a"}
    assert fake_kube.calls("GET", "^/apis/apps/v1/namespaces/shop/replicasets/web-5d8f$")
    assert fake_kube.calls("GET", "^/apis/apps/v1/namespaces/shop/statefulsets/db$")
    assert replica.metric("cilium_startup_guard_evictions_refused_total") >= 1


def test_a_pod_whose_owner_will_not_recreate_it_is_reported_not_evicted(fake_kube, start):
    cluster(fake_kube)
    kind, name, uid = owner(fake_kube, "ReplicaSet", "old-5d8f")
    fake_kube.modify("replicasets.apps", "shop", "old-5d8f", lambda rs: rs["spec"].update(replicas=0))
    fake_kube.create(workload_pod("old-5d8f-x", "shop", owner=(kind, name, uid)))
    start(options(unmanaged=RECYCLE))
    [event] = wait_until(lambda: events(fake_kube, "UnmanagedPodDetected"))
    assert "wants no pods" in event["note"]
    assert not evictions(fake_kube)


def test_the_scope_flags_narrow_what_is_watched(fake_kube, start):
    workloads(fake_kube)
    replica = start(options(unmanaged=UnmanagedSettings(UnmanagedScope.ALL, pods=PodScope(
        exclude_namespaces=("pay", "kube-system"), selector="app!=debug"))))
    wait_until(lambda: gauge(replica) == {("shop", "ReplicaSet"): 1, ("shop", "StatefulSet"): 1})
    [watch] = [r for r in fake_kube.calls("GET", "^/api/v1/pods$") if r.query.get("watch") == "true"
               and "spec.hostNetwork=false" in r.query.get("fieldSelector", "")][:1]
    assert watch.query["fieldSelector"] == ("status.phase=Running,spec.hostNetwork=false,"
                                            "metadata.namespace!=pay,metadata.namespace!=kube-system")
    assert watch.query["labelSelector"] == "app!=debug"
    assert replica.controller.caches.scoped[0].get(("pay", "api-7c9d-a")) is None


def test_the_scoped_cache_keeps_only_what_the_decisions_read(fake_kube, start):
    workloads(fake_kube)
    replica = start(options(unmanaged=OBSERVE))
    cached = replica.controller.caches.scoped[0].get(("shop", "db-0"))
    assert isinstance(cached, PodSummary)  # the rules' facts and the owner, no more
    assert (cached.facts.name, cached.owner.owner.kind) == ("db-0", "StatefulSet")


def test_dry_run_in_scope_all_writes_nothing(fake_kube, start):
    workloads(fake_kube)
    replica = start(options(unmanaged=RECYCLE, dry_run=True, lease=None))
    wait_until(lambda: replica.metric("cilium_startup_guard_pods_recycled_total", dry_run="true") == 3)
    wait_until(lambda: gauge(replica) == ALL_UNMANAGED)
    assert not [r for r in fake_kube.requests if r.method != "GET"]


# --- one rate limit for every eviction ---


def test_the_rate_limit_holds_across_gated_and_ungated_pods(fake_kube, start, caplog):
    caplog.set_level(logging.INFO, logger="webhook.controller")
    cluster(fake_kube)
    web = owner(fake_kube, "ReplicaSet", "web-5d8f", "default")
    for name in ("gated-1", "gated-2"):
        fake_kube.create(gated_pod(name))
    for name in ("web-5d8f-1", "web-5d8f-2"):
        fake_kube.create(workload_pod(name, "default", owner=web))
    replica = start(options(unmanaged=RECYCLE, recycle_rate=2))  # two a minute, burst two
    fake_kube.wait_for(lambda: len(evictions(fake_kube)) >= 2)
    wait_until(lambda: replica.metric("cilium_startup_guard_recycle_waiting") == 2)  # the other two, in one line
    evicted = {r.path.split("/")[6] for r in evictions(fake_kube)}
    left = {p["metadata"]["name"] for p in fake_kube.list("pods", "default")}
    assert len(evicted) == 2 and evicted | left == {"gated-1", "gated-2", "web-5d8f-1", "web-5d8f-2"}
    assert len(logged(caplog, "recycling waits for the rate limit; pods wait in line, one is woken per token")) == 1


# --- node reboots ---


def booted(fake: FakeKube, name: str, boot: str) -> None:
    def change(node: dict[str, Any]) -> None:
        node["status"] = {"nodeInfo": {"bootID": boot}, "conditions": [
            {"type": "Ready", "status": "True", "lastHeartbeatTime": stamp(time.time() - 2)}]}
    fake.modify("nodes", "", name, change)


def restarted(fake: FakeKube, namespace: str, name: str) -> None:
    def change(pod: dict[str, Any]) -> None:
        pod["status"]["containerStatuses"] = [{"name": "main", "restartCount": 1,
                                               "state": {"running": {"startedAt": stamp(time.time() + 1)}}}]
    fake.modify("pods", namespace, name, change)


@pytest.mark.parametrize("unmanaged", [pytest.param(RECYCLE, id="recycle"), pytest.param(OBSERVE, id="observe")])
def test_a_reboot_rechecks_the_nodes_pods_after_the_grace_period_though_the_agent_stayed_ready(
        fake_kube, start, caplog, unmanaged):
    caplog.set_level(logging.INFO, logger="webhook.controller")
    cluster(fake_kube)
    booted(fake_kube, "node-a", "boot-1")
    web = owner(fake_kube, "ReplicaSet", "web-5d8f", "default")
    before = time.time() - 600  # the pods started long before the reboot
    pods = {name: fake_kube.create(pod) for name, pod in (
        ("kept", gated_pod("kept", gate_true=True, started=before)),
        ("lost", gated_pod("lost", gate_true=True, started=before)),
        ("web-5d8f-1", workload_pod("web-5d8f-1", owner=web, started=before)),
        ("web-5d8f-stale", workload_pod("web-5d8f-stale", owner=web, started=before)))}
    for pod in pods.values():
        fake_kube.create(endpoint(pod))
    grace = 1.0
    replica = start(options(unmanaged=unmanaged, timings=Timings(grace_period=grace, release_after=0)))
    planned(replica, Action.SKIP, "gate-true", times=2)
    planned(replica, Action.SKIP, "managed", times=2)

    booted(fake_kube, "node-a", "boot-2")  # the agent pod's Ready condition never changes
    wait_until(lambda: logged(caplog, "node rebooted; its pods are checked again as if they had just started"))
    seen = time.monotonic()
    for name in ("lost", "web-5d8f-1", "web-5d8f-stale"):  # Cilium's endpoints are gone after the reboot
        fake_kube.delete("ciliumendpoints.cilium.io", "default", name)
    restarted(fake_kube, "default", "kept")
    restarted(fake_kube, "default", "lost")  # restarted under the old CNI: no endpoint
    restarted(fake_kube, "default", "web-5d8f-1")
    planned(replica, Action.WAIT, "not-restarted-since-boot")  # web-5d8f-stale's status predates the reboot

    if unmanaged is RECYCLE:
        fake_kube.wait_for(lambda: len(evictions(fake_kube)) == 2, timeout=5)
        assert {r.path.split("/")[6] for r in evictions(fake_kube)} == {"lost", "web-5d8f-1"}
        assert min(r.at for r in evictions(fake_kube)) - seen >= grace * 0.9
    else:
        wait_until(lambda: regarding(fake_kube, "UnmanagedPodDetected") == ["default/lost", "default/web-5d8f-1"])
        assert not evictions(fake_kube)
    assert fake_kube.get("pods", "default", "kept")["status"]["conditions"][-1] == {"type": GATE, "status": "True"}
    assert not fake_kube.calls("PATCH", "/pods/kept/status$")  # its condition is kept
    assert fake_kube.get("pods", "default", "web-5d8f-stale") is not None


# --- Cilium's own recycler ---


@pytest.mark.parametrize("interval, unmanaged, level, restarts", [
    pytest.param("15s", RECYCLE, logging.WARNING, True, id="both-recycle"),
    pytest.param("0", RECYCLE, logging.INFO, False, id="operator-watcher-off"),
    pytest.param("15s", OBSERVE, logging.INFO, True, id="observe-only"),
])
def test_start_up_says_whether_ciliums_operator_restarts_unmanaged_pods_too(fake_kube, start, caplog, interval,
                                                                           unmanaged, level, restarts):
    caplog.set_level(logging.INFO, logger="webhook.controller")
    cluster(fake_kube)
    fake_kube.create({"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": {"name": "cilium-config", "namespace": CILIUM_NAMESPACE},
                      "data": {"unmanaged-pod-watcher-interval": interval, "identity-allocation-mode": "crd"}})
    start(options(unmanaged=unmanaged))
    [line] = wait_until(lambda: [r for r in caplog.records if "Cilium's operator" in r.getMessage()])
    assert line.levelno == level
    assert ("two recyclers double the disruption" in line.getMessage()) is (level == logging.WARNING)
    assert ("operator.unmanagedPodWatcher.restart" in line.operator) is restarts  # type: ignore[attr-defined]
    assert getattr(line, "operator_restarts_pods", restarts) is restarts
    assert fake_kube.calls("GET", f"^/api/v1/namespaces/{CILIUM_NAMESPACE}/configmaps/cilium-config$")


def test_the_gated_scope_observes_gated_pods_and_exports_the_gauge(fake_kube, start):
    cluster(fake_kube)
    fake_kube.create(gated_pod("agent-1"))
    fake_kube.create(workload_pod("web-1", owner=("ReplicaSet", "web", "rs-uid")))  # not gated: not looked at
    replica = start(options(unmanaged=UnmanagedSettings(action=UnmanagedAction.OBSERVE)))
    wait_until(lambda: regarding(fake_kube, "UnmanagedPodDetected") == ["default/agent-1"])
    assert gauge(replica) == {("default", "none"): 1}
    assert not evictions(fake_kube)


def test_the_gated_scope_never_reads_cilium_config(fake_kube, start):
    cluster(fake_kube)
    fake_kube.create(gated_pod("agent-1"))
    replica = start()
    planned(replica, Action.RECYCLE, "unmanaged")
    assert not fake_kube.calls(path="/configmaps/")
    assert not replica.controller.caches.scoped


# --- RBAC: the calls made are exactly the documented ones, per mode ---


def exercise(fake: FakeKube) -> None:
    """Pods of every owner kind the controller reads, a gated pod that gets its condition, and cilium-config."""
    workloads(fake)
    fake.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cilium-config",
                                                                       "namespace": CILIUM_NAMESPACE}, "data": {}})
    fake.create(workload_pod("log-agent-a", "logging", owner=owner(fake, "DaemonSet", "log-agent", "logging")))
    fake.create(workload_pod("report-x", "batch", owner=owner(fake, "Job", "report", "batch")))
    fake.create(endpoint(fake.create(gated_pod("gated-managed"))))
    fake.create(gated_pod("gated-unmanaged"))


@pytest.mark.parametrize("unmanaged, documented", [
    pytest.param(UnmanagedSettings(), CONTROLLER_RBAC, id="gated-recycle"),
    pytest.param(OBSERVE, CONTROLLER_RBAC_ALL_OBSERVE, id="all-observe"),
    pytest.param(RECYCLE, CONTROLLER_RBAC_ALL_RECYCLE, id="all-recycle"),
])
def test_api_calls_are_exactly_the_documented_rbac_of_each_mode(fake_kube, start, unmanaged, documented):
    exercise(fake_kube)
    replica = start(options(unmanaged=unmanaged))
    wait_until(lambda: fake_kube.calls("PATCH", "/pods/gated-managed/status$"))
    if unmanaged.effective_action is UnmanagedAction.RECYCLE:
        wait_until(lambda: fake_kube.calls("POST", "/pods/gated-unmanaged/eviction$"))
    if unmanaged.scope is UnmanagedScope.ALL:
        wait_until(lambda: fake_kube.calls("GET", "/configmaps/cilium-config$"))
        wait_until(lambda: len(events(fake_kube, "UnmanagedPodDetected")) >= 2)
    if unmanaged.scope is UnmanagedScope.ALL and unmanaged.effective_action is UnmanagedAction.RECYCLE:
        wait_until(lambda: fake_kube.calls("GET", "/jobs/report$") and fake_kube.calls("GET", "/daemonsets/log-agent$"))
    assert replica.stop() == 0
    assert {rbac_of(r) for r in fake_kube.requests} - DISCOVERY == documented
