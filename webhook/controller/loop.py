"""The gate controller's loop: informers feed a work queue; a worker plans with rules.py and unmanaged.py and has
acting.py carry the plan out. Imports no HTTP server and no admission code; remembers what it must between
reconciles in bookkeeping.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from webhook import kube
from webhook.backoff import Backoff
from webhook.cilium import CILIUM_CONFIG, AgentState, agent_state, endpoint_state, operator_watcher
from webhook.controller.acting import OBSERVED, Actor
from webhook.controller.bookkeeping import Bookkeeping
from webhook.controller.informer import Informer
from webhook.controller.lease import LeaderElector
from webhook.controller.metrics import ControllerMetrics
from webhook.controller.options import ControllerOptions
from webhook.controller.rules import (
    Action,
    NodeFacts,
    Plan,
    Situation,
    boot_id,
    node_of,
    plan,
    pod_facts,
    reboot_boundary,
    uid_of,
)
from webhook.controller.workqueue import Key, WorkQueue
from webhook.kube import ApiError, Kube, Target
from webhook.unmanaged import (
    CANDIDATE_PODS,
    OwnerFacts,
    is_unmanaged,
    owner_facts,
    owner_verdict,
    plan_unmanaged,
    selections,
    trim_pod,
)

__all__ = ["ControllerOptions", "GateController"]

log = logging.getLogger(__name__)


class GateController:
    """Four informers (gated pods, CiliumEndpoints, nodes, Cilium agent pods), and with scope `all` one per list
    of the scope's pods, feed one work queue; one worker plans and acts. Only the Lease holder writes; a dry-run
    replica plans, logs and counts."""

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
        # Cilium copies the pod's labels onto its CiliumEndpoint, so the gate label selects these too; scope `all`
        # needs every pod's, the gated ones' included.
        endpoints = Target(kube.CILIUM_ENDPOINTS, label_selector=None if o.all_pods else o.gate_selector)
        self.pods = self._informer("gated-pods", gated, self._on_pod)
        self.endpoints = self._informer("cilium-endpoints", endpoints, self._on_endpoint, optional=True,
                                        lister=lambda: self._list_endpoints(endpoints))
        self.nodes = self._informer("nodes", Target(kube.NODES), self._on_node)
        self.agents = self._informer("cilium-agents", Target(
            kube.PODS, namespace=o.cilium_namespace, label_selector=o.agent_selector), self._on_agent)
        # Scope `all`: every Running pod on the pod network in the scope, cached with only what the decisions read.
        self.scoped = [self._informer(
            f"scoped-pods-{s.namespace or 'all'}", Target(kube.PODS, s.namespace, s.label_selector,
                                                          s.field_selector or None),
            self._on_scoped_pod, transform=trim_pod) for s in selections(o.unmanaged.pods, CANDIDATE_PODS)
        ] if o.all_pods else []
        self._informers = (self.pods, self.endpoints, self.nodes, self.agents, *self.scoped)
        self._elector = None if o.lease is None else LeaderElector(
            client, o.lease, self._started_leading, self._stopped_leading)
        self._queue = WorkQueue()
        self.books = Bookkeeping()
        self._act = Actor(client, o, metrics, self.books, requeue=self._queue.add_after, may_write=self._may_write,
                          clock=clock)
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
        if self.options.all_pods:
            self._threads.append(threading.Thread(target=self._check_operator_watcher, name="operator-check",
                                                  daemon=True))
        for thread in self._threads:
            thread.start()
        o = self.options
        log.info("gate controller started", extra={
            "identity": o.identity, "dry_run": o.dry_run, "grace_period": o.timings.grace_period,
            "release_after": o.timings.release_after, "recycle_rate": o.recycle_rate, "gate": o.gate_condition,
            "unmanaged_scope": str(o.unmanaged.scope), "unmanaged_action": str(o.unmanaged.effective_action),
            "namespaces": list(o.unmanaged.pods.namespaces), "exclude_namespaces":
                list(o.unmanaged.pods.exclude_namespaces), "selector": o.unmanaged.pods.selector})

    def stop(self) -> None:
        """Safe from a signal handler: run() does the shutdown."""
        self._done.set()

    def is_ready(self) -> bool:
        return all(i.synced.is_set() for i in self._informers)

    def is_healthy(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads
                                           if t is not self._elector_thread and t.name != "operator-check")

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
                  transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Informer:
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
            transform=transform,
        )

    def _list_endpoints(self, target: Target) -> tuple[list[dict[str, Any]], str]:
        if not kube.has_resource(self._kube, kube.CILIUM_ENDPOINTS):
            raise ApiError(404, "API discovery does not list ciliumendpoints.cilium.io/v2")
        return kube.list_all(self._kube, target)

    def _on_pod(self, key: Key, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        waiting = new is not None and pod_facts(new, self.options.gate_condition).is_waiting
        self.metrics.pods_waiting.set(self.books.pod_changed(key, old, new, waiting=waiting))
        self._queue.add(key)

    def _on_scoped_pod(self, key: Key, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        self.books.scoped_pod_changed(key, old, new)
        self._queue.add(key)

    def _on_endpoint(self, key: Key, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        self._queue.add(key)  # the pod of the same namespace and name

    def _on_node(self, key: Key, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        node, now = key[1], self._clock()
        booted_at = reboot_boundary(old, new, now)
        if booted_at is not None:  # the Node object survived a reboot, so no taint held its pods back
            ready = self._agent_state(node) is AgentState.READY
            keys = self.books.node_rebooted(node, booted_at, ready, now)
            log.info("node rebooted; its pods are checked again as if they had just started", extra={
                "node": node, "boot_id": boot_id(new), "pods": len(keys)})
            for pod_key in keys:
                self._queue.add(pod_key)
        self._node_changed(node)

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
        for informer in (self.pods, *self.scoped):
            for key in informer.cached_keys():
                self._queue.add(key)

    def _check_operator_watcher(self) -> None:
        """One line at start-up: does Cilium's operator restart unmanaged pods too? Two recyclers double the
        disruption. Read from the cilium-config ConfigMap the operator takes its settings from."""
        o = self.options
        where = {"namespace": o.cilium_namespace, "configmap": CILIUM_CONFIG}
        try:
            config = kube.get_config_map(self._kube, o.cilium_namespace, CILIUM_CONFIG)
        except ApiError as err:
            log.warning("cannot tell whether Cilium's operator restarts unmanaged pods too", extra={
                **where, "status": err.status, "error": err.message})
            return
        if config is None:
            log.info("no cilium-config ConfigMap: cannot tell whether Cilium's operator restarts unmanaged pods",
                     extra=where)
            return
        watcher = operator_watcher(config.get("data") or {})
        fields = {**where, "operator": watcher.describe(), "interval": watcher.interval, "selector": watcher.selector}
        if watcher.restarts_pods and not o.observe:
            log.warning("Cilium's operator restarts unmanaged pods too: two recyclers double the disruption; turn "
                        "one off (Cilium: Helm value operator.unmanagedPodWatcher.restart=false)", extra=fields)
        else:
            log.info("Cilium's operator unmanaged-pod watcher", extra={
                **fields, "operator_restarts_pods": watcher.restarts_pods})

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
        gated = self._live(self.pods.get(key))
        is_gated = gated is not None and pod_facts(gated, self.options.gate_condition).has_gate
        other = None if is_gated else self._live(self._scoped_pod(key))
        now = self._clock()
        if other is not None:  # scope `all`: a pod this controller does not gate
            step = self._plan_ungated(self._situation(other), owner_facts(other), now)
            self._note(key, other, step)
            self._carry_out(key, other, step, now, checked=False, gated=False)
        elif gated is not None:
            step = self._plan(self._situation(gated), now)
            self._note(key, gated, step)
            self._carry_out(key, gated, step, now, checked=False)
        else:
            self._note(key, None, None)
        self.books.succeeded(key)

    def _live(self, pod: dict[str, Any] | None) -> dict[str, Any] | None:
        """None for a pod the API server already called gone: dropped, not retried; the watch brings the deletion
        or the new pod."""
        return None if pod is None or self.books.is_gone(uid_of(pod)) else pod

    def _scoped_pod(self, key: Key) -> dict[str, Any] | None:
        for informer in self.scoped:
            pod = informer.get(key)
            if pod is not None:
                return pod
        return None

    def _plan_ungated(self, situation: Situation, owner: OwnerFacts, now: float) -> Plan:
        step = plan_unmanaged(situation, owner, self.options.timings, now)
        self.books.planned(step)
        return step

    def _note(self, key: Key, pod: Mapping[str, Any] | None, step: Plan | None) -> None:
        """Keep the unmanaged-pods gauge in step with what the plan says of the pod."""
        labels = None
        if pod is not None and step is not None and is_unmanaged(step):
            labels = (key[0], owner_facts(pod).owner.label)
        self.metrics.set_unmanaged(self.books.unmanaged(key, labels))

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
        state, booted_at = self._agent_state(node), self.books.booted_at(node)
        if state is not AgentState.READY:
            return NodeFacts(state, booted_at=booted_at)
        return NodeFacts(state, self.books.ready_since(node, self._clock()), booted_at)

    def _carry_out(self, key: Key, pod: Mapping[str, Any], step: Plan, now: float, *, checked: bool,
                   gated: bool = True) -> None:
        if step.action is Action.WAIT:
            if step.recheck_at is not None:
                self._queue.add_after(key, step.recheck_at - now + 0.01)
        elif step.action in (Action.SET_CONDITION, Action.RELEASE):
            self._act.set_gate(pod, step, now)
        elif step.action is Action.REPORT:
            self._act.report(pod, step.reason)
        elif step.action is Action.RECYCLE:
            if self.options.observe:
                self._act.report(pod, OBSERVED)
            elif checked:
                self._act.evict(key, pod, now)
            else:
                self._check_and_recycle(key, pod, gated)

    def _check_and_recycle(self, key: Key, pod: Mapping[str, Any], gated: bool) -> None:
        """Re-read the pod, its endpoint and (for a pod this controller does not gate) its owner just before
        evicting, and plan again on what is fresh."""
        uid = uid_of(pod)
        fresh = kube.get_pod(self._kube, *key)
        if fresh is None or uid_of(fresh) != uid:
            log.info("pod gone before recycling", extra={"namespace": key[0], "pod": key[1], "uid": uid})
            self.books.mark_gone(uid)
            return
        endpoint = kube.get_cilium_endpoint(self._kube, *key) if self.endpoints.available else None
        now = self._clock()
        situation = self._situation(fresh, endpoint, cached_endpoint=False)
        if gated:
            step = self._plan(situation, now)
        else:
            owner = owner_facts(fresh)
            step = plan_unmanaged(situation, owner, self.options.timings, now)
            if step.action is Action.RECYCLE and owner.needs_reading:
                found = kube.get_object(self._kube, kube.OWNER_RESOURCES[owner.owner.kind], key[0], owner.owner.name)
                owner = replace(owner, verdict=owner_verdict(owner.owner, found))
            step = self._plan_ungated(situation, owner, now)
        self._note(key, fresh, step)
        self._carry_out(key, fresh, step, now, checked=True, gated=gated)

    def _may_write(self) -> bool:
        return not self.options.dry_run and self._elector is not None and self._elector.may_write()

    def _retry_later(self, key: Key) -> None:
        failures = self.books.failed(key)
        self._queue.add_after(key, min(self.options.backoff_max, self.options.backoff_initial * 2 ** (failures - 1)))
