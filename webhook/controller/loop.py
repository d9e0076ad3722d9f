"""The gate controller's loop: informers feed a work queue; a worker plans with rules.py and acts through kube.py.
Imports no HTTP server and no admission code; remembers what it must between reconciles in bookkeeping.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from webhook import kube
from webhook.backoff import Backoff
from webhook.cilium import AgentState, agent_state, endpoint_state
from webhook.config import DEFAULT_AGENT_SELECTOR, DEFAULT_CILIUM_NAMESPACE, DEFAULT_RECYCLE_RATE
from webhook.controller.bookkeeping import Bookkeeping
from webhook.controller.events import event_body
from webhook.controller.informer import Informer
from webhook.controller.lease import LeaderElector, LeaseConfig
from webhook.controller.metrics import ControllerMetrics
from webhook.controller.ratelimit import recycle_bucket
from webhook.controller.rules import (
    GONE_STATUSES,
    Action,
    NodeFacts,
    Plan,
    PodFacts,
    Situation,
    Timings,
    condition_patch,
    condition_text,
    node_of,
    plan,
    pod_facts,
    uid_of,
)
from webhook.controller.workqueue import Key, WorkQueue
from webhook.kube import ApiError, Kube, Target
from webhook.policy import CILIUM_TAINT_KEY, DEFAULT_GATE_CONDITION, DEFAULT_GATE_LABEL

log = logging.getLogger(__name__)

EVICTION_RETRY_FLOOR = 30.0  # a refused eviction is retried no sooner than this


@dataclass(frozen=True)
class ControllerOptions:
    gate_condition: str = DEFAULT_GATE_CONDITION
    gate_label: str = DEFAULT_GATE_LABEL
    cilium_taint_key: str = CILIUM_TAINT_KEY
    timings: Timings = field(default_factory=Timings)
    recycle_rate: float = DEFAULT_RECYCLE_RATE
    cilium_namespace: str = DEFAULT_CILIUM_NAMESPACE
    agent_selector: str = DEFAULT_AGENT_SELECTOR
    dry_run: bool = False
    lease: LeaseConfig | None = None  # required unless dry_run: dry-run replicas take no part in the election
    identity: str = "cilium-startup-guard"  # reportingInstance of events; the Lease holder
    # Internal timings, not flags; tests shorten them.
    eviction_retry_floor: float = EVICTION_RETRY_FLOOR
    resync_period: float = 300.0
    relist_period: float = 900.0
    watch_timeout: int = 300  # seconds; each watch lasts this long times a random 1..2, as in client-go
    absent_recheck: float = 30.0  # how often to look for ciliumendpoints again while it is not served
    backoff_initial: float = 0.5
    backoff_max: float = 30.0

    @property
    def gate_selector(self) -> str:
        return f"{self.gate_label}=true"


class GateController:
    """Four informers (gated pods, their CiliumEndpoints, nodes, Cilium agent pods) feed one work queue; one
    worker plans and acts. Only the Lease holder writes; a dry-run replica plans, logs and counts."""

    def __init__(self, client: Kube, options: ControllerOptions, metrics: ControllerMetrics, *,
                 clock: Callable[[], float] = time.time) -> None:
        if options.lease is None and not options.dry_run:
            raise ValueError("a controller that writes needs a Lease")
        self._kube = client
        self.options = options
        self.metrics = metrics
        self._clock = clock
        o = options
        gated = Target(kube.PODS, label_selector=o.gate_selector)
        # Cilium copies the pod's labels onto its CiliumEndpoint, so the gate label selects these too.
        endpoints = Target(kube.CILIUM_ENDPOINTS, label_selector=o.gate_selector)
        self.pods = self._informer("gated-pods", gated, self._on_pod)
        self.endpoints = self._informer("cilium-endpoints", endpoints, self._on_endpoint, optional=True,
                                        lister=lambda: self._list_endpoints(endpoints))
        self.nodes = self._informer("nodes", Target(kube.NODES), self._on_node)
        self.agents = self._informer("cilium-agents", Target(
            kube.PODS, namespace=o.cilium_namespace, label_selector=o.agent_selector), self._on_agent)
        self._informers = (self.pods, self.endpoints, self.nodes, self.agents)
        self._elector = None if o.lease is None else LeaderElector(
            client, o.lease, self._started_leading, self._stopped_leading)
        self._queue = WorkQueue()
        self._bucket = recycle_bucket(o.recycle_rate, clock())  # the worker's alone: not thread-safe
        self.books = Bookkeeping()
        self._done = threading.Event()
        self._stopping = threading.Event()
        self._elector_stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._elector_thread: threading.Thread | None = None
        self._exit_code = 0

    # --- lifecycle ---

    def run(self) -> int:
        """Block until stop() or a lost lease; 0 after stop(), 1 when the lease could not be renewed."""
        self.start()
        try:
            self._done.wait()
        finally:
            self._shutdown()
        return self._exit_code

    def start(self) -> None:
        self._threads = [threading.Thread(target=i.run, args=(self._stopping,), name=i.name, daemon=True)
                         for i in self._informers]
        self._threads.append(threading.Thread(target=self._work, name="worker", daemon=True))
        if self._elector is not None:
            self._elector_thread = threading.Thread(target=self._elector.run, args=(self._elector_stop,),
                                                    name="leader-election", daemon=True)
            self._threads.append(self._elector_thread)
        for thread in self._threads:
            thread.start()
        log.info("gate controller started", extra={
            "identity": self.options.identity, "dry_run": self.options.dry_run,
            "grace_period": self.options.timings.grace_period, "release_after": self.options.timings.release_after,
            "recycle_rate": self.options.recycle_rate, "gate": self.options.gate_condition})

    def stop(self) -> None:
        """Safe from a signal handler: run() does the shutdown."""
        self._done.set()

    def is_ready(self) -> bool:
        return all(i.synced.is_set() for i in self._informers)

    def is_healthy(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads if t is not self._elector_thread)

    @property
    def leading(self) -> bool:
        return self._elector is not None and self._elector.is_leader()

    def _shutdown(self) -> None:
        self._stopping.set()
        self._queue.close()
        worker = next((t for t in self._threads if t.name == "worker"), None)
        if worker is not None:
            worker.join(timeout=15)  # let a call in flight finish before the lease goes
        if self._elector_thread is not None:
            self._elector_stop.set()
            self._elector_thread.join(timeout=15)
        for informer in self._informers:
            informer.stop()
        for thread in self._threads:
            thread.join(timeout=2)
        self.metrics.leader.set(0)
        log.info("gate controller stopped", extra={"exit_code": self._exit_code})

    def _started_leading(self) -> None:
        self.metrics.leader.set(1)
        self._enqueue_all()

    def _stopped_leading(self) -> None:
        self.metrics.leader.set(0)
        self._exit_code = 1  # to be restarted; a standby replica takes over
        self._done.set()

    # --- informer callbacks (informer threads) ---

    def _informer(self, name: str, target: Target, on_change: Callable[[Key, Any, Any], None], *,
                  optional: bool = False, lister: Callable[[], tuple[list[dict[str, Any]], str]] | None = None,
                  ) -> Informer:
        o = self.options
        return Informer(
            name,
            lister or (lambda: kube.list_all(self._kube, target)),
            lambda version, timeout: kube.watch(self._kube, target, version, timeout),
            on_change,
            optional=optional,
            on_availability=self._on_endpoints_availability if optional else None,
            relist_period=o.relist_period,
            watch_timeout=o.watch_timeout,
            absent_recheck=o.absent_recheck,
            backoff=Backoff(o.backoff_initial, o.backoff_max),
        )

    def _list_endpoints(self, target: Target) -> tuple[list[dict[str, Any]], str]:
        if not kube.has_resource(self._kube, kube.CILIUM_ENDPOINTS):
            raise ApiError(404, "API discovery does not list ciliumendpoints.cilium.io/v2")
        return kube.list_all(self._kube, target)

    def _on_pod(self, key: Key, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        waiting = new is not None and pod_facts(new, self.options.gate_condition).is_waiting
        self.metrics.pods_waiting.set(self.books.pod_changed(key, old, new, waiting=waiting))
        self._queue.add(key)

    def _on_endpoint(self, key: Key, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        self._queue.add(key)  # the pod of the same namespace and name

    def _on_node(self, key: Key, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        self._node_changed(key[1])

    def _on_agent(self, key: Key, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        self.books.agent_changed(key, old, new)
        for node in {node_of(old), node_of(new)} - {""}:
            self._node_changed(node)

    def _on_endpoints_availability(self, available: bool) -> None:
        self.metrics.endpoints_available.set(1 if available else 0)
        if available:
            log.info("the API serves ciliumendpoints; gates follow CiliumEndpoints again")
        else:
            log.error("the API does not serve ciliumendpoints.cilium.io, so Cilium cannot report managing any "
                      "pod: no pod will be recycled, and each gate is released once its pod's grace period has "
                      "passed; looking again periodically", extra={"recheck_seconds": self.options.absent_recheck})
        self._enqueue_all()

    def _node_changed(self, node: str) -> None:
        ready = self._agent_state(node) is AgentState.READY
        for key in self.books.agent_readiness(node, ready, self._clock()):
            self._queue.add(key)

    def _agent_state(self, node: str) -> AgentState:
        agents = [a for a in (self.agents.get(k) for k in self.books.agents_on(node)) if a is not None]
        return agent_state(self.nodes.get(("", node)), agents, self.options.cilium_taint_key)

    def _enqueue_all(self) -> None:
        for key in self.pods.cached_keys():
            self._queue.add(key)

    # --- the worker ---

    def _work(self) -> None:
        next_resync = time.monotonic() + self.options.resync_period
        while not self._stopping.is_set():
            key = self._queue.get(timeout=0.5)
            if time.monotonic() >= next_resync:  # a safety net: timers and watches normally cover everything
                next_resync = time.monotonic() + self.options.resync_period
                self._enqueue_all()
            if key is None:
                continue
            try:
                self._reconcile(key)
            except ApiError as err:
                log.warning("API call failed; will retry", extra={
                    "namespace": key[0], "pod": key[1], "status": err.status, "error": err.message})
                self._retry_later(key)
            except Exception:
                log.exception("reconcile failed; will retry", extra={"namespace": key[0], "pod": key[1]})
                self._retry_later(key)

    def _reconcile(self, key: Key) -> None:
        if not (self.options.dry_run or self.leading):
            return  # the leader does the work; becoming leader enqueues every pod
        if not self.is_ready():
            self._queue.add_after(key, 0.2)
            return
        pod = self.pods.get(key)
        if pod is not None and self.books.is_gone(uid_of(pod)):
            pod = None  # dropped, not retried: the watch brings the deletion or the new pod
        if pod is not None:
            now = self._clock()
            self._carry_out(key, pod, self._plan(self._situation(pod), now), now, checked=False)
        self.books.succeeded(key)

    def _plan(self, situation: Situation, now: float) -> Plan:
        step = plan(situation, self.options.timings, now)
        self.books.planned(step)
        return step

    def _situation(self, pod: Mapping[str, Any], endpoint: Mapping[str, Any] | None = None,
                   cached_endpoint: bool = True) -> Situation:
        f = pod_facts(pod, self.options.gate_condition)
        if cached_endpoint:
            endpoint = self.endpoints.get((f.namespace, f.name))
        return Situation(pod=f, endpoint_state=endpoint_state(endpoint, f.uid),
                         endpoints_available=self.endpoints.available, node=self._node_facts(f.node_name),
                         eviction_retry_at=self.books.eviction_retry_at(f.uid))

    def _node_facts(self, node: str) -> NodeFacts:
        if not node:
            return NodeFacts()
        state = self._agent_state(node)
        if state is not AgentState.READY:
            return NodeFacts(state)
        return NodeFacts(state, self.books.ready_since(node, self._clock()))

    def _carry_out(self, key: Key, pod: Mapping[str, Any], step: Plan, now: float, *, checked: bool) -> None:
        if step.action is Action.WAIT:
            if step.recheck_at is not None:
                self._queue.add_after(key, step.recheck_at - now + 0.01)
        elif step.action in (Action.SET_CONDITION, Action.RELEASE):
            self._set_gate(pod, step, now)
        elif step.action is Action.RECYCLE:
            if checked:
                self._evict(key, pod, now)
            else:
                self._check_and_recycle(key, pod)

    def _check_and_recycle(self, key: Key, pod: Mapping[str, Any]) -> None:
        """Re-read the pod and its endpoint just before evicting, and plan again on what is fresh."""
        uid = uid_of(pod)
        fresh = kube.get_pod(self._kube, *key)
        if fresh is None or uid_of(fresh) != uid:
            log.info("pod gone before recycling", extra={"namespace": key[0], "pod": key[1], "uid": uid})
            self.books.mark_gone(uid)
            return
        endpoint = kube.get_cilium_endpoint(self._kube, *key) if self.endpoints.available else None
        now = self._clock()
        step = self._plan(self._situation(fresh, endpoint, cached_endpoint=False), now)
        self._carry_out(key, fresh, step, now, checked=True)

    def _evict(self, key: Key, pod: Mapping[str, Any], now: float) -> None:
        uid, dry_run = uid_of(pod), self.options.dry_run
        fields = {"namespace": key[0], "pod": key[1], "uid": uid, "node": node_of(pod), "dry_run": dry_run}
        if self.books.was_evicted(uid):
            return
        wait = self._bucket.wait_time(now)
        if wait > 0:
            log.info("recycling rate limit reached; waiting", extra={**fields, "wait_seconds": round(wait, 1)})
            if wait != float("inf"):
                self._queue.add_after(key, wait)
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
            if err.status == 429:
                retry_at = now + max(self.options.eviction_retry_floor, err.retry_after or 0.0)
                self.books.eviction_refused(uid, retry_at)
                self.metrics.evictions_refused.inc()
                log.warning("eviction refused (a PodDisruptionBudget?); will retry, never delete", extra={
                    **fields, "error": err.message, "retry_in_seconds": round(retry_at - now, 1)})
                self._queue.add_after(key, retry_at - now)
                return
            if err.status in (404, 409):
                log.info("pod gone or replaced before its eviction", extra={**fields, "status": err.status})
                self.books.mark_gone(uid)
                return
            raise
        self._bucket.take(now)
        self.books.mark_evicted(uid)
        self.metrics.pods_recycled.labels(dry_run="false").inc()
        grace = self.options.timings.grace_period
        log.warning("evicted a pod that Cilium does not manage", extra=fields)
        self._event(pod, "UnmanagedPodRecycled", "Warning", "Evict",
                    f"No CiliumEndpoint {grace:g}s after the Cilium agent on node {node_of(pod)} was ready: Cilium "
                    f"does not manage this pod's network. Evicted it so that its controller recreates it under "
                    f"Cilium.")

    def _set_gate(self, pod: Mapping[str, Any], step: Plan, now: float) -> None:
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
            self._event(pod, "GateReleased", "Warning", "ReleaseGate", message)
        else:
            log.info("gate condition set", extra={**fields, "wait_seconds": _since(f.started_at, now)})
            self._event(pod, "CiliumManaged", "Normal", "SetCondition", message)

    def _count_gate(self, step: Plan, f: PodFacts, now: float, *, dry_run: bool) -> None:
        label = "true" if dry_run else "false"
        if step.action is Action.RELEASE:
            self.metrics.gates_released.labels(reason=step.reason, dry_run=label).inc()
        else:
            self.metrics.conditions_set.labels(dry_run=label).inc()
        if f.started_at is not None:
            self.metrics.gate_wait.labels(dry_run=label).observe(max(0.0, now - f.started_at))

    def _event(self, pod: Mapping[str, Any], reason: str, event_type: str, action: str, note: str) -> None:
        """Best effort: an event that cannot be written is logged, never retried."""
        body = event_body(pod, reason, event_type, action, note, instance=self.options.identity, now=self._clock())
        try:
            kube.create_event(self._kube, body["metadata"]["namespace"], body)
        except ApiError as err:
            log.warning("could not record an event", extra={
                "namespace": body["metadata"]["namespace"], "pod": body["regarding"]["name"], "event_reason": reason,
                "status": err.status, "error": err.message})

    def _may_write(self) -> bool:
        return not self.options.dry_run and self._elector is not None and self._elector.may_write()

    def _retry_later(self, key: Key) -> None:
        failures = self.books.failed(key)
        self._queue.add_after(key, min(self.options.backoff_max, self.options.backoff_initial * 2 ** (failures - 1)))


def _since(start: float | None, now: float) -> float | None:
    return None if start is None else round(now - start, 3)
