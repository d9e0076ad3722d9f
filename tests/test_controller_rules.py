"""The gate controller's rules: a pod's situation and a clock reading in, a plan out. No I/O, no fakes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.objects import GATE, gated_pod
from webhook.cilium import AgentState
from webhook.controller.rules import (
    Action,
    NodeFacts,
    Plan,
    PodFacts,
    ReleaseReason,
    Situation,
    Timings,
    condition_patch,
    condition_text,
    containers_started_at,
    eviction_retry_at,
    micro_time,
    plan,
    pod_facts,
)

NOW = 1_000_000.0
TIMINGS = Timings(grace_period=60, release_after=600)
READY_LONG_AGO = NodeFacts(AgentState.READY, ready_since=NOW - 3600)
REBOOTED = NodeFacts(AgentState.READY, ready_since=NOW - 100, booted_at=NOW - 100)


def pod(**changes) -> PodFacts:
    base = {"namespace": "default", "name": "p", "uid": "u1", "node_name": "node-a", "phase": "Running",
            "pod_ip": "10.0.0.5", "started_at": NOW - 120}
    return PodFacts(**{**base, **changes})


def situation(**changes) -> Situation:
    base = {"pod": pod(), "endpoint_state": None, "node": READY_LONG_AGO}
    return Situation(**{**base, **changes})


@pytest.mark.parametrize("given, expected", [
    pytest.param(situation(endpoint_state="ready"), Plan(Action.SET_CONDITION, "endpoint-ready"),
                 id="endpoint-ready-sets-condition"),
    pytest.param(situation(endpoint_state="ready", pod=pod(gate_true=True)), Plan(Action.SKIP, "gate-true"),
                 id="endpoint-ready-and-gate-true-is-done"),
    pytest.param(situation(endpoint_state="ready", node=NodeFacts(AgentState.NOT_READY)),
                 Plan(Action.SET_CONDITION, "endpoint-ready"), id="endpoint-ready-whatever-the-agent"),
    pytest.param(situation(endpoint_state="waiting-for-identity"),
                 Plan(Action.WAIT, "endpoint-not-ready", NOW - 120 + 600), id="endpoint-not-ready-waits"),
    pytest.param(situation(endpoint_state="regenerating", pod=pod(started_at=NOW - 601)),
                 Plan(Action.RELEASE, ReleaseReason.MAX_WAIT), id="endpoint-not-ready-past-max-wait"),
    pytest.param(situation(pod=pod(phase="Succeeded")), Plan(Action.SKIP, "finished"), id="finished-skipped"),
    pytest.param(situation(pod=pod(phase="Failed")), Plan(Action.SKIP, "finished"), id="failed-skipped"),
    pytest.param(situation(pod=pod(terminating=True)), Plan(Action.SKIP, "terminating"),
                 id="terminating-skipped"),
    pytest.param(situation(pod=pod(has_gate=False)), Plan(Action.SKIP, "no-gate"), id="no-gate-skipped"),
    pytest.param(situation(pod=pod(host_network=True)), Plan(Action.RELEASE, ReleaseReason.HOST_NETWORK),
                 id="host-network-released-never-recycled"),
    pytest.param(situation(endpoints_available=False, pod=pod(started_at=NOW - 30)),
                 Plan(Action.WAIT, "no-cilium-endpoints", NOW + 30), id="no-endpoint-resource-waits-grace"),
    pytest.param(situation(endpoints_available=False),
                 Plan(Action.RELEASE, ReleaseReason.NO_CILIUM_ENDPOINTS),
                 id="no-endpoint-resource-releases-after-grace-never-recycles"),
    pytest.param(situation(endpoints_available=False, pod=pod(gate_true=True)), Plan(Action.SKIP, "gate-true"),
                 id="no-endpoint-resource-and-gate-true-is-done"),
    pytest.param(situation(pod=pod(node_name="", phase="Pending", pod_ip="")), Plan(Action.WAIT, "unscheduled"),
                 id="unscheduled-waits"),
    pytest.param(situation(), Plan(Action.RECYCLE, "unmanaged"), id="unmanaged-after-grace-recycled"),
    pytest.param(situation(pod=pod(gate_true=True)), Plan(Action.RECYCLE, "unmanaged"),
                 id="unmanaged-with-gate-released-still-recycled"),
    pytest.param(situation(node=NodeFacts(AgentState.NOT_READY)), Plan(Action.WAIT, "not-ready", NOW + 480),
                 id="agent-not-ready-waits"),
    pytest.param(situation(node=NodeFacts(AgentState.NO_AGENT)), Plan(Action.WAIT, "no-agent", NOW + 480),
                 id="no-agent-waits"),
    pytest.param(situation(node=NodeFacts(AgentState.UNKNOWN)), Plan(Action.WAIT, "unknown", NOW + 480),
                 id="unknown-node-waits"),
    pytest.param(situation(node=NodeFacts(AgentState.NO_AGENT), pod=pod(gate_true=True)),
                 Plan(Action.WAIT, "no-agent", None), id="no-agent-gate-true-waits-without-timer"),
    pytest.param(situation(node=NodeFacts(AgentState.READY, ready_since=NOW - 10)),
                 Plan(Action.WAIT, "grace-period", NOW + 50), id="grace-runs-from-agent-ready"),
    pytest.param(situation(pod=pod(started_at=NOW - 20)), Plan(Action.WAIT, "grace-period", NOW + 40),
                 id="grace-runs-from-pod-start"),
    pytest.param(situation(pod=pod(phase="Pending", pod_ip="")), Plan(Action.WAIT, "not-running", NOW + 480),
                 id="pending-waits"),
    pytest.param(situation(pod=pod(pod_ip="")), Plan(Action.WAIT, "not-running", NOW + 480),
                 id="running-without-ip-waits"),
    pytest.param(situation(eviction_retry_at=NOW + 30), Plan(Action.WAIT, "eviction-refused", NOW + 30),
                 id="refused-eviction-waits-for-retry"),
    pytest.param(situation(eviction_retry_at=NOW - 1), Plan(Action.RECYCLE, "unmanaged"),
                 id="refused-eviction-retried-when-due"),
    pytest.param(situation(pod=pod(started_at=NOW - 600)), Plan(Action.RELEASE, ReleaseReason.MAX_WAIT),
                 id="max-wait-releases-before-recycling"),
    pytest.param(situation(pod=pod(started_at=NOW - 590), node=NodeFacts(AgentState.READY, ready_since=NOW)),
                 Plan(Action.WAIT, "grace-period", NOW + 10), id="max-wait-sooner-than-grace-end"),
    pytest.param(situation(pod=pod(gate_true=True), node=REBOOTED), Plan(Action.WAIT, "not-restarted-since-boot"),
                 id="rebooted-node-pod-not-restarted-waits-on-its-status"),
    pytest.param(situation(pod=pod(gate_true=True, containers_started_at=NOW - 70), node=REBOOTED),
                 Plan(Action.RECYCLE, "unmanaged"), id="rebooted-node-pod-restarted-without-endpoint-recycled"),
    pytest.param(situation(pod=pod(gate_true=True, containers_started_at=NOW - 70),
                           node=replace(REBOOTED, ready_since=NOW - 30)),
                 Plan(Action.WAIT, "grace-period", NOW + 30), id="rebooted-node-grace-runs-from-the-boot"),
    pytest.param(situation(pod=pod(gate_true=True, started_at=NOW - 70), node=REBOOTED),
                 Plan(Action.RECYCLE, "unmanaged"), id="pod-created-after-the-boot-needs-no-restart"),
    pytest.param(situation(endpoint_state="ready", pod=pod(gate_true=True), node=REBOOTED),
                 Plan(Action.SKIP, "gate-true"), id="rebooted-node-managed-pod-keeps-its-condition"),
])
def test_plan(given: Situation, expected: Plan):
    assert plan(given, TIMINGS, NOW) == expected


def test_release_after_zero_turns_the_maximum_wait_off():
    old = situation(pod=pod(started_at=NOW - 100_000), node=NodeFacts(AgentState.NOT_READY))
    assert plan(old, Timings(grace_period=60, release_after=0), NOW) == Plan(Action.WAIT, "not-ready")


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


def test_condition_patch_carries_the_uid_and_only_the_gate_condition():
    patch = condition_patch("u1", GATE, "CiliumManaged", "m", NOW)
    assert patch["metadata"] == {"uid": "u1"}
    assert [(c["type"], c["status"]) for c in patch["status"]["conditions"]] == [(GATE, "True")]


@pytest.mark.parametrize("step, reason, words", [
    pytest.param(Plan(Action.SET_CONDITION, "endpoint-ready"), "CiliumManaged", "its CiliumEndpoint is ready",
                 id="set-condition"),
    pytest.param(Plan(Action.RELEASE, ReleaseReason.MAX_WAIT), "GateReleased", "600s after the pod started "
                 "(--release-after)", id="max-wait"),
    pytest.param(Plan(Action.RELEASE, ReleaseReason.NO_CILIUM_ENDPOINTS), "GateReleased",
                 "does not serve ciliumendpoints", id="no-cilium-endpoints"),
    pytest.param(Plan(Action.RELEASE, ReleaseReason.HOST_NETWORK), "GateReleased", "host-network pod",
                 id="host-network"),
    pytest.param(Plan(Action.RELEASE, ReleaseReason.RELEASE_ALL), "GateReleased", "--release-all",
                 id="release-all"),
])
def test_condition_text_names_why(step: Plan, reason: str, words: str):
    got_reason, message = condition_text(step, TIMINGS)
    assert got_reason == reason and words in message


@pytest.mark.parametrize("changes, waiting", [
    pytest.param({}, True, id="gated-and-not-true"),
    pytest.param({"gate_true": True}, False, id="gate-true"),
    pytest.param({"phase": "Succeeded"}, False, id="finished"),
    pytest.param({"terminating": True}, False, id="terminating"),
    pytest.param({"has_gate": False}, False, id="no-gate"),
])
def test_a_pod_waits_while_its_gate_is_not_true_and_it_may_still_run(changes, waiting):
    assert pod(**changes).is_waiting is waiting


def test_micro_time_always_has_six_fractional_digits():
    assert micro_time(1_700_000_000.0) == "2023-11-14T22:13:20.000000Z"


def test_containers_started_at_is_the_latest_running_container_start():
    status = {"containerStatuses": [
        {"state": {"running": {"startedAt": "1970-01-12T13:46:40Z"}}},
        {"state": {"running": {"startedAt": "1970-01-12T13:46:50Z"}}},
        {"state": {"waiting": {"reason": "CrashLoopBackOff"}}},
    ]}
    assert containers_started_at(status) == NOW + 10
    assert containers_started_at({}) is None


@pytest.mark.parametrize("retry_after, expected", [(None, NOW + 30), (5.0, NOW + 30), (90.0, NOW + 90)])
def test_a_refused_eviction_is_retried_after_retry_after_but_never_sooner_than_the_floor(retry_after, expected):
    assert eviction_retry_at(NOW, retry_after) == expected
