"""The gate controller's rules: what a pod's situation calls for now (skip, wait, set the condition, release,
recycle). Pure: plain data and a clock reading in, a Plan out; no I/O, no kubernetes client, no threads.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from webhook.cilium import AgentState
from webhook.config import DEFAULT_GRACE_PERIOD, DEFAULT_RELEASE_AFTER

ENDPOINT_READY = "ready"  # CiliumEndpoint status.state once the endpoint is fully regenerated
FINISHED_PHASES = ("Succeeded", "Failed")
GONE_STATUSES = (404, 409, 422)  # the pod is gone or was replaced: drop it, do not retry
# Eviction answers, for the controller and `recycle` alike. 429: a PodDisruptionBudget (or the API server's own
# limit) refused; retry later, never delete. 404 or 409: the pod is gone, or a new one has its name (the uid
# precondition failed); drop it.
EVICTION_REFUSED = 429
EVICTION_GONE = (404, 409)
EVICTION_RETRY_FLOOR = 30.0  # a refused eviction is retried no sooner than this


class Action(StrEnum):
    SKIP = "skip"  # nothing to do now or later, unless the pod changes
    WAIT = "wait"  # look again when something changes, or at recheck_at
    SET_CONDITION = "set-condition"  # Cilium manages the pod: gate True, Normal event
    RELEASE = "release"  # a fail-safe sets the gate True without a ready endpoint: Warning event
    RECYCLE = "recycle"  # unmanaged and never will be: evict
    REPORT = "report"  # unmanaged, but evicting it would not bring it back under Cilium: report it only


class ReleaseReason(StrEnum):
    MAX_WAIT = "max-wait"
    NO_CILIUM_ENDPOINTS = "no-cilium-endpoints"
    HOST_NETWORK = "host-network"
    RELEASE_ALL = "release-all"


@dataclass(frozen=True, slots=True)  # slots: the pod caches keep one per pod
class PodFacts:
    namespace: str
    name: str
    uid: str
    node_name: str = ""
    phase: str = "Pending"
    pod_ip: str = ""
    host_network: bool = False
    started_at: float | None = None  # status.startTime, else metadata.creationTimestamp
    terminating: bool = False
    has_gate: bool = True  # spec.readinessGates names the gate condition
    gate_true: bool = False
    containers_started_at: float | None = None  # the latest status.containerStatuses[].state.running.startedAt

    @property
    def is_waiting(self) -> bool:
        """Gated, its gate not True yet, and neither finished nor on its way out."""
        return self.phase not in FINISHED_PHASES and not self.terminating and self.has_gate and not self.gate_true


@dataclass(frozen=True)
class NodeFacts:
    agent: AgentState = AgentState.UNKNOWN
    ready_since: float | None = None  # when this controller saw the agent become ready
    # The node rebooted (its boot ID changed): the last status its previous boot reported, or when the controller
    # saw the new boot ID. Pods that existed before must have started their containers again since.
    booted_at: float | None = None


@dataclass(frozen=True)
class Situation:
    """Everything the rules look at for one pod."""

    pod: PodFacts
    endpoint_state: str | None = None  # None: the pod has no CiliumEndpoint
    endpoints_available: bool = True  # False: the API does not serve ciliumendpoints at all
    node: NodeFacts = field(default_factory=NodeFacts)
    eviction_retry_at: float | None = None  # a PodDisruptionBudget refused; not before this


@dataclass(frozen=True)
class Timings:
    grace_period: float = DEFAULT_GRACE_PERIOD
    release_after: float = DEFAULT_RELEASE_AFTER  # 0 turns the maximum wait off


@dataclass(frozen=True)
class Plan:
    action: Action
    reason: str  # why, for logs; for RELEASE one of ReleaseReason
    recheck_at: float | None = None  # WAIT: when the passing of time alone may change the answer


def plan(situation: Situation, timings: Timings, now: float) -> Plan:
    pod = situation.pod
    if pod.phase in FINISHED_PHASES:
        return Plan(Action.SKIP, "finished")
    if pod.terminating:  # an evicted pod keeps its IP, and no endpoint, through its termination grace period
        return Plan(Action.SKIP, "terminating")
    if not pod.has_gate:
        return Plan(Action.SKIP, "no-gate")
    if pod.host_network:  # Cilium never manages host-network pods: waiting or recycling would never end
        return _done_or(pod, Plan(Action.RELEASE, ReleaseReason.HOST_NETWORK))
    max_wait = _max_wait_deadline(pod, timings)

    if situation.endpoint_state is not None:  # Cilium manages the pod; never recycle it
        if situation.endpoint_state == ENDPOINT_READY:
            return _done_or(pod, Plan(Action.SET_CONDITION, "endpoint-ready"))
        return _done_or(pod, _wait_unless_past(max_wait, now, "endpoint-not-ready"))

    if not situation.endpoints_available:  # fail-safe: this cluster's Cilium never reports managing a pod
        grace_end = (pod.started_at or now) + timings.grace_period
        if now >= grace_end:
            return _done_or(pod, Plan(Action.RELEASE, ReleaseReason.NO_CILIUM_ENDPOINTS))
        return _done_or(pod, Plan(Action.WAIT, "no-cilium-endpoints", grace_end))

    if not pod.node_name:
        return Plan(Action.WAIT, "unscheduled")
    if not pod.gate_true and max_wait is not None and now >= max_wait:
        return Plan(Action.RELEASE, ReleaseReason.MAX_WAIT)
    # From here the pod has no endpoint. It is a recycling candidate even with its gate True (say, released
    # by the maximum wait): an unmanaged pod is what this controller exists to fix.
    return unmanaged_step(situation, timings, now, release_at=None if pod.gate_true else max_wait)


def unmanaged_step(situation: Situation, timings: Timings, now: float, release_at: float | None = None) -> Plan:
    """For a scheduled pod without a CiliumEndpoint of its own, where the API serves CiliumEndpoints: wait, or
    recycle it as unmanaged. The one rule for gated pods, for every other pod (`webhook.unmanaged`) and for
    `recycle`; `release_at` is a gated pod's maximum wait, which also ends a wait."""
    pod, node = situation.pod, situation.node
    if pod.phase != "Running" or not pod.pod_ip:
        return Plan(Action.WAIT, "not-running", release_at)
    if node.booted_at is not None and not restarted_since(pod, node.booted_at):
        return Plan(Action.WAIT, "not-restarted-since-boot", release_at)  # its status predates the reboot
    if node.agent is not AgentState.READY:
        return Plan(Action.WAIT, str(node.agent), release_at)
    grace_end = max(pod.started_at or now, node.ready_since or now) + timings.grace_period
    if now < grace_end:
        return Plan(Action.WAIT, "grace-period", _earliest(grace_end, release_at))
    retry_at = situation.eviction_retry_at
    if retry_at is not None and now < retry_at:
        return Plan(Action.WAIT, "eviction-refused", _earliest(retry_at, release_at))
    return Plan(Action.RECYCLE, "unmanaged")


