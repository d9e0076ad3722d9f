"""Which pods are unmanaged, which may be evicted, and why: the definition audit, recycle and the controller share.
Pure, table-driven; no I/O."""

from __future__ import annotations

from typing import Any

import pytest

from tests.objects import GATE, agent_pod, endpoint, node, stamp
from webhook.cilium import AgentState
from webhook.config import PodScope
from webhook.controller.rules import Action, NodeFacts, Plan, PodFacts, Situation, Timings
from webhook.policy import CILIUM_TAINT_KEY
from webhook.unmanaged import (
    Owner,
    OwnerFacts,
    Selection,
    Snapshot,
    agent_ready_since,
    is_unmanaged,
    owner_facts,
    owner_verdict,
    plan_unmanaged,
    selections,
    situations,
    snapshot_unmanaged,
)

NOW = 1_000_000.0
TIMINGS = Timings(grace_period=60)
REPLICA_SET = OwnerFacts(Owner("ReplicaSet", "web-5d8f", "rs-uid"), verdict="")


def pod(**changes: Any) -> PodFacts:
    base = {"namespace": "default", "name": "web-5d8f-x", "uid": "u1", "node_name": "node-a", "phase": "Running",
            "pod_ip": "10.0.0.5", "started_at": NOW - 120, "has_gate": False}
    return PodFacts(**{**base, **changes})


def situation(**changes: Any) -> Situation:
    base = {"pod": pod(), "endpoint_state": None, "node": NodeFacts(AgentState.READY, ready_since=NOW - 3600)}
    return Situation(**{**base, **changes})


@pytest.mark.parametrize("given, owner, expected", [
    pytest.param(situation(), REPLICA_SET, Plan(Action.RECYCLE, "unmanaged"), id="deployment-pod-recycled"),
    pytest.param(situation(), OwnerFacts(Owner("StatefulSet", "db", "s"), verdict=""),
                 Plan(Action.RECYCLE, "unmanaged"), id="statefulset-pod-recycled"),
    pytest.param(situation(), OwnerFacts(Owner("ReplicaSet", "web", "r")), Plan(Action.RECYCLE, "unmanaged"),
                 id="owner-not-read-yet-still-a-candidate"),
    pytest.param(situation(), OwnerFacts(), Plan(Action.REPORT, "bare-pod"), id="bare-pod-reported"),
    pytest.param(situation(), OwnerFacts(Owner("Node", "node-a", "n"), mirror=True), Plan(Action.REPORT, "mirror-pod"),
                 id="mirror-pod-reported"),
    pytest.param(situation(), OwnerFacts(Owner("CloneSet", "c", "c")), Plan(Action.REPORT, "unknown-owner"),
                 id="unknown-owner-kind-reported"),
    pytest.param(situation(), OwnerFacts(Owner("Job", "j", "j"), verdict="job-finished"),
                 Plan(Action.REPORT, "job-finished"), id="finished-job-reported"),
    pytest.param(situation(pod=pod(host_network=True)), REPLICA_SET, Plan(Action.SKIP, "host-network"),
                 id="host-network-skipped"),
    pytest.param(situation(endpoint_state="ready"), REPLICA_SET, Plan(Action.SKIP, "managed"), id="managed"),
    pytest.param(situation(endpoint_state="waiting-for-identity"), REPLICA_SET, Plan(Action.SKIP, "managed"),
                 id="endpoint-not-ready-is-managed-too"),
    pytest.param(situation(endpoints_available=False), REPLICA_SET, Plan(Action.SKIP, "no-cilium-endpoints"),
                 id="no-endpoint-resource-never-evicts"),
    pytest.param(situation(pod=pod(terminating=True)), REPLICA_SET, Plan(Action.SKIP, "terminating"),
                 id="terminating-skipped"),
    pytest.param(situation(pod=pod(phase="Succeeded")), REPLICA_SET, Plan(Action.SKIP, "finished"),
                 id="finished-skipped"),
    pytest.param(situation(node=NodeFacts(AgentState.NOT_READY)), REPLICA_SET, Plan(Action.WAIT, "not-ready"),
                 id="agent-not-ready-or-tainted-waits"),
    pytest.param(situation(node=NodeFacts(AgentState.NO_AGENT)), REPLICA_SET, Plan(Action.WAIT, "no-agent"),
                 id="no-agent-waits"),
    pytest.param(situation(pod=pod(started_at=NOW - 10)), REPLICA_SET, Plan(Action.WAIT, "grace-period", NOW + 50),
                 id="within-grace-waits"),
    pytest.param(situation(eviction_retry_at=NOW + 5), REPLICA_SET, Plan(Action.WAIT, "eviction-refused", NOW + 5),
                 id="refused-eviction-waits"),
    pytest.param(situation(node=NodeFacts(AgentState.READY, NOW - 3600, booted_at=NOW - 100)), REPLICA_SET,
                 Plan(Action.WAIT, "not-restarted-since-boot"), id="rebooted-node-waits-for-a-restart"),
])
def test_plan_unmanaged(given, owner, expected):
    assert plan_unmanaged(given, owner, TIMINGS, NOW) == expected


