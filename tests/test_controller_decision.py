"""The gate controller's pure decision: facts and a clock reading in, an action out. No I/O, no fakes."""

from __future__ import annotations

import pytest

from tests.fakekube import validate_event_v1
from tests.objects import GATE, agent_pod, gated_pod, node
from webhook.cilium import AgentState, agent_state, endpoint_state
from webhook.controller import (
    Action,
    Decision,
    Facts,
    GatePolicy,
    NodeFacts,
    PodFacts,
    ReleaseReason,
    TokenBucket,
    condition_patch,
    decide,
    event_body,
    pod_facts,
    recycle_bucket,
)
from webhook.policy import CILIUM_TAINT_KEY

NOW = 1_000_000.0
POLICY = GatePolicy(grace_period=60, release_after=600)
READY_LONG_AGO = NodeFacts(AgentState.READY, ready_since=NOW - 3600)


def pod(**changes) -> PodFacts:
    base = {"namespace": "default", "name": "p", "uid": "u1", "node_name": "node-a", "phase": "Running",
            "pod_ip": "10.0.0.5", "started_at": NOW - 120}
    return PodFacts(**{**base, **changes})


def facts(**changes) -> Facts:
    base = {"pod": pod(), "endpoint_state": None, "node": READY_LONG_AGO}
    return Facts(**{**base, **changes})


@pytest.mark.parametrize("given, expected", [
    pytest.param(facts(endpoint_state="ready"), Decision(Action.SET_CONDITION, "endpoint-ready"),
                 id="endpoint-ready-sets-condition"),
    pytest.param(facts(endpoint_state="ready", pod=pod(gate_true=True)), Decision(Action.SKIP, "gate-true"),
                 id="endpoint-ready-and-gate-true-is-done"),
    pytest.param(facts(endpoint_state="ready", node=NodeFacts(AgentState.NOT_READY)),
                 Decision(Action.SET_CONDITION, "endpoint-ready"), id="endpoint-ready-whatever-the-agent"),
    pytest.param(facts(endpoint_state="waiting-for-identity"),
                 Decision(Action.WAIT, "endpoint-not-ready", NOW - 120 + 600), id="endpoint-not-ready-waits"),
    pytest.param(facts(endpoint_state="regenerating", pod=pod(started_at=NOW - 601)),
                 Decision(Action.RELEASE, ReleaseReason.MAX_WAIT), id="endpoint-not-ready-past-max-wait"),
    pytest.param(facts(pod=pod(phase="Succeeded")), Decision(Action.SKIP, "finished"), id="finished-skipped"),
    pytest.param(facts(pod=pod(phase="Failed")), Decision(Action.SKIP, "finished"), id="failed-skipped"),
    pytest.param(facts(pod=pod(terminating=True)), Decision(Action.SKIP, "terminating"),
                 id="terminating-skipped"),
    pytest.param(facts(pod=pod(has_gate=False)), Decision(Action.SKIP, "no-gate"), id="no-gate-skipped"),
    pytest.param(facts(pod=pod(host_network=True)), Decision(Action.RELEASE, ReleaseReason.HOST_NETWORK),
                 id="host-network-released-never-recycled"),
    pytest.param(facts(endpoints_available=False, pod=pod(started_at=NOW - 30)),
                 Decision(Action.WAIT, "no-cilium-endpoints", NOW + 30), id="no-endpoint-resource-waits-grace"),
    pytest.param(facts(endpoints_available=False),
                 Decision(Action.RELEASE, ReleaseReason.NO_CILIUM_ENDPOINTS),
                 id="no-endpoint-resource-releases-after-grace-never-recycles"),
    pytest.param(facts(endpoints_available=False, pod=pod(gate_true=True)), Decision(Action.SKIP, "gate-true"),
                 id="no-endpoint-resource-and-gate-true-is-done"),
    pytest.param(facts(pod=pod(node_name="", phase="Pending", pod_ip="")), Decision(Action.WAIT, "unscheduled"),
                 id="unscheduled-waits"),
    pytest.param(facts(), Decision(Action.RECYCLE, "unmanaged"), id="unmanaged-after-grace-recycled"),
    pytest.param(facts(pod=pod(gate_true=True)), Decision(Action.RECYCLE, "unmanaged"),
                 id="unmanaged-with-gate-released-still-recycled"),
    pytest.param(facts(node=NodeFacts(AgentState.NOT_READY)), Decision(Action.WAIT, "not-ready", NOW + 480),
                 id="agent-not-ready-waits"),
    pytest.param(facts(node=NodeFacts(AgentState.NO_AGENT)), Decision(Action.WAIT, "no-agent", NOW + 480),
                 id="no-agent-waits"),
    pytest.param(facts(node=NodeFacts(AgentState.UNKNOWN)), Decision(Action.WAIT, "unknown", NOW + 480),
                 id="unknown-node-waits"),
    pytest.param(facts(node=NodeFacts(AgentState.NO_AGENT), pod=pod(gate_true=True)),
                 Decision(Action.WAIT, "no-agent", None), id="no-agent-gate-true-waits-without-timer"),
    pytest.param(facts(node=NodeFacts(AgentState.READY, ready_since=NOW - 10)),
                 Decision(Action.WAIT, "grace-period", NOW + 50), id="grace-runs-from-agent-ready"),
    pytest.param(facts(pod=pod(started_at=NOW - 20)), Decision(Action.WAIT, "grace-period", NOW + 40),
                 id="grace-runs-from-pod-start"),
    pytest.param(facts(pod=pod(phase="Pending", pod_ip="")), Decision(Action.WAIT, "not-running", NOW + 480),
                 id="pending-waits"),
    pytest.param(facts(pod=pod(pod_ip="")), Decision(Action.WAIT, "not-running", NOW + 480),
                 id="running-without-ip-waits"),
    pytest.param(facts(eviction_retry_at=NOW + 30), Decision(Action.WAIT, "eviction-refused", NOW + 30),
                 id="refused-eviction-waits-for-retry"),
    pytest.param(facts(eviction_retry_at=NOW - 1), Decision(Action.RECYCLE, "unmanaged"),
                 id="refused-eviction-retried-when-due"),
    pytest.param(facts(pod=pod(started_at=NOW - 600)), Decision(Action.RELEASE, ReleaseReason.MAX_WAIT),
                 id="max-wait-releases-before-recycling"),
    pytest.param(facts(pod=pod(started_at=NOW - 590), node=NodeFacts(AgentState.READY, ready_since=NOW)),
                 Decision(Action.WAIT, "grace-period", NOW + 10), id="max-wait-sooner-than-grace-end"),
])
def test_decide(given: Facts, expected: Decision):
    assert decide(given, POLICY, NOW) == expected


