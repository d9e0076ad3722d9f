"""What the gate controller writes once a plan is made: the gate condition, evictions (each with a rate-limit
token the loop has taken), reports of unmanaged pods, Events (queued for the background sender). Through
webhook.kube only; decides nothing a plan has not (rules.py, unmanaged.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from webhook import kube
from webhook.controller.bookkeeping import Bookkeeping
from webhook.controller.events import event_body
from webhook.controller.eventsender import EventSender
from webhook.controller.metrics import ControllerMetrics
from webhook.controller.options import ControllerOptions
from webhook.controller.rules import (
    EVICTION_GONE,
    EVICTION_REFUSED,
    GONE_STATUSES,
    Action,
    Plan,
    PodFacts,
    condition_patch,
    condition_text,
    eviction_retry_at,
)
from webhook.controller.summaries import PodSummary
from webhook.controller.workqueue import Key
from webhook.kube import ApiError, Kube
from webhook.unmanaged import WHY_NOT

log = logging.getLogger(__name__)

OBSERVED = "observe"  # the reason a pod that could be evicted is reported instead: --unmanaged-action observe


class Actor:
    """Carries out SET_CONDITION, RELEASE, RECYCLE and REPORT for the loop's workers, from any of them at once.
    Only a replica that may write (the Lease holder within its renew deadline) writes, and it asks before every
    write; a dry run logs and counts each would-be action once."""

    def __init__(self, client: Kube, options: ControllerOptions, metrics: ControllerMetrics, books: Bookkeeping, *,
                 requeue: Callable[[Key, float], None], may_write: Callable[[], bool],
                 clock: Callable[[], float], events: EventSender) -> None:
        self._kube = client
        self.options = options
        self.metrics = metrics
        self.books = books
        self._requeue = requeue
        self._may_write = may_write
        self._clock = clock
        self._events = events

    def evict(self, key: Key, pod: PodSummary, now: float) -> bool:
        """Evict with the rate-limit token the caller holds; True when it was spent (evicted, or counted so in a
        dry run), False when the caller should give it back."""
        f, dry_run = pod.facts, self.options.dry_run
        fields = {"namespace": key[0], "pod": key[1], "uid": f.uid, "node": f.node_name, "dry_run": dry_run}
        if self.books.was_evicted(f.uid):
            return False
        if dry_run:
            if not self.books.first_time(f.uid, Action.RECYCLE):
                return False
            self.metrics.pods_recycled.labels(dry_run="true").inc()
            log.warning("would evict an unmanaged pod (dry run)", extra=fields)
            return True
        if not self._may_write():
            return False
        try:
            kube.evict_pod(self._kube, key[0], key[1], f.uid)
        except ApiError as err:
            if err.status == EVICTION_REFUSED:  # a budget refused: no token spent
                retry_at = eviction_retry_at(now, err.retry_after, self.options.eviction_retry_floor)
                self.books.eviction_refused(f.uid, retry_at)
                self.metrics.evictions_refused.inc()
                log.warning("eviction refused (a PodDisruptionBudget?); will retry, never delete", extra={
                    **fields, "error": err.message, "retry_in_seconds": round(retry_at - now, 1)})
                self._requeue(key, retry_at - now)
                return False
            if err.status in EVICTION_GONE:
                log.info("pod gone or replaced before its eviction", extra={**fields, "status": err.status})
                self.books.mark_gone(f.uid)
                return False
            raise
        self.books.mark_evicted(f.uid)
        self.metrics.pods_recycled.labels(dry_run="false").inc()
        log.warning("evicted a pod that Cilium does not manage", extra=fields)
        self.event(f, "UnmanagedPodRecycled", "Warning", "Evict",
                   f"{self._unmanaged(f)} Evicted it so that its controller recreates it under Cilium.")
        return True

    def report(self, pod: PodSummary, reason: str) -> None:
        """Once per pod: an unmanaged pod that is not evicted (observe mode, or evicting it would not help)."""
        f, owner = pod.facts, pod.owner.owner
        why = "--unmanaged-action is observe" if reason == OBSERVED else WHY_NOT.get(reason, reason)
        fields = {"namespace": f.namespace, "pod": f.name, "uid": f.uid, "node": f.node_name,
                  "owner": str(owner), "reason": reason, "dry_run": self.options.dry_run}
        if self.options.dry_run:
            if self.books.first_report(f.uid):
                log.warning("would report an unmanaged pod (dry run)", extra=fields)
            return
        if not self._may_write() or not self.books.first_report(f.uid):
            return
        log.warning("unmanaged pod reported, not evicted", extra=fields)
        self.event(f, "UnmanagedPodDetected", "Warning", "Report", f"{self._unmanaged(f)} Not evicted: {why}.")

    def set_gate(self, pod: PodSummary, step: Plan, now: float) -> None:
        f = pod.facts
        gate, dry_run = self.options.gate_condition, self.options.dry_run
        release = step.action is Action.RELEASE
        fields = {"namespace": f.namespace, "pod": f.name, "uid": f.uid, "node": f.node_name,
                  "reason": step.reason, "dry_run": dry_run}
        if dry_run:
            if self.books.first_time(f.uid, step.action):
                self._count_gate(step, f, now, dry_run=True)
                log.info("would set the gate condition (dry run)", extra=fields)
            return
        if not self._may_write():
            return
        reason, message = condition_text(step, self.options.timings)
        try:
            kube.patch_pod_status(self._kube, f.namespace, f.name, condition_patch(f.uid, gate, reason, message, now))
        except ApiError as err:
            if err.status in GONE_STATUSES:
                log.info("pod gone or replaced; dropped", extra={**fields, "status": err.status})
                self.books.mark_gone(f.uid)
                return
            raise
        self.books.mark_gate_set(f.uid)
        self._count_gate(step, f, now, dry_run=False)
        if release:
            log.warning("released a gate without a ready CiliumEndpoint", extra=fields)
            self.event(f, "GateReleased", "Warning", "ReleaseGate", message)
        else:
            log.info("gate condition set", extra={**fields, "wait_seconds": _since(f.started_at, now)})
            self.event(f, "CiliumManaged", "Normal", "SetCondition", message)

    def event(self, f: PodFacts, reason: str, event_type: str, action: str, note: str) -> None:
        """Queued for the background sender, deduplicated per pod and reason: the next condition never waits
        for this Event."""
        regarding = {"metadata": {"name": f.name, "namespace": f.namespace, "uid": f.uid}}
        body = event_body(regarding, reason, event_type, action, note, instance=self.options.identity,
                          now=self._clock())
        self._events.record((f.uid, reason), body)

    def _count_gate(self, step: Plan, f: PodFacts, now: float, *, dry_run: bool) -> None:
        label = "true" if dry_run else "false"
        if step.action is Action.RELEASE:
            self.metrics.gates_released.labels(reason=step.reason, dry_run=label).inc()
        else:
            self.metrics.conditions_set.labels(dry_run=label).inc()
        if f.started_at is not None:
            self.metrics.gate_wait.labels(dry_run=label).observe(max(0.0, now - f.started_at))

    def _unmanaged(self, f: PodFacts) -> str:
        return (f"No CiliumEndpoint {self.options.timings.grace_period:g}s after the Cilium agent on node "
                f"{f.node_name} was ready: Cilium does not manage this pod's network.")


def _since(start: float | None, now: float) -> float | None:
    return None if start is None else round(now - start, 3)