def test_include_bare_evicts_a_bare_pod():
    assert plan_unmanaged(situation(), OwnerFacts(), TIMINGS, NOW, include_bare=True) == Plan(Action.RECYCLE,
                                                                                              "unmanaged")


def test_include_bare_never_evicts_a_mirror_pod():
    mirror = OwnerFacts(Owner("Node", "node-a", "n"), mirror=True)
    assert plan_unmanaged(situation(), mirror, TIMINGS, NOW, include_bare=True).action is Action.REPORT


@pytest.mark.parametrize("step, counted", [
    (Plan(Action.RECYCLE, "unmanaged"), True),
    (Plan(Action.REPORT, "bare-pod"), True),
    (Plan(Action.WAIT, "eviction-refused", NOW), True),
    (Plan(Action.WAIT, "grace-period", NOW), False),
    (Plan(Action.SKIP, "managed"), False),
])
def test_is_unmanaged(step, counted):
    assert is_unmanaged(step) is counted


def owned_pod(*owners: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "p", "namespace": "default", "ownerReferences": list(owners)}
    if annotations:
        metadata["annotations"] = annotations
    return {"metadata": metadata}


@pytest.mark.parametrize("raw, expected", [
    pytest.param(owned_pod({"kind": "ReplicaSet", "name": "web-5d8f", "uid": "r", "controller": True}),
                 OwnerFacts(Owner("ReplicaSet", "web-5d8f", "r")), id="controlling-owner"),
    pytest.param(owned_pod({"kind": "ConfigMap", "name": "c", "uid": "c"}), OwnerFacts(), id="non-controlling-only"),
    pytest.param(owned_pod(), OwnerFacts(), id="bare"),
    pytest.param(owned_pod({"kind": "Node", "name": "node-a", "uid": "n", "controller": True}),
                 OwnerFacts(Owner("Node", "node-a", "n"), mirror=True), id="mirror-by-owner"),
    pytest.param(owned_pod(annotations={"kubernetes.io/config.mirror": "abc"}), OwnerFacts(mirror=True),
                 id="mirror-by-annotation"),
])
def test_owner_facts(raw, expected):
    assert owner_facts(raw) == expected


def owner(kind: str = "ReplicaSet", uid: str = "o1", **fields: Any) -> dict[str, Any]:
    metadata = {"name": "o", "uid": uid, **fields.pop("metadata", {})}
    return {"kind": kind, "metadata": metadata, **fields}


@pytest.mark.parametrize("kind, obj, verdict", [
    pytest.param("ReplicaSet", owner(spec={"replicas": 3}), "", id="replicaset-recreates"),
    pytest.param("ReplicaSet", owner(spec={"replicas": 0}), "owner-scaled-to-zero", id="replicaset-at-zero"),
    pytest.param("StatefulSet", owner("StatefulSet", spec={"replicas": 0}), "owner-scaled-to-zero",
                 id="statefulset-at-zero"),
    pytest.param("DaemonSet", owner("DaemonSet", metadata={"deletionTimestamp": "2024-01-01T00:00:00Z"}),
                 "owner-deleting", id="deleting"),
    pytest.param("ReplicaSet", None, "owner-gone", id="not-found"),
    pytest.param("ReplicaSet", owner(uid="another"), "owner-gone", id="replaced-under-its-name"),
    pytest.param("Job", owner("Job", status={"conditions": [{"type": "Complete", "status": "True"}]}), "job-finished",
                 id="job-complete"),
    pytest.param("Job", owner("Job", status={"conditions": [{"type": "Failed", "status": "True"}]}), "job-finished",
                 id="job-failed"),
    pytest.param("Job", owner("Job", status={"active": 1}), "", id="job-running-recreates"),
])
def test_owner_verdict(kind, obj, verdict):
    assert owner_verdict(Owner(kind, "o", "o1"), obj) == verdict


