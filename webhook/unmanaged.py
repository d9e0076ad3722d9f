"""Which pods Cilium should manage and does not, which of them may be evicted, and why: the one definition that
`audit`, `recycle` and the gate controller share. Pure: plain API dicts and a clock reading in; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from webhook.cilium import AgentState, agent_state, endpoint_state, is_pod_ready
from webhook.config import PodScope
from webhook.controller.rules import (
    FINISHED_PHASES,
    Action,
    NodeFacts,
    Plan,
    Situation,
    Timings,
    parse_time,
    pod_facts,
    unmanaged_step,
)
from webhook.workloads import controller_of

# A static pod's mirror carries this annotation (and a Node as owner); deleting it does not stop the kubelet's pod.
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
# Owners that make a new pod when one of theirs goes away. A ReplicaSet of a Deployment, or a bare one, alike.
RECREATING_KINDS = ("ReplicaSet", "StatefulSet", "DaemonSet", "Job")
# Selected by the API server; the rest of the definition is decided here. Field selectors of pods:
# https://github.com/kubernetes/kubernetes/blob/v1.31.0/pkg/registry/core/pod/strategy.go (ToSelectableFields).
CANDIDATE_PODS = "status.phase=Running,spec.hostNetwork=false"
NO_OWNER = "none"  # the owner_kind label of a pod without a controlling owner

# Why an unmanaged pod is reported and not evicted (Plan.reason of Action.REPORT).
WHY_NOT = {
    "mirror-pod": "a static pod: the kubelet runs it from a file on the node, and evicting its mirror does not "
                  "restart it",
    "bare-pod": "it has no controlling owner, so nothing would recreate it (--include-bare evicts it anyway)",
    "unknown-owner": "its controlling owner is not a ReplicaSet, StatefulSet, DaemonSet or Job, so it is not known "
                     "to recreate it",
    "owner-gone": "its controlling owner no longer exists",
    "owner-deleting": "its controlling owner is being deleted",
    "owner-scaled-to-zero": "its controlling owner wants no pods",
    "job-finished": "its Job has finished",
}


@dataclass(frozen=True)
class Owner:
    """The pod's controlling owner (ownerReferences with controller: true), empty for a bare pod."""

    kind: str = ""
    name: str = ""
    uid: str = ""

    @property
    def label(self) -> str:
        return self.kind or NO_OWNER

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}" if self.kind else "-"


@dataclass(frozen=True)
class OwnerFacts:
    owner: Owner = Owner()
    mirror: bool = False
    # Why the owner will not recreate the pod, "" when it will, None while the owner has not been read.
    verdict: str | None = None

    @property
    def needs_reading(self) -> bool:
        """An eviction must wait for the owner to be read."""
        return self.verdict is None and not self.mirror and self.owner.kind in RECREATING_KINDS


def owner_facts(pod: Mapping[str, Any]) -> OwnerFacts:
    """What the pod itself says of its owner; the verdict needs the owner (owner_verdict)."""
    metadata = pod.get("metadata") or {}
    ref = controller_of(pod) or {}
    owner = Owner(str(ref.get("kind") or ""), str(ref.get("name") or ""), str(ref.get("uid") or ""))
    mirror = MIRROR_ANNOTATION in (metadata.get("annotations") or {}) or owner.kind == "Node"
    return OwnerFacts(owner, mirror)


def owner_verdict(owner: Owner, obj: Mapping[str, Any] | None) -> str:
    """Why the owner, read from the API (None: not found), will not recreate its pod; "" when it will."""
    metadata = (obj or {}).get("metadata") or {}
    if obj is None or (owner.uid and metadata.get("uid") != owner.uid):  # gone, or replaced under its name
        return "owner-gone"
    if metadata.get("deletionTimestamp"):
        return "owner-deleting"
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if owner.kind in ("ReplicaSet", "StatefulSet") and spec.get("replicas") == 0:
        return "owner-scaled-to-zero"
    finished = ("Complete", "Failed", "SuccessCriteriaMet", "FailureTarget")
    if owner.kind == "Job" and any(isinstance(c, Mapping) and c.get("type") in finished and c.get("status") == "True"
                                   for c in status.get("conditions") or []):
        return "job-finished"
    return ""


def plan_unmanaged(situation: Situation, owner: OwnerFacts, timings: Timings, now: float, *,
                   include_bare: bool = False) -> Plan:
    """For a pod the controller does not gate: skip it, wait, recycle it (evict, once its owner is read when
    `owner.needs_reading`), or report it (unmanaged, but evicting it would not bring it back under Cilium)."""
    pod = situation.pod
    if pod.phase in FINISHED_PHASES:
        return Plan(Action.SKIP, "finished")
    if pod.terminating:
        return Plan(Action.SKIP, "terminating")
    if pod.host_network:
        return Plan(Action.SKIP, "host-network")  # Cilium never manages these
    if situation.endpoint_state is not None:
        return Plan(Action.SKIP, "managed")
    if not situation.endpoints_available:  # nothing could tell a managed pod from an unmanaged one
        return Plan(Action.SKIP, "no-cilium-endpoints")
    if not pod.node_name:
        return Plan(Action.WAIT, "unscheduled")
    step = unmanaged_step(situation, timings, now)
    if step.action is not Action.RECYCLE:
        return step
    why_not = _why_not_evict(owner, include_bare)
    return step if why_not is None else Plan(Action.REPORT, why_not)


