"""What the gate controller writes once a plan is made: the gate condition, evictions at the recycling rate, reports
of unmanaged pods, Events. Through webhook.kube only; decides nothing a plan has not (rules.py, unmanaged.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from webhook import kube
from webhook.controller.bookkeeping import Bookkeeping
from webhook.controller.events import event_body
from webhook.controller.metrics import ControllerMetrics
from webhook.controller.options import ControllerOptions
from webhook.controller.ratelimit import recycle_bucket
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
    node_of,
    pod_facts,
    uid_of,
)
from webhook.controller.workqueue import Key
from webhook.kube import ApiError, Kube
from webhook.unmanaged import WHY_NOT, owner_facts

log = logging.getLogger(__name__)

OBSERVED = "observe"  # the reason a pod that could be evicted is reported instead: --unmanaged-action observe


class Actor:
    """Carries out SET_CONDITION, RELEASE, RECYCLE and REPORT for the loop's worker. Only a replica that may write
    (the Lease holder within its renew deadline) writes; a dry run logs and counts each would-be action once."""

    def __init__(self, client: Kube, options: ControllerOptions, metrics: ControllerMetrics, books: Bookkeeping, *,
                 requeue: Callable[[Key, float], None], may_write: Callable[[], bool],
                 clock: Callable[[], float]) -> None:
        self._kube = client
        self.options = options
        self.metrics = metrics
        self.books = books
        self._requeue = requeue
        self._may_write = may_write
        self._clock = clock
        # One bucket for every eviction, gated pods and the rest alike; the worker's alone: not thread-safe.
        self._bucket = recycle_bucket(options.recycle_rate, clock())

    def evict(self, key: Key, pod: Mapping[str, Any], now: float) -> None:
        uid, dry_run = uid_of(pod), self.options.dry_run
        fields = {"namespace": key[0], "pod": key[1], "uid": uid, "node": node_of(pod), "dry_run": dry_run}
        if self.books.was_evicted(uid):
            return
        wait = self._bucket.wait_time(now)
        if wait > 0:
            log.info("recycling rate limit reached; waiting", extra={**fields, "wait_seconds": round(wait, 1)})
            if wait != float("inf"):
                self._requeue(key, wait)
            return
        if dry_run:
            if self.books.first_time(uid, Action.RECYCLE):
                self._bucket.take(now)
                self.metrics.pods_recycled.labels(dry_run="true").inc()
                log.warning("would evict an unmanaged pod (dry run)", extra=fields)
            return
        if not self._may_write():
            return
        try:
            kube.evict_pod(self._kube, key[0], key[1], uid)
        except ApiError as err:
            if err.status == EVICTION_REFUSED:
                retry_at = eviction_retry_at(now, err.retry_after, self.options.eviction_retry_floor)
                self.books.eviction_refused(uid, retry_at)
                self.metrics.evictions_refused.inc()
                log.warning("eviction refused (a PodDisruptionBudget?); will retry, never delete", extra={
                    **fields, "error": err.message, "retry_in_seconds": round(retry_at - now, 1)})
                self._requeue(key, retry_at - now)
                return
            if err.status in EVICTION_GONE:
                log.info("pod gone or replaced before its eviction", extra={**fields, "status": err.status})
                self.books.mark_gone(uid)
                return
            raise
        self._bucket.take(now)
        self.books.mark_evicted(uid)
        self.metrics.pods_recycled.labels(dry_run="false").inc()
        log.warning("evicted a pod that Cilium does not manage", extra=fields)
        self.event(pod, "UnmanagedPodRecycled", "Warning", "Evict",
                   f"{self._unmanaged(pod)} Evicted it so that its controller recreates it under Cilium.")

    def report(self, pod: Mapping[str, Any], reason: str) -> None:
        """Once per pod: an unmanaged pod that is not evicted (observe mode, or evicting it would not help)."""
        f = pod_facts(pod, self.options.gate_condition)
        owner = owner_facts(pod).owner
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
        self.event(pod, "UnmanagedPodDetected", "Warning", "Report", f"{self._unmanaged(pod)} Not evicted: {why}.")

    def set_gate(self, pod: Mapping[str, Any], step: Plan, now: float) -> None:
        f = pod_facts(pod, self.options.gate_condition)
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
        self._count_gate(step, f, now, dry_run=False)
        if release:
            log.warning("released a gate without a ready CiliumEndpoint", extra=fields)
            self.event(pod, "GateReleased", "Warning", "ReleaseGate", message)
        else:
            log.info("gate condition set", extra={**fields, "wait_seconds": _since(f.started_at, now)})
            self.event(pod, "CiliumManaged", "Normal", "SetCondition", message)

    def event(self, pod: Mapping[str, Any], reason: str, event_type: str, action: str, note: str) -> None:
        """Best effort: an event that cannot be written is logged, never retried."""
        body = event_body(pod, reason, event_type, action, note, instance=self.options.identity, now=self._clock())
        try:
            kube.create_event(self._kube, body["metadata"]["namespace"], body)
        except ApiError as err:
            log.warning("could not record an event", extra={
                "namespace": body["metadata"]["namespace"], "pod": body["regarding"]["name"], "event_reason": reason,
                "status": err.status, "error": err.message})

    def _count_gate(self, step: Plan, f: PodFacts, now: float, *, dry_run: bool) -> None:
        label = "true" if dry_run else "false"
        if step.action is Action.RELEASE:
            self.metrics.gates_released.labels(reason=step.reason, dry_run=label).inc()
        else:
            self.metrics.conditions_set.labels(dry_run=label).inc()
        if f.started_at is not None:
            self.metrics.gate_wait.labels(dry_run=label).observe(max(0.0, now - f.started_at))

    def _unmanaged(self, pod: Mapping[str, Any]) -> str:
        return (f"No CiliumEndpoint {self.options.timings.grace_period:g}s after the Cilium agent on node "
                f"{node_of(pod)} was ready: Cilium does not manage this pod's network.")


def _since(start: float | None, now: float) -> float | None:
    return None if start is None else round(now - start, 3)