def test_an_owner_of_a_recreating_kind_needs_reading_once():
    facts = OwnerFacts(Owner("Job", "j", "j"))
    assert facts.needs_reading
    assert not OwnerFacts(Owner("Job", "j", "j"), verdict="").needs_reading
    assert not OwnerFacts().needs_reading and not OwnerFacts(Owner("CloneSet", "c", "c")).needs_reading


def test_agent_ready_since_is_the_earliest_ready_transition():
    early, late, not_ready = agent_pod("node-a"), agent_pod("node-a", name="b"), agent_pod("node-a", ready=False)
    early["status"]["conditions"][0]["lastTransitionTime"] = stamp(NOW - 50)
    late["status"]["conditions"][0]["lastTransitionTime"] = stamp(NOW - 10)
    not_ready["status"]["conditions"][0]["lastTransitionTime"] = stamp(NOW - 500)
    assert agent_ready_since([late, early, not_ready]) == NOW - 50
    assert agent_ready_since([not_ready]) is None


def running_pod(name: str, node_name: str = "node-a", *, started: float = NOW - 600) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"},
            "spec": {"nodeName": node_name},
            "status": {"phase": "Running", "podIP": "10.0.0.9", "startTime": stamp(started)}}


def test_situations_read_a_snapshot_with_the_agents_ready_time():
    agent = agent_pod("node-a")
    agent["status"]["conditions"][0]["lastTransitionTime"] = stamp(NOW - 30)
    managed, unmanaged = running_pod("managed"), running_pod("unmanaged")
    snap = Snapshot(pods=[managed, unmanaged, running_pod("elsewhere", "node-b")],
                    nodes=[node("node-a"), node("node-b", tainted=True)], agents=[agent, agent_pod("node-b")],
                    endpoints=[endpoint(managed)])
    got = {p["metadata"]["name"]: s for p, s in situations(snap, CILIUM_TAINT_KEY, GATE)}
    assert got["managed"].endpoint_state == "ready"
    assert got["unmanaged"].endpoint_state is None
    assert got["unmanaged"].node == NodeFacts(AgentState.READY, ready_since=NOW - 30)
    assert got["elsewhere"].node == NodeFacts(AgentState.NOT_READY)
    # the agent became ready 30 s ago: a one-shot look still gives the pod its grace period from then
    assert plan_unmanaged(got["unmanaged"], OwnerFacts(), TIMINGS, NOW, include_bare=True) == Plan(
        Action.WAIT, "grace-period", NOW + 30)
    assert snapshot_unmanaged(got["unmanaged"])  # audit counts it at once
    assert not snapshot_unmanaged(got["managed"])


@pytest.mark.parametrize("scope, fields, expected", [
    pytest.param(PodScope(), "status.phase=Running", [Selection(None, "status.phase=Running", None)], id="all"),
    pytest.param(PodScope(exclude_namespaces=("kube-system", "a")), "x=y",
                 [Selection(None, "x=y,metadata.namespace!=kube-system,metadata.namespace!=a", None)], id="excluded"),
    pytest.param(PodScope(namespaces=("a", "b", "c"), exclude_namespaces=("b",), selector="app=web"), "",
                 [Selection("a", "", "app=web"), Selection("c", "", "app=web")], id="named-minus-excluded"),
    pytest.param(PodScope(exclude_namespaces=("a",)), "", [Selection(None, "metadata.namespace!=a", None)],
                 id="excluded-only"),
])
def test_selections_read_exactly_the_scope(scope, fields, expected):
    assert selections(scope, fields) == expected


def test_selections_for_endpoints_drop_the_label_selector():
    assert selections(PodScope(selector="app=web"), labels=False) == [Selection(None, "", None)]