def plan_reading_owner(situation: Situation, owner: OwnerFacts, timings: Timings, now: float,
                       read_verdict: Callable[[Owner], str], *,
                       include_bare: bool = False) -> tuple[OwnerFacts, Plan]:
    """plan_unmanaged, and when it would evict a pod whose owner must be read first (`owner.needs_reading`): the
    owner's verdict from `read_verdict` (owner_verdict on the object read), and the plan again with it."""
    step = plan_unmanaged(situation, owner, timings, now, include_bare=include_bare)
    if step.action is Action.RECYCLE and owner.needs_reading:
        owner = replace(owner, verdict=read_verdict(owner.owner))
        step = plan_unmanaged(situation, owner, timings, now, include_bare=include_bare)
    return owner, step


def _why_not_evict(owner: OwnerFacts, include_bare: bool) -> str | None:
    if owner.mirror:
        return "mirror-pod"
    if not owner.owner.kind:
        return None if include_bare else "bare-pod"
    if owner.owner.kind not in RECREATING_KINDS:
        return "unknown-owner"
    return owner.verdict or None


def is_unmanaged(step: Plan) -> bool:
    """The plan says the pod is unmanaged past its grace period: counted, reported, or to be evicted."""
    return step.action in (Action.RECYCLE, Action.REPORT) or (step.action is Action.WAIT
                                                               and step.reason == "eviction-refused")


# --- one look at a cluster, for `audit` and `recycle` ------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Pods, nodes, Cilium agents and CiliumEndpoints as listed at one moment."""

    pods: Iterable[Mapping[str, Any]]
    nodes: Iterable[Mapping[str, Any]]
    agents: Iterable[Mapping[str, Any]]
    endpoints: Iterable[Mapping[str, Any]]


def situations(snapshot: Snapshot, taint_key: str, gate_condition: str) -> list[tuple[Mapping[str, Any], Situation]]:
    """Each pod with what the rules look at. A node's agent counts as ready since its Ready condition last turned
    True: a one-shot look has not watched it happen, as the controller has."""
    endpoints = {namespaced_name(e): e for e in snapshot.endpoints}
    nodes = {str((n.get("metadata") or {}).get("name") or ""): n for n in snapshot.nodes}
    agents: dict[str, list[Mapping[str, Any]]] = {}
    for agent in snapshot.agents:
        agents.setdefault(str((agent.get("spec") or {}).get("nodeName") or ""), []).append(agent)
    facts: dict[str, NodeFacts] = {}
    result = []
    for pod in snapshot.pods:
        f = pod_facts(pod, gate_condition)
        if f.node_name not in facts:
            on_node = agents.get(f.node_name, [])
            state = agent_state(nodes.get(f.node_name), on_node, taint_key)
            facts[f.node_name] = NodeFacts(state, agent_ready_since(on_node) if state is AgentState.READY else None)
        result.append((pod, Situation(pod=f, endpoint_state=endpoint_state(endpoints.get(namespaced_name(pod)), f.uid),
                                      node=facts[f.node_name])))
    return result


def agent_ready_since(agent_pods: Iterable[Mapping[str, Any]]) -> float | None:
    """Since when the node's agent has been ready: the earliest Ready agent pod's Ready lastTransitionTime (its
    start time when the condition has none)."""
    times = []
    for agent in agent_pods:
        if not is_pod_ready(agent):
            continue
        status = agent.get("status") or {}
        ready = next(c for c in status.get("conditions") or [] if isinstance(c, Mapping) and c.get("type") == "Ready")
        times.append(parse_time(ready.get("lastTransitionTime")) or parse_time(status.get("startTime")))
    known = [t for t in times if t is not None]
    return min(known) if known else None


def snapshot_unmanaged(situation: Situation) -> bool:
    """`audit`'s count: unmanaged right now, however recently the pod or its node's agent started (no grace
    period, so no clock: an infinitely late reading is past every grace period). Its owner does not count: the
    owner only tells an eviction (RECYCLE) from a report (REPORT), and both are unmanaged."""
    step = plan_unmanaged(replace(situation, eviction_retry_at=None), OwnerFacts(), Timings(grace_period=0),
                          math.inf, include_bare=True)
    return is_unmanaged(step)


# --- scope ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """One list or watch: a namespace (None: all) and its selectors."""

    namespace: str | None
    field_selector: str
    label_selector: str | None


def selections(scope: PodScope, field_selector: str = "", *, labels: bool = True) -> list[Selection]:
    """The lists that read exactly the scope: one per namespace when namespaces are named, else one across the
    cluster that leaves the excluded ones out by field selector (metadata.namespace!=, which every resource takes).
    `labels=False` for CiliumEndpoints, which carry their pod's labels but are matched to pods by name."""
    label_selector = (scope.selector or None) if labels else None
    if scope.namespaces:
        return [Selection(ns, field_selector, label_selector) for ns in scope.namespaces if scope.includes(ns)]
    fields = [field_selector] if field_selector else []
    fields += [f"metadata.namespace!={ns}" for ns in scope.exclude_namespaces]
    return [Selection(None, ",".join(fields), label_selector)]


# --- the fields the decisions read, for a cache of every pod ---------------------------------------------------


def namespaced_name(obj: Mapping[str, Any]) -> tuple[str, str]:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")
