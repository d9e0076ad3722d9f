"""Small cache entries: what the controller keeps of each object, cut out at insert."""

from __future__ import annotations

import pytest

from tests.objects import GATE, agent_pod, endpoint, gated_pod, node
from webhook.controller.rules import parse_time, pod_facts
from webhook.controller.summaries import (
    AgentSummary,
    EndpointSummary,
    NodeSummary,
    PodSummary,
    node_of_summary,
    reboot_boundary,
    summarize_agent,
    summarize_endpoint,
    summarize_node,
    summarize_pod,
)
from webhook.policy import CILIUM_TAINT_KEY
from webhook.unmanaged import owner_facts


def full_node(**status: object) -> dict:
    the_node = node("node-a", tainted=True)
    the_node["metadata"]["managedFields"] = [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}]
    the_node["status"] = {"conditions": [{"type": "MemoryPressure", "status": "False"},
                                         {"type": "Ready", "status": "True"}],
                          "images": [{"names": ["registry/image:1"], "sizeBytes": 1}] * 20,
                          "nodeInfo": {"bootID": "boot-1", "kubeletVersion": "v1.31.0"}, **status}
    return the_node


def test_a_node_keeps_its_taints_readiness_and_boot_id_only():
    summary = summarize_node(full_node())
    assert summary == NodeSummary(taints=((CILIUM_TAINT_KEY, "true", "NoExecute"),), ready=True, boot_id="boot-1")
    assert summary.has_taint(CILIUM_TAINT_KEY) and not summary.has_taint("other")


@pytest.mark.parametrize("conditions, ready", [
    pytest.param([{"type": "Ready", "status": "False"}], False, id="not-ready"),
    pytest.param([], False, id="no-conditions"),
    pytest.param([{"type": "Ready", "status": "True"}], True, id="ready"),
])
def test_node_readiness_is_its_ready_condition(conditions, ready):
    assert summarize_node(full_node(conditions=conditions)).ready is ready


def test_nodes_with_the_same_taint_share_one_tuple():
    first, second = summarize_node(full_node()), summarize_node(full_node())
    assert first.taints[0] is second.taints[0]


def test_summaries_hold_no_string_of_the_parsed_object():
    raw = full_node()
    summary = summarize_node(raw)
    assert summary.boot_id == "boot-1" and summary.boot_id is not raw["status"]["nodeInfo"]["bootID"]
    pod = gated_pod("agent-1")
    pod["metadata"]["uid"] = "u-1"
    facts = summarize_pod(pod, GATE).facts
    assert facts.name == "agent-1" and facts.name is not pod["metadata"]["name"]
    assert facts.pod_ip is not pod["status"]["podIP"]


def test_a_pod_summary_is_the_rules_facts_and_the_owner_facts():
    pod = gated_pod("agent-1", gate_true=True)
    pod["metadata"]["uid"] = "u-1"
    pod["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent",
                                           "uid": "ds-1", "controller": True}]
    summary = summarize_pod(pod, GATE)
    assert summary == PodSummary(pod_facts(pod, GATE), owner_facts(pod))


def test_pods_of_one_owner_share_one_owner_value():
    pods = [gated_pod(f"agent-{i}") for i in range(2)]
    for pod in pods:
        pod["metadata"]["ownerReferences"] = [{"kind": "DaemonSet", "name": "agent", "uid": "ds-1", "controller": True}]
    first, second = (summarize_pod(p, GATE) for p in pods)
    assert first.owner is second.owner


def test_a_reboot_is_a_changed_boot_id_and_its_boundary_the_last_heartbeat():
    before = summarize_node(full_node(conditions=[{"type": "Ready", "status": "True",
                                                   "lastHeartbeatTime": "2024-01-01T00:00:00Z"}]))
    after = summarize_node(full_node(nodeInfo={"bootID": "boot-2"}))
    assert reboot_boundary(before, after, now=2e9) == parse_time("2024-01-01T00:00:00Z")
    assert reboot_boundary(before, before, now=2e9) is None
    assert reboot_boundary(None, after, now=2e9) is None


NOW = 1_000_000.0  # 1970-01-12T13:46:40Z


def booted(boot: str, heartbeat: str | None = None) -> dict:
    conditions = [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat}] if heartbeat else []
    return {"metadata": {"name": "node-a"}, "status": {"nodeInfo": {"bootID": boot}, "conditions": conditions}}


@pytest.mark.parametrize("old, new, expected", [
    pytest.param(booted("b1", "1970-01-12T13:46:30Z"), booted("b2"), NOW - 10, id="last-heartbeat-of-the-old-boot"),
    pytest.param(booted("b1"), booted("b2"), NOW, id="no-heartbeat-when-seen"),
    pytest.param(booted("b1", "1970-01-12T13:56:40Z"), booted("b2"), NOW, id="heartbeat-from-the-future-ignored"),
    pytest.param(booted("b1"), booted("b1"), None, id="same-boot"),
    pytest.param(booted(""), booted("b2"), None, id="first-boot-id-seen"),
    pytest.param(None, booted("b2"), None, id="new-node"),
])
def test_reboot_boundary(old, new, expected):
    assert reboot_boundary(summarize(old), summarize(new), NOW) == expected


def summarize(node: dict | None) -> NodeSummary | None:
    return None if node is None else summarize_node(node)


def test_boot_id_of_a_node_without_status_is_empty():
    assert summarize_node({"metadata": {"name": "n"}}).boot_id == ""


def heartbeat(at: str) -> dict:
    return full_node(conditions=[{"type": "Ready", "status": "True", "lastHeartbeatTime": at}])


def test_a_new_heartbeat_alone_is_no_change():
    first, later = summarize_node(heartbeat("2024-01-01T00:00:00Z")), summarize_node(heartbeat("2024-01-01T00:05:00Z"))
    assert first == later and first.heartbeat != later.heartbeat


@pytest.mark.parametrize("ready", [True, False])
def test_an_agent_is_its_node_and_readiness(ready):
    assert summarize_agent(agent_pod("node-a", ready=ready)) == AgentSummary(node="node-a", ready=ready)


def test_an_endpoint_owned_by_an_earlier_pod_has_no_state_for_the_new_one():
    pod = gated_pod("agent-1")
    pod["metadata"]["uid"] = "old-uid"
    summary = summarize_endpoint(endpoint(pod, state="ready"))
    assert summary == EndpointSummary(owner_uids=("old-uid",), state="ready")
    assert summary.state_for("old-uid") == "ready" and summary.state_for("new-uid") is None


def test_an_endpoint_without_a_pod_owner_counts_for_any_pod():
    summary = summarize_endpoint({"metadata": {"name": "x"}, "status": {"state": "waiting-for-identity"}})
    assert summary.state_for("any") == "waiting-for-identity"


def test_pods_and_agents_are_indexed_by_their_node():
    summary = summarize_pod(gated_pod("p", node="node-a"), GATE)
    assert node_of_summary(summary) == "node-a"
    assert node_of_summary(AgentSummary(node="node-b", ready=True)) == "node-b"
    assert node_of_summary(NodeSummary()) == ""
