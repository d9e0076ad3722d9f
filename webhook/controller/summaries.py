"""Small cache entries: what the gate controller reads of each API object, cut out when the object arrives (a
transform at insert, like client-go's SetTransform). Pure: plain dicts in, frozen slotted values out; no I/O.

Two rules keep the caches small. A summary holds only what a decision reads: a Node is its taints, readiness and
boot ID, not ~10 KiB of images and managed fields. And it holds no string of the parsed API object itself:
values repeated across objects (namespaces, node names, phases) are interned, and the rest are copied, so that
the parsed object, a whole list of them after a resourceVersion=0 list, can be freed, memory pages and all, once
it has been summarised (a kept string would pin the allocator's arena it sits in).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from webhook.cilium import is_pod_ready
from webhook.controller.rules import PodFacts, pod_facts

Taint = tuple[str, str, str]  # key, value, effect


@dataclass(frozen=True, slots=True)
class NodeSummary:
    """A Node as the controller reads it; its name is the cache key."""

    taints: tuple[Taint, ...] = ()
    ready: bool = False  # the Node's Ready condition
    boot_id: str = ""  # status.nodeInfo.bootID: changes when the node reboots

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
        """The state, or None when the endpoint belongs to an earlier pod of the same name (see
        webhook.cilium.endpoint_state, which this mirrors)."""
        if self.owner_uids and pod_uid not in self.owner_uids:
            return None
        return self.state


def summarize_node(node: Mapping[str, Any]) -> NodeSummary:
    spec, status = node.get("spec") or {}, node.get("status") or {}
    taints = tuple(_shared_taint(t) for t in spec.get("taints") or [] if isinstance(t, Mapping) and t.get("key"))
    ready = any(isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or [])
    boot_id = _own(str((status.get("nodeInfo") or {}).get("bootID") or ""))
    return NodeSummary(taints=taints, ready=ready, boot_id=boot_id)


def summarize_agent(pod: Mapping[str, Any]) -> AgentSummary:
    node = str((pod.get("spec") or {}).get("nodeName") or "")
    return AgentSummary(node=sys.intern(node), ready=is_pod_ready(pod))


def summarize_endpoint(endpoint: Mapping[str, Any]) -> EndpointSummary:
    owners = (endpoint.get("metadata") or {}).get("ownerReferences") or []
    uids = tuple(sys.intern(str(o["uid"])) for o in owners
                 if isinstance(o, Mapping) and o.get("kind") == "Pod" and o.get("uid"))
    state = str((endpoint.get("status") or {}).get("state") or "")
    return EndpointSummary(owner_uids=uids, state=sys.intern(state))


def summarize_pod(pod: Mapping[str, Any], gate_condition: str) -> PodFacts:
    """A gated pod: the facts the rules read (rules.pod_facts), with its strings owned or interned. The uid is
    interned, so a pod and its endpoint share one string."""
    f = pod_facts(pod, gate_condition)
    return PodFacts(
        namespace=sys.intern(f.namespace), name=_own(f.name), uid=sys.intern(f.uid),
        node_name=sys.intern(f.node_name), phase=sys.intern(f.phase), pod_ip=_own(f.pod_ip),
        host_network=f.host_network, started_at=f.started_at, terminating=f.terminating, has_gate=f.has_gate,
        gate_true=f.gate_true)


def node_of_summary(value: Any) -> str:
    """The node a cached pod or agent summary is on: the key of the by-node indexes."""
    if isinstance(value, PodFacts):
        return value.node_name
    if isinstance(value, AgentSummary):
        return value.node
    return ""


_taints: dict[Taint, Taint] = {}


def _shared_taint(taint: Mapping[str, Any]) -> Taint:
    # Nodes of a pool carry the same few taints: one tuple each, shared.
    value = (str(taint.get("key") or ""), str(taint.get("value") or ""), str(taint.get("effect") or ""))
    if len(_taints) > 10_000:  # bounded: a cluster with that many distinct taints just shares less
        _taints.clear()
    shared = _taints.get(value)
    if shared is None:
        shared = _taints[value] = (sys.intern(value[0]), sys.intern(value[1]), sys.intern(value[2]))
    return shared


def _own(text: str) -> str:
    """A copy of `text` that shares no memory with the parsed API object it came from."""
    return "".join((text, "")) if text else ""