def test_release_after_zero_turns_the_maximum_wait_off():
    old = facts(pod=pod(started_at=NOW - 100_000), node=NodeFacts(AgentState.NOT_READY))
    assert decide(old, GatePolicy(grace_period=60, release_after=0), NOW) == Decision(Action.WAIT, "not-ready")


def test_pod_facts_reads_the_api_object():
    raw = gated_pod("p", node="node-b", ip="10.1.2.3", started=NOW)
    raw["metadata"]["uid"] = "u9"
    assert pod_facts(raw, GATE) == PodFacts(namespace="default", name="p", uid="u9", node_name="node-b",
                                            phase="Running", pod_ip="10.1.2.3", started_at=NOW, has_gate=True)


def test_pod_facts_sees_the_gate_condition_and_deletion():
    raw = gated_pod("p", gate_true=True)
    raw["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    f = pod_facts(raw, GATE)
    assert (f.gate_true, f.terminating) == (True, True)


def test_pod_facts_falls_back_to_creation_time_before_start():
    raw = gated_pod("p", phase="Pending")
    raw["metadata"]["creationTimestamp"] = "1970-01-12T13:46:40Z"
    assert pod_facts(raw, GATE).started_at == NOW


def test_pod_without_the_gate_in_its_spec_is_not_gated():
    raw = gated_pod("p")
    raw["spec"]["readinessGates"] = [{"conditionType": "other.io/ready"}]
    assert pod_facts(raw, GATE).has_gate is False


@pytest.mark.parametrize("owner_uid, expected", [
    pytest.param("u1", "ready", id="owned-by-this-pod"),
    pytest.param("u-old", None, id="stale-from-an-earlier-pod-of-the-same-name"),
    pytest.param(None, "ready", id="no-owner-recorded"),
])
def test_endpoint_state_belongs_to_this_pod(owner_uid, expected):
    cep = {"metadata": {"name": "p"}, "status": {"state": "ready"}}
    if owner_uid:
        cep["metadata"]["ownerReferences"] = [{"kind": "Pod", "name": "p", "uid": owner_uid}]
    assert endpoint_state(cep, "u1") == expected


def test_endpoint_without_state_counts_as_not_ready():
    assert endpoint_state({"metadata": {}, "status": {}}, "u1") == ""


@pytest.mark.parametrize("the_node, agents, expected", [
    pytest.param(None, [agent_pod("node-a")], AgentState.UNKNOWN, id="unknown-node"),
    pytest.param(node("node-a"), [], AgentState.NO_AGENT, id="no-agent-scheduled"),
    pytest.param(node("node-a", tainted=True), [], AgentState.NO_AGENT, id="tainted-without-agent"),
    pytest.param(node("node-a"), [agent_pod("node-a")], AgentState.READY, id="ready-agent"),
    pytest.param(node("node-a", tainted=True), [agent_pod("node-a")], AgentState.NOT_READY,
                 id="ready-agent-but-taint-still-there"),
    pytest.param(node("node-a"), [agent_pod("node-a", ready=False)], AgentState.NOT_READY, id="agent-not-ready"),
    pytest.param(node("node-a"), [agent_pod("node-a", ready=False), agent_pod("node-a", name="cilium-new")],
                 AgentState.READY, id="one-of-two-agents-ready"),
])
def test_agent_state(the_node, agents, expected):
    assert agent_state(the_node, agents, CILIUM_TAINT_KEY) is expected


def test_terminating_agent_is_not_ready():
    agent = agent_pod("node-a")
    agent["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    assert agent_state(node("node-a"), [agent], CILIUM_TAINT_KEY) is AgentState.NOT_READY


def test_condition_patch_carries_the_uid_and_only_the_gate_condition():
    patch = condition_patch("u1", GATE, "CiliumManaged", "m", NOW)
    assert patch["metadata"] == {"uid": "u1"}
    assert [(c["type"], c["status"]) for c in patch["status"]["conditions"]] == [(GATE, "True")]


def test_event_body_is_a_valid_events_v1_event():
    raw = gated_pod("p")
    raw["metadata"]["uid"] = "u1"
    event = event_body(raw, "UnmanagedPodRecycled", "Warning", "Evict", "n" * 2000, instance="x" * 200, now=NOW)
    assert validate_event_v1(event) == []
    assert event["regarding"] == {"apiVersion": "v1", "kind": "Pod", "namespace": "default", "name": "p",
                                  "uid": "u1"}
    assert event["reportingController"] == "startupguard.io/controller"


def test_token_bucket_allows_a_burst_then_the_rate():
    bucket = TokenBucket(rate_per_minute=5, burst=5, now=0)
    for _ in range(5):
        assert bucket.available(0)
        bucket.take(0)
    assert not bucket.available(0)
    assert bucket.wait_time(0) == pytest.approx(12)
    assert not bucket.available(11.9)
    assert bucket.available(12)


def test_token_bucket_refills_no_higher_than_the_burst():
    bucket = TokenBucket(rate_per_minute=5, burst=5, now=0)
    for _ in range(5):
        bucket.take(0)
    bucket.available(3600)
    taken = 0
    while bucket.available(3600):
        bucket.take(3600)
        taken += 1
    assert taken == 5


def test_zero_recycle_rate_never_allows_an_eviction():
    bucket = recycle_bucket(0, now=0)
    assert not bucket.available(1e9)
    assert bucket.wait_time(0) == float("inf")


def test_fractional_recycle_rate_still_allows_one_at_a_time():
    bucket = recycle_bucket(0.5, now=0)
    assert bucket.available(0)
    bucket.take(0)
    assert bucket.wait_time(0) == pytest.approx(120)
