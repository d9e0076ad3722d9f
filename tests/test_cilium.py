"""What Cilium's own objects say: is a pod's CiliumEndpoint its own, is a node's agent ready. Pure."""

from __future__ import annotations

import pytest

from tests.objects import agent_pod, node
from webhook.cilium import AgentState, agent_state, endpoint_state, is_zero_duration, operator_watcher
from webhook.policy import CILIUM_TAINT_KEY


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


@pytest.mark.parametrize("config, restarts, selector", [
    pytest.param({}, True, "k8s-app=kube-dns", id="default-restarts-coredns"),
    pytest.param({"unmanaged-pod-watcher-interval": "0"}, False, "k8s-app=kube-dns", id="helm-restart-false"),
    pytest.param({"unmanaged-pod-watcher-interval": "0s"}, False, "k8s-app=kube-dns", id="zero-duration"),
    pytest.param({"unmanaged-pod-watcher-interval": "15"}, True, "k8s-app=kube-dns", id="seconds"),
    pytest.param({"unmanaged-pod-watcher-interval": "15s", "pod-restart-selector": ""}, True, "",
                 id="empty-selector-restarts-every-pod"),
    pytest.param({"disable-endpoint-crd": "true"}, False, "k8s-app=kube-dns", id="no-endpoints-no-watcher"),
])
def test_operator_watcher_from_cilium_config(config, restarts, selector):
    watcher = operator_watcher(config)
    assert (watcher.restarts_pods, watcher.selector) == (restarts, selector)


def test_operator_watcher_describes_what_it_deletes():
    assert "every pod every 1m" in operator_watcher({"unmanaged-pod-watcher-interval": "1m",
                                                     "pod-restart-selector": ""}).describe()
    assert "does not restart" in operator_watcher({"unmanaged-pod-watcher-interval": "0"}).describe()


@pytest.mark.parametrize("text, zero", [
    ("0", True), ("0s", True), ("0m0s", True), ("0.0s", True), ("15", False), ("1m30s", False), ("500ms", False),
    ("", False), ("soon", False), ("15x", False),
])
def test_is_zero_duration(text, zero):
    assert is_zero_duration(text) is zero
