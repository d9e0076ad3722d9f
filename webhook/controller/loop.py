"""The gate controller's loop: informers (caches.py) keep small summaries and feed a work queue; workers plan with
rules.py and unmanaged.py and have acting.py carry the plan out. Imports no HTTP server and no admission code;
remembers what it must between reconciles in bookkeeping.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from webhook import kube
from webhook.cilium import CILIUM_CONFIG, AgentState, operator_watcher
from webhook.controller.acting import OBSERVED, Actor
from webhook.controller.bookkeeping import Bookkeeping
from webhook.controller.caches import Caches, Callbacks
from webhook.controller.eventsender import EventSender, Verdict
from webhook.controller.lease import LeaderElector
from webhook.controller.logthrottle import LogThrottle
from webhook.controller.metrics import ControllerMetrics
from webhook.controller.options import ControllerOptions
from webhook.controller.ratelimit import recycle_bucket
from webhook.controller.rules import Action, NodeFacts, Plan, Situation, plan
from webhook.controller.summaries import (
    AgentSummary,
    EndpointSummary,
    NodeSummary,
    PodSummary,
    node_of_summary,
    reboot_boundary,
    summarize_endpoint,
    summarize_pod,
    uid_of_summary,
)
from webhook.controller.turns import EvictionTurns, LineChange, Turn
from webhook.controller.workqueue import Key, RateLimitingQueue
from webhook.kube import ApiError, Kube
from webhook.unmanaged import is_unmanaged, owner_verdict, plan_reading_owner, plan_unmanaged

__all__ = ["ControllerOptions", "GateController"]

log = logging.getLogger(__name__)


class GateController:
    """Four informers (gated pods, CiliumEndpoints, nodes, Cilium agent pods), and with scope `all` one per list
    of the scope's pods, keep small summaries and feed one work queue; `workers` threads plan and act, each pod
    with one worker at a time. Only the Lease holder writes; a dry-run replica plans, logs and counts. Events go
    out from a background thread; evictions take turns for the rate limit's tokens."""

    def __init__(self, client: Kube, options: ControllerOptions, metrics: ControllerMetrics, *,
                 clock: Callable[[], float] = time.time) -> None:
        if options.lease is None and not options.dry_run:
            raise ValueError("a controller that writes needs a Lease")
        self._kube = client
        self.options = options
        self.metrics = metrics
        self._clock = clock
        o = options
        self.caches = Caches(client, o, Callbacks(
            on_pod=self._on_pod, on_scoped_pod=self._on_scoped_pod, on_endpoint=self._on_endpoint,
            on_node=self._on_node, on_agent=self._on_agent, on_endpoints_availability=self._on_endpoints_availability))
        self._elector = None if o.lease is None else LeaderElector(
            client, o.lease, self._started_leading, self._stopped_leading)
        self._queue = RateLimitingQueue(o.backoff_initial, o.backoff_max)
        # One bucket for every eviction, gated pods and the rest alike.
        self._turns = EvictionTurns(recycle_bucket(o.recycle_rate, clock()))
        # Conditions first: an Event waits while workers have pods in hand (at most a few seconds).
        self._events = EventSender(self._send_event, capacity=o.event_queue, may_send=self._may_write,
                                   on_verdict=self._count_event, on_failure=self._event_failed,
                                   defer_while=self._queue.busy)
        self._log_throttle = LogThrottle()
        self.books = Bookkeeping()
        self._act = Actor(client, o, metrics, self.books, requeue=self._queue.add_after, may_write=self._may_write,
                          clock=clock, events=self._events)
        self._done = threading.Event()
        self._stopping = threading.Event()
        self._elector_stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lasting: list[threading.Thread] = []  # those that run until stop(): health is all of them alive
        self._workers: list[threading.Thread] = []
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
        self._workers = [threading.Thread(target=self._work, name=f"worker-{n}", daemon=True)
                         for n in range(self.options.workers)]
        self._lasting = [*(threading.Thread(target=i.run, args=(self._stopping,), name=i.name, daemon=True)
                           for i in self.caches.all),
                         *self._workers,
                         threading.Thread(target=self._events.run, args=(self._stopping,), name="events", daemon=True),
                         threading.Thread(target=self._resync, name="resync", daemon=True)]
        self._threads = list(self._lasting)
        # These may end on their own: the election when the lease is lost (run() returns then), the check at once.
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
            "workers": o.workers, "unmanaged_scope": str(o.unmanaged.scope),
            "unmanaged_action": str(o.unmanaged.effective_action), "namespaces": list(o.unmanaged.pods.namespaces),
            "exclude_namespaces": list(o.unmanaged.pods.exclude_namespaces), "selector": o.unmanaged.pods.selector})

    def stop(self) -> None:
        """Safe from a signal handler: run() does the shutdown."""
        self._done.set()

    def is_ready(self) -> bool:
        return self.caches.synced()

    def is_healthy(self) -> bool:
        return bool(self._lasting) and all(t.is_alive() for t in self._lasting)

    @property
    def leading(self) -> bool:
        return self._elector is not None and self._elector.is_leader()

    def _shutdown(self) -> None:
        self._stopping.set()
        self._queue.shut_down()
        for worker in self._workers:
            worker.join(timeout=15)  # let the calls in flight finish before the lease goes
        self._events.close()
        self._events.flush(timeout=2)  # a moment for the Events of those calls; the rest are dropped
        if self._elector_thread is not None:
            self._elector_stop.set()
            self._elector_thread.join(timeout=15)
        self.caches.stop()
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

    def _on_pod(self, key: Key, old: PodSummary | None, new: PodSummary | None) -> None:
        waiting = new is not None and new.facts.is_waiting
        gone = self._gone_uid(key, old, new)
        self.metrics.pods_waiting.set(self.books.pod_changed(key, gone, uid_of_summary(new), waiting=waiting))
        self._queue.add(key)

    def _on_scoped_pod(self, key: Key, old: PodSummary | None, new: PodSummary | None) -> None:
        self.books.scoped_pod_changed(self._gone_uid(key, old, new), uid_of_summary(new))
        self._queue.add(key)

    def _gone_uid(self, key: Key, old: PodSummary | None, new: PodSummary | None) -> str:
        """The uid of a pod that went away, unless another cache still holds it: a gated pod is in the scope's
        cache too, and its record (evicted, refused) must last until neither shows it."""
        uid = uid_of_summary(old)
        if not uid or uid == uid_of_summary(new):
            return ""
        return "" if self.caches.holds_pod(key, uid) else uid

    def _on_endpoint(self, key: Key, old: EndpointSummary | None, new: EndpointSummary | None) -> None:
        self._queue.add(key)  # the pod of the same namespace and name

    def _on_node(self, key: Key, old: NodeSummary | None, new: NodeSummary | None) -> None:
        node, now = key[1], self._clock()
        booted_at = reboot_boundary(old, new, now)
        if booted_at is not None:  # the Node object survived a reboot, so no taint held its pods back
            self.books.node_rebooted(node, booted_at, self.caches.agent_state(node) is AgentState.READY, now)
            log.info("node rebooted; its pods are checked again as if they had just started", extra={
                "node": node, "boot_id": new.boot_id if new else "", "pods": len(self.caches.pods_on(node))})
        self._node_changed(node)

    def _on_agent(self, key: Key, old: AgentSummary | None, new: AgentSummary | None) -> None:
        for node in {node_of_summary(old), node_of_summary(new)} - {""}:
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
        self.books.agent_readiness(node, self.caches.agent_state(node) is AgentState.READY, self._clock())
        for key in self.caches.pods_on(node):
            self._queue.add(key)

    def _enqueue_all(self) -> None:
        for key in self.caches.pod_keys():
            self._queue.add(key)

    def _resync(self) -> None:
        """A safety net: timers and watches normally cover everything."""
        while not self._stopping.wait(self.options.resync_period):
            self._enqueue_all()

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

    # --- the workers ---

    def _work(self) -> None:
        while not self._stopping.is_set():
            key = self._queue.get(timeout=0.5)
            if key is None:
                continue
            try:
                self._reconcile(key)
                self._queue.forget(key)
            except ApiError as err:
                delay = self._queue.add_rate_limited(key, err.retry_after)
                left_out = self._log_throttle.allow_failure(("reconcile", err.status), err.status, time.monotonic())
                if left_out is not None:
                    log.warning("API call failed; will retry (failures like it are logged once a minute)", extra={
                        "namespace": key[0], "pod": key[1], "status": err.status, "error": err.message,
                        "retry_in_seconds": round(delay, 2), "left_out_since_last_line": left_out})
            except Exception:
                log.exception("reconcile failed; will retry", extra={"namespace": key[0], "pod": key[1]})
                self._queue.add_rate_limited(key)
            finally:
                self._queue.done(key)

    def _reconcile(self, key: Key) -> None:
        if not (self.options.dry_run or self.leading):
            return  # the leader does the work; becoming leader enqueues every pod
        if not self.is_ready():
            self._queue.add_after(key, 0.2)
            return
        gated = self._live(self.caches.pods.get(key))
        other = None if gated is not None and gated.facts.has_gate else self._live(self.caches.scoped_pod(key))
        now = self._clock()
        if other is not None:  # scope `all`: a pod this controller does not gate
            step = self._plan_ungated(self._situation(other), other, now)
            self._note(key, other, step)
            self._carry_out(key, other, step, now, gated=False)
        elif gated is not None:
            step = self._plan(self._situation(gated), now)
            self._note(key, gated, step)
            self._carry_out(key, gated, step, now)
        else:
            self._note(key, None, None)
            self._leave_line(key)

    def _live(self, pod: PodSummary | None) -> PodSummary | None:
        """None for a pod the API server already called gone: dropped, not retried; the watch brings the deletion
        or the new pod."""
        return None if pod is None or self.books.is_gone(pod.facts.uid) else pod

    def _plan_ungated(self, situation: Situation, pod: PodSummary, now: float) -> Plan:
        step = plan_unmanaged(situation, pod.owner, self.options.timings, now)
        self.books.planned(step)
        return step

    def _note(self, key: Key, pod: PodSummary | None, step: Plan | None) -> None:
        """Keep the unmanaged-pods gauge in step with what the plan says of the pod."""
        labels = None
        if pod is not None and step is not None and is_unmanaged(step):
            labels = (key[0], pod.owner.owner.label)
        self.metrics.set_unmanaged(self.books.unmanaged(key, labels))

    def _plan(self, situation: Situation, now: float) -> Plan:
        step = plan(situation, self.options.timings, now)
        self.books.planned(step)
        return step

    def _situation(self, pod: PodSummary, endpoint: EndpointSummary | None = None,
                   cached_endpoint: bool = True) -> Situation:
        f = pod.facts
        if not f.gate_true and self.books.gate_set(f.uid):
            f = replace(f, gate_true=True)  # written by this controller; the watch has not brought it back yet
        if cached_endpoint:
            endpoint = self.caches.endpoints.get((f.namespace, f.name))
        return Situation(pod=f, endpoint_state=None if endpoint is None else endpoint.state_for(f.uid),
                         endpoints_available=self.caches.endpoints.available, node=self._node_facts(f.node_name),
                         eviction_retry_at=self.books.eviction_retry_at(f.uid))

    def _node_facts(self, node: str) -> NodeFacts:
        if not node:
            return NodeFacts()
        state, booted_at = self.caches.agent_state(node), self.books.booted_at(node)
        if state is not AgentState.READY:
            return NodeFacts(state, booted_at=booted_at)
        return NodeFacts(state, self.books.ready_since(node, self._clock()), booted_at)

    def _carry_out(self, key: Key, pod: PodSummary, step: Plan, now: float, *, gated: bool = True,
                   checked: bool = False) -> None:
        if step.action is not Action.RECYCLE or self.options.observe:
            self._leave_line(key)
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
            elif not checked:
                self._take_turn_and_recycle(key, pod, gated)

    # --- recycling, one token at a time ---

    def _take_turn_and_recycle(self, key: Key, pod: PodSummary, gated: bool) -> None:
        """Take a rate-limit token before reading anything; without one, wait in line (the first in line is woken
        when the next token is due). With one, re-read the pod, its endpoint and (for a pod this controller does
        not gate) its owner, plan again on what is fresh, and evict, or give the token back."""
        if self.books.was_evicted(pod.facts.uid):
            return
        turn = self._turns.take(key, self._clock())
        self._after_turn(turn)
        if not turn.granted:
            return
        spent = False
        try:
            spent = self._check_and_evict(key, pod, gated)
        finally:
            if not spent:
                self._after_turn(self._turns.give_back(self._clock()))

    def _check_and_evict(self, key: Key, pod: PodSummary, gated: bool) -> bool:
        uid = pod.facts.uid
        raw = kube.get_pod(self._kube, *key)
        fresh = None if raw is None else summarize_pod(raw, self.options.gate_condition)
        if fresh is None or fresh.facts.uid != uid:
            log.info("pod gone before recycling", extra={"namespace": key[0], "pod": key[1], "uid": uid})
            self.books.mark_gone(uid)
            return False
        endpoint = None
        if self.caches.endpoints.available:
            found = kube.get_cilium_endpoint(self._kube, *key)
            endpoint = None if found is None else summarize_endpoint(found)
        now = self._clock()
        situation = self._situation(fresh, endpoint, cached_endpoint=False)
        if gated:
            step = self._plan(situation, now)
        else:
            owner, step = plan_reading_owner(situation, fresh.owner, self.options.timings, now, lambda o: owner_verdict(
                o, kube.get_object(self._kube, kube.OWNER_RESOURCES[o.kind], key[0], o.name)))
            fresh = replace(fresh, owner=owner)
            self.books.planned(step)
        self._note(key, fresh, step)
        if step.action is not Action.RECYCLE:
            self._carry_out(key, fresh, step, now, gated=gated, checked=True)
            return False
        return self._act.evict(key, fresh, now)

    def _after_turn(self, turn: Turn) -> None:
        if turn.wake is not None:
            key, at = turn.wake
            self._queue.add_after(key, at - self._clock())
        if turn.change is LineChange.STARTED:
            log.info("recycling waits for the rate limit; pods wait in line, one is woken per token",
                     extra={"recycle_rate": self.options.recycle_rate})
        elif turn.change is LineChange.EMPTIED:
            log.info("no pod waits for the recycling rate limit any more")
        self.metrics.recycle_waiting.set(self._turns.waiting())

    def _leave_line(self, key: Key) -> None:
        self._after_turn(self._turns.leave(key, self._clock()))

    # --- Events, off the critical path ---

    def _send_event(self, body: dict[str, Any]) -> None:
        kube.create_event(self._kube, body["metadata"]["namespace"], body)

    def _count_event(self, verdict: Verdict) -> None:
        self.metrics.events.labels(outcome=str(verdict)).inc()

    def _event_failed(self, err: Exception) -> None:
        """Counted always; logged once a minute at most for each status, so that an outage or a missing
        permission is one line, not one per Event (no answer at all: Reachability says so)."""
        self.metrics.events.labels(outcome="failed").inc()
        status = err.status if isinstance(err, ApiError) else -1
        left_out = self._log_throttle.allow_failure(("event", status), status, time.monotonic())
        if left_out is not None:
            log.warning("could not record an event (failures like it are counted, and logged once a minute)",
                        extra={"status": status, "error": getattr(err, "message", str(err)),
                               "left_out_since_last_line": left_out})

    def _may_write(self) -> bool:
        return not self.options.dry_run and self._elector is not None and self._elector.may_write()
