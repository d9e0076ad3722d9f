"""What Cilium's own objects say, read from plain API dicts: agent ready on a node, a pod's CiliumEndpoint, a taint.
Pure and stdlib only; shared by the gate controller and `audit`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any


class AgentState(StrEnum):
    UNKNOWN = "unknown"  # the node is not (yet) known
    NO_AGENT = "no-agent"  # no Cilium agent pod is scheduled there: Fargate, virtual nodes
    NOT_READY = "not-ready"  # an agent is scheduled but not Ready, or the node still has the Cilium taint
    READY = "ready"


def endpoint_state(endpoint: Mapping[str, Any] | None, pod_uid: str) -> str | None:
    """The endpoint's state, or None when there is none for *this* pod: an endpoint owned by an earlier pod
    of the same name is stale (Cilium names endpoints after pods and sets the pod as owner)."""
    if endpoint is None:
        return None
    owners = (endpoint.get("metadata") or {}).get("ownerReferences") or []
    pod_owners = [o for o in owners if isinstance(o, Mapping) and o.get("kind") == "Pod" and o.get("uid")]
    if pod_owners and all(o.get("uid") != pod_uid for o in pod_owners):
        return None
    return str((endpoint.get("status") or {}).get("state") or "")


def agent_state(node: Mapping[str, Any] | None, agent_pods: Iterable[Mapping[str, Any]], taint_key: str) -> AgentState:
    """"No agent" means no agent pod scheduled on the node; "ready" needs a Ready agent pod and no taint."""
    if node is None:
        return AgentState.UNKNOWN
    agents = list(agent_pods)
    if not agents:
        return AgentState.NO_AGENT
    taints = (node.get("spec") or {}).get("taints") or []
    if any(is_cilium_taint(t, taint_key) for t in taints):
        return AgentState.NOT_READY
    return AgentState.READY if any(is_pod_ready(p) for p in agents) else AgentState.NOT_READY


def is_cilium_taint(taint: Any, taint_key: str) -> bool:
    # Cilium sets and removes the taint by key; its value and effect are the operator's choice.
    return isinstance(taint, Mapping) and taint.get("key") == taint_key


def is_pod_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    if (pod.get("metadata") or {}).get("deletionTimestamp") is not None or status.get("phase") != "Running":
        return False
    return any(isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "True"
               for c in status.get("conditions") or [])
