"""What Cilium's own objects say, read from plain API dicts: agent ready on a node, a pod's CiliumEndpoint, a taint,
whether Cilium's operator restarts unmanaged pods itself. Pure and stdlib only; shared by the controller, `audit` and
`recycle`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
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
    return judge_endpoint(endpoint_pod_uids(endpoint), str((endpoint.get("status") or {}).get("state") or ""),
                          pod_uid)


def endpoint_pod_uids(endpoint: Mapping[str, Any]) -> list[str]:
    """The uids of the pods that own the endpoint."""
    owners = (endpoint.get("metadata") or {}).get("ownerReferences") or []
    return [str(o["uid"]) for o in owners if isinstance(o, Mapping) and o.get("kind") == "Pod" and o.get("uid")]


def judge_endpoint(pod_uids: Sequence[str], state: str, pod_uid: str) -> str | None:
    """The rule of endpoint_state, from the endpoint's owning pods' uids and its state."""
    return None if pod_uids and pod_uid not in pod_uids else state


def agent_state(node: Mapping[str, Any] | None, agent_pods: Iterable[Mapping[str, Any]], taint_key: str) -> AgentState:
    """"No agent" means no agent pod scheduled on the node; "ready" needs a Ready agent pod and no taint."""
    if node is None:
        return AgentState.UNKNOWN
    taints = (node.get("spec") or {}).get("taints") or []
    return judge_agent(any(is_cilium_taint(t, taint_key) for t in taints), [is_pod_ready(p) for p in agent_pods])


def judge_agent(tainted: bool, agents_ready: Iterable[bool]) -> AgentState:
    """The rule of agent_state, for a known node: whether it has the Cilium taint, and each agent pod's
    readiness."""
    ready = list(agents_ready)
    if not ready:
        return AgentState.NO_AGENT
    if tainted:
        return AgentState.NOT_READY
    return AgentState.READY if any(ready) else AgentState.NOT_READY


def is_cilium_taint(taint: Any, taint_key: str) -> bool:
    # Cilium sets and removes the taint by key; its value and effect are the operator's choice.
    return isinstance(taint, Mapping) and taint.get("key") == taint_key


def is_pod_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    if (pod.get("metadata") or {}).get("deletionTimestamp") is not None or status.get("phase") != "Running":
        return False
    return any(isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "True"
               for c in status.get("conditions") or [])


# --- Cilium's own recycler -----------------------------------------------------------------------------------

# The ConfigMap Cilium's Helm chart writes and its operator reads its settings from.
CILIUM_CONFIG = "cilium-config"
# The operator's unmanaged-pod watcher: every interval it deletes Running pods that match its selector and have no
# CiliumEndpoint; an interval of 0 turns it off:
# https://github.com/cilium/cilium/blob/7d0e1392653fc1c2856ec0d38a9f1a64af62427c/operator/unmanagedpods/controller.go
# https://github.com/cilium/cilium/blob/48f86b314e70fc31b8ab52d25fe7fa98149219a5/operator/unmanagedpods/cell.go
# The Helm value operator.unmanagedPodWatcher.restart=false writes "0" into cilium-config:
# https://github.com/cilium/cilium/blob/1efbf98a48ebccdc0c3168da2c63fcd3f28cfae5/install/kubernetes/cilium/templates/cilium-configmap.yaml
WATCHER_INTERVAL_KEY = "unmanaged-pod-watcher-interval"
WATCHER_SELECTOR_KEY = "pod-restart-selector"
WATCHER_DEFAULT_INTERVAL = "15s"
WATCHER_DEFAULT_SELECTOR = "k8s-app=kube-dns"
_GO_DURATION = re.compile(r"(\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


@dataclass(frozen=True)
class OperatorWatcher:
    """What cilium-config says of the operator's unmanaged-pod watcher."""

    restarts_pods: bool
    interval: str  # as configured, or the operator's default
    selector: str  # the pods it may delete; "" means every pod

    def describe(self) -> str:
        if not self.restarts_pods:
            return "Cilium's operator does not restart unmanaged pods"
        which = f"pods matching {self.selector}" if self.selector else "every pod"
        return (f"Cilium's operator deletes unmanaged {which} every {self.interval} "
                f"({WATCHER_INTERVAL_KEY} in {CILIUM_CONFIG}; Helm value operator.unmanagedPodWatcher.restart)")


def operator_watcher(config: Mapping[str, Any]) -> OperatorWatcher:
    """From the data of the cilium-config ConfigMap. The watcher is off when its interval is zero, or when
    CiliumEndpoints are disabled (it has nothing to compare with then)."""
    interval = str(config.get(WATCHER_INTERVAL_KEY) or WATCHER_DEFAULT_INTERVAL).strip()
    selector = str(config.get(WATCHER_SELECTOR_KEY, WATCHER_DEFAULT_SELECTOR)).strip()
    disabled = str(config.get("disable-endpoint-crd") or "").strip().lower() == "true"
    return OperatorWatcher(not disabled and not is_zero_duration(interval), interval, selector)


def is_zero_duration(text: str) -> bool:
    """Whole seconds (older operators) or a Go duration ("15s", "1m30s"). Anything unreadable counts as not zero:
    better a needless warning than a missed one."""
    if text.isdigit():
        return int(text) == 0
    if text and _GO_DURATION.sub("", text) == "":
        return all(float(number) == 0 for number, _, _ in _GO_DURATION.findall(text))
    return False