def restarted_since(pod: PodFacts, booted_at: float) -> bool:
    """The pod was created after the boot, or its containers started again since: its network namespace is the
    new boot's."""
    started = [t for t in (pod.started_at, pod.containers_started_at) if t is not None]
    return bool(started) and max(started) > booted_at


def eviction_retry_at(now: float, retry_after: float | None, floor: float = EVICTION_RETRY_FLOOR) -> float:
    """When to try a refused eviction again: the answer's Retry-After, but never sooner than `floor`."""
    return now + max(floor, retry_after or 0.0)


def _done_or(pod: PodFacts, next_step: Plan) -> Plan:
    return Plan(Action.SKIP, "gate-true") if pod.gate_true else next_step


def _max_wait_deadline(pod: PodFacts, timings: Timings) -> float | None:
    if timings.release_after <= 0 or pod.started_at is None:
        return None
    return pod.started_at + timings.release_after


def _wait_unless_past(deadline: float | None, now: float, reason: str) -> Plan:
    if deadline is not None and now >= deadline:
        return Plan(Action.RELEASE, ReleaseReason.MAX_WAIT)
    return Plan(Action.WAIT, reason, deadline)


def _earliest(*times: float | None) -> float | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


# --- the condition the plan sets ---


def condition_text(step: Plan, timings: Timings) -> tuple[str, str]:
    """The pod condition's reason and message for SET_CONDITION or RELEASE; the message is also the event's
    note."""
    if step.action is Action.SET_CONDITION:
        return "CiliumManaged", "Cilium manages this pod: its CiliumEndpoint is ready."
    why = {
        ReleaseReason.MAX_WAIT: f"no ready CiliumEndpoint {timings.release_after:g}s after the pod started "
                                f"(--release-after); Cilium may not manage this pod's network",
        ReleaseReason.NO_CILIUM_ENDPOINTS: "the API does not serve ciliumendpoints, so Cilium cannot report "
                                           "managing this pod; released after the grace period",
        ReleaseReason.HOST_NETWORK: "a host-network pod is never managed by Cilium",
        ReleaseReason.RELEASE_ALL: "released by `cilium-startup-guard controller --release-all`",
    }.get(ReleaseReason(step.reason), step.reason)
    return "GateReleased", f"Gate released: {why}."


