"""Small cache entries: what the gate controller reads of each API object, cut out when the object arrives (a
transform at insert, like client-go's SetTransform). Pure: plain dicts in, frozen slotted values out; no I/O.

Two rules keep the caches small. A summary holds only what a decision reads: a Node is its taints, readiness,
boot ID and last heartbeat, not ~10 KiB of images and managed fields. And it holds no string of the parsed API
object itself: every string is an interned copy, so that the parsed object, a whole list of them after a
resourceVersion=0 list, can be freed, memory pages and all, once it has been summarised (a kept string would
pin the allocator's arena it sits in), and a pod, its cache key and its endpoint share one copy of its name and uid.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from webhook.cilium import AgentState, endpoint_pod_uids, is_pod_ready, judge_agent, judge_endpoint
from webhook.controller.rules import PodFacts, parse_time, pod_facts, reboot_time
from webhook.unmanaged import Owner, OwnerFacts, owner_facts

Taint = tuple[str, str, str]  # key, value, effect
SHARED_LIMIT = 10_000  # distinct taints or owners shared; past it a cluster just shares less


@dataclass(frozen=True, slots=True)
class PodSummary:
    """A pod as the controller reads it: the rules' facts and what it says of its controlling owner."""

    facts: PodFacts
    owner: OwnerFacts


@dataclass(frozen=True, slots=True)
class NodeSummary:
    """A Node as the controller reads it; its name is the cache key."""

    taints: tuple[Taint, ...] = ()
    ready: bool = False  # the Node's Ready condition
    boot_id: str = ""  # status.nodeInfo.bootID: changes when the node reboots
    # The Ready condition's lastHeartbeatTime, for a reboot's boundary; a new heartbeat alone is no change.
    heartbeat: float | None = field(default=None, compare=False)

    def has_taint(self, key: str) -> bool:
        return any(taint[0] == key for taint in self.taints)


@dataclass(frozen=True, slots=True)
class AgentSummary:
    """A Cilium agent pod: where it runs and whether it is Ready (Running, not terminating, Ready True)."""

    node: str
    ready: bool


@dataclass(frozen=True, slots=True)
class EndpointSummary:
    """A CiliumEndpoint: the uids of the pods that own it, and its state."""

    owner_uids: tuple[str, ...]
    state: str

    def state_for(self, pod_uid: str) -> str | None:
        """The state, or None when the endpoint belongs to an earlier pod of the same name (as
        webhook.cilium.endpoint_state)."""
        return judge_endpoint(self.owner_uids, self.state, pod_uid)


def summarize_pod(pod: Mapping[str, Any], gate_condition: str) -> PodSummary:
    f = pod_facts(pod, gate_condition)
    facts = replace(f, namespace=shared(f.namespace), name=shared(f.name), uid=shared(f.uid),
                    node_name=shared(f.node_name), phase=shared(f.phase), pod_ip=shared(f.pod_ip))
    return PodSummary(facts, _shared_owner(owner_facts(pod)))


def summarize_node(node: Mapping[str, Any]) -> NodeSummary:
    spec, status = node.get("spec") or {}, node.get("status") or {}
    taints = tuple(_shared_taint(t) for t in spec.get("taints") or [] if isinstance(t, Mapping) and t.get("key"))
    ready_condition = next((c for c in status.get("conditions") or []
                            if isinstance(c, Mapping) and c.get("type") == "Ready"), {})
    return NodeSummary(taints=taints, ready=ready_condition.get("status") == "True",
                       boot_id=_own(str((status.get("nodeInfo") or {}).get("bootID") or "")),
                       heartbeat=parse_time(ready_condition.get("lastHeartbeatTime")))


def summarize_agent(pod: Mapping[str, Any]) -> AgentSummary:
    return AgentSummary(node=shared(str((pod.get("spec") or {}).get("nodeName") or "")), ready=is_pod_ready(pod))


def summarize_endpoint(endpoint: Mapping[str, Any]) -> EndpointSummary:
    uids = tuple(shared(uid) for uid in endpoint_pod_uids(endpoint))
    return EndpointSummary(owner_uids=uids, state=shared(str((endpoint.get("status") or {}).get("state") or "")))


def agent_state(node: NodeSummary | None, agents: Iterable[AgentSummary], taint_key: str) -> AgentState:
    """webhook.cilium.agent_state, from summaries."""
    if node is None:
        return AgentState.UNKNOWN
    return judge_agent(node.has_taint(taint_key), [agent.ready for agent in agents])


def reboot_boundary(old: NodeSummary | None, new: NodeSummary | None, now: float) -> float | None:
    """rules.reboot_time for a node's summaries before and after a change."""
    if old is None or new is None:
        return None
    return reboot_time(old.boot_id, new.boot_id, old.heartbeat, now)


def node_of_summary(value: Any) -> str:
    """The node a cached pod or agent summary is on: the key of the by-node indexes."""
    if isinstance(value, PodSummary):
        return value.facts.node_name
    if isinstance(value, AgentSummary):
        return value.node
    return ""


def uid_of_summary(pod: PodSummary | None) -> str:
    """A cached pod summary's uid; "" for no pod."""
    return pod.facts.uid if pod is not None else ""


def shared(text: str) -> str:
    """One copy of `text` for every holder (interned), and never the parsed object's own string: interning that
    one would keep it, and with it the memory of everything parsed around it."""
    return sys.intern(_own(text)) if text else ""


def _own(text: str) -> str:
    """A copy of `text` of its own, for a value no other object shares (a boot ID)."""
    return "".join((text, "")) if text else ""


_taints: dict[Taint, Taint] = {}
_owners: dict[OwnerFacts, OwnerFacts] = {}


def _shared_taint(taint: Mapping[str, Any]) -> Taint:
    # Nodes of a pool carry the same few taints: one tuple each.
    value = (str(taint.get("key") or ""), str(taint.get("value") or ""), str(taint.get("effect") or ""))
    known = _taints.get(value)
    if known is None:
        if len(_taints) >= SHARED_LIMIT:
            _taints.clear()
        known = _taints[value] = (shared(value[0]), shared(value[1]), shared(value[2]))
    return known


def _shared_owner(facts: OwnerFacts) -> OwnerFacts:
    # The pods of one DaemonSet or ReplicaSet have one owner: one value for all of them.
    known = _owners.get(facts)
    if known is None:
        if len(_owners) >= SHARED_LIMIT:
            _owners.clear()
        owner = Owner(shared(facts.owner.kind), shared(facts.owner.name), shared(facts.owner.uid))
        known = _owners[facts] = replace(facts, owner=owner)
    return known