def condition_patch(uid: str, condition_type: str, reason: str, message: str, now: float) -> dict[str, Any]:
    """Strategic merge patch for pods/status. Conditions merge by type, so the kubelet's stay; metadata.uid
    makes the API server refuse (422) a recreated pod of the same name."""
    return {
        "metadata": {"uid": uid},
        "status": {"conditions": [{
            "type": condition_type, "status": "True", "reason": reason, "message": message,
            "lastTransitionTime": _rfc3339(now), "lastProbeTime": None,
        }]},
    }


def _rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


# --- facts from API objects ---


def pod_facts(pod: Mapping[str, Any], condition_type: str) -> PodFacts:
    metadata, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    return PodFacts(
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        uid=str(metadata.get("uid") or ""),
        node_name=str(spec.get("nodeName") or ""),
        phase=str(status.get("phase") or "Pending"),
        pod_ip=str(status.get("podIP") or ""),
        host_network=spec.get("hostNetwork") is True,
        started_at=parse_time(status.get("startTime")) or parse_time(metadata.get("creationTimestamp")),
        terminating=metadata.get("deletionTimestamp") is not None,
        has_gate=has_gate(pod, condition_type),
        gate_true=is_gate_true(pod, condition_type),
        containers_started_at=containers_started_at(status),
    )


def containers_started_at(status: Mapping[str, Any]) -> float | None:
    """When the most recently started container of the pod started; None when none runs."""
    times = [parse_time(((c.get("state") or {}).get("running") or {}).get("startedAt"))
             for c in status.get("containerStatuses") or [] if isinstance(c, Mapping)]
    known = [t for t in times if t is not None]
    return max(known) if known else None


def reboot_time(before: str, after: str, heartbeat: float | None, now: float) -> float | None:
    """When a node whose boot ID changed from `before` to `after` rebooted: the last heartbeat its previous boot
    reported (the Ready condition's lastHeartbeatTime, in the node's own clock like its containers' start times),
    else `now`. None when it did not reboot. A Node object survives a reboot, so the Cilium taint does not come
    back."""
    if not before or not after or before == after:
        return None
    return heartbeat if heartbeat is not None and heartbeat <= now else now


def has_gate(pod: Mapping[str, Any], condition_type: str) -> bool:
    """spec.readinessGates names the gate condition."""
    gates = (pod.get("spec") or {}).get("readinessGates") or []
    return any(isinstance(g, Mapping) and g.get("conditionType") == condition_type for g in gates)


def is_gate_true(pod: Mapping[str, Any], condition_type: str) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(isinstance(c, Mapping) and c.get("type") == condition_type and c.get("status") == "True"
               for c in conditions)


def micro_time(epoch: float) -> str:
    """metav1.MicroTime: always six fractional digits and a Z, which is all the API server parses."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
