"""Gate controller: sets the readiness gate once Cilium manages a pod, and recycles pods Cilium never will.

Issue 3 is the contract. The first half is pure: `decide(facts, policy, now)` and the token bucket take plain
data and a clock reading, and do no I/O. `GateController` below is the loop around them; every Kubernetes
call it makes goes through webhook.kube.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from webhook import kube
from webhook.backoff import Backoff
from webhook.cilium import AgentState, agent_state, endpoint_state
from webhook.config import (
    DEFAULT_AGENT_SELECTOR,
    DEFAULT_CILIUM_NAMESPACE,
    DEFAULT_GRACE_PERIOD,
    DEFAULT_RECYCLE_RATE,
    DEFAULT_RELEASE_AFTER,
)
from webhook.controller_metrics import ControllerMetrics
from webhook.informer import Informer, Key, WorkQueue
from webhook.kube import ApiError, Kube, Target
from webhook.lease import LeaderElector, LeaseConfig, micro_time
from webhook.policy import CILIUM_TAINT_KEY, DEFAULT_GATE_CONDITION, DEFAULT_GATE_LABEL

log = logging.getLogger(__name__)

REPORTING_CONTROLLER = "startupguard.io/controller"
EVICTION_RETRY_FLOOR = 30.0  # issue 3: a refused eviction is retried no sooner than this
ENDPOINT_READY = "ready"  # CiliumEndpoint status.state once the endpoint is fully regenerated
FINISHED_PHASES = ("Succeeded", "Failed")
GONE_STATUSES = (404, 409, 422)  # the pod is gone or was replaced: drop it, do not retry


# --- pure decision -------------------------------------------------------------------------------------------


class Action(StrEnum):
    SKIP = "skip"  # nothing to do now or later, unless the pod changes
    WAIT = "wait"  # look again when something changes, or at recheck_at
    SET_CONDITION = "set-condition"  # Cilium manages the pod: gate True, Normal event
    RELEASE = "release"  # a fail-safe sets the gate True without a ready endpoint: Warning event
    RECYCLE = "recycle"  # unmanaged and never will be: evict


class ReleaseReason(StrEnum):
    MAX_WAIT = "max-wait"
    NO_CILIUM_ENDPOINTS = "no-cilium-endpoints"
    HOST_NETWORK = "host-network"
    RELEASE_ALL = "release-all"


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class NodeFacts:
    agent: AgentState = AgentState.UNKNOWN
    ready_since: float | None = None  # when this controller saw the agent become ready


@dataclass(frozen=True)
class Facts:
    pod: PodFacts
    endpoint_state: str | None = None  # None: the pod has no CiliumEndpoint
    endpoints_available: bool = True  # False: the API does not serve ciliumendpoints at all
    node: NodeFacts = field(default_factory=NodeFacts)
    eviction_retry_at: float | None = None  # a PodDisruptionBudget refused; not before this


@dataclass(frozen=True)
class GatePolicy:
    grace_period: float = DEFAULT_GRACE_PERIOD
    release_after: float = DEFAULT_RELEASE_AFTER  # 0 turns the maximum wait off


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str  # why, for logs; for RELEASE one of ReleaseReason
    recheck_at: float | None = None  # WAIT: when the passing of time alone may change the answer


def decide(facts: Facts, policy: GatePolicy, now: float) -> Decision:
    pod = facts.pod
    if pod.phase in FINISHED_PHASES:
        return Decision(Action.SKIP, "finished")
    if pod.terminating:  # an evicted pod keeps its IP, and no endpoint, through its termination grace period
        return Decision(Action.SKIP, "terminating")
    if not pod.has_gate:
        return Decision(Action.SKIP, "no-gate")
    if pod.host_network:  # Cilium never manages host-network pods: waiting or recycling would never end
        return _done_or(pod, Decision(Action.RELEASE, ReleaseReason.HOST_NETWORK))
    max_wait = _max_wait_deadline(pod, policy)

    if facts.endpoint_state is not None:  # Cilium manages the pod; never recycle it
        if facts.endpoint_state == ENDPOINT_READY:
            return _done_or(pod, Decision(Action.SET_CONDITION, "endpoint-ready"))
        return _done_or(pod, _wait_unless_past(max_wait, now, "endpoint-not-ready"))

    if not facts.endpoints_available:  # fail-safe: this cluster's Cilium never reports managing a pod
        grace_end = (pod.started_at or now) + policy.grace_period
        if now >= grace_end:
            return _done_or(pod, Decision(Action.RELEASE, ReleaseReason.NO_CILIUM_ENDPOINTS))
        return _done_or(pod, Decision(Action.WAIT, "no-cilium-endpoints", grace_end))

    if not pod.node_name:
        return Decision(Action.WAIT, "unscheduled")
    if not pod.gate_true and max_wait is not None and now >= max_wait:
        return Decision(Action.RELEASE, ReleaseReason.MAX_WAIT)
    # From here the pod has no endpoint. It is a recycling candidate even with its gate True (say, released
    # by the maximum wait): an unmanaged pod is what this controller exists to fix.
    release_at = None if pod.gate_true else max_wait
    if pod.phase != "Running" or not pod.pod_ip:
        return Decision(Action.WAIT, "not-running", release_at)
    if facts.node.agent is not AgentState.READY:
        return Decision(Action.WAIT, str(facts.node.agent), release_at)
    grace_end = max(pod.started_at or now, facts.node.ready_since or now) + policy.grace_period
    if now < grace_end:
        return Decision(Action.WAIT, "grace-period", _earliest(grace_end, release_at))
    if facts.eviction_retry_at is not None and now < facts.eviction_retry_at:
        return Decision(Action.WAIT, "eviction-refused", _earliest(facts.eviction_retry_at, release_at))
    return Decision(Action.RECYCLE, "unmanaged")


def _done_or(pod: PodFacts, decision: Decision) -> Decision:
    return Decision(Action.SKIP, "gate-true") if pod.gate_true else decision


def _max_wait_deadline(pod: PodFacts, policy: GatePolicy) -> float | None:
    if policy.release_after <= 0 or pod.started_at is None:
        return None
    return pod.started_at + policy.release_after


def _wait_unless_past(deadline: float | None, now: float, reason: str) -> Decision:
    if deadline is not None and now >= deadline:
        return Decision(Action.RELEASE, ReleaseReason.MAX_WAIT)
    return Decision(Action.WAIT, reason, deadline)


def _earliest(*times: float | None) -> float | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


# --- facts from API objects (pure) ---


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
        has_gate=any(g.get("conditionType") == condition_type for g in spec.get("readinessGates") or []
                     if isinstance(g, Mapping)),
        gate_true=is_gate_true(pod, condition_type),
    )


def is_gate_true(pod: Mapping[str, Any], condition_type: str) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(isinstance(c, Mapping) and c.get("type") == condition_type and c.get("status") == "True"
               for c in conditions)


def parse_time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


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


class TokenBucket:
    """Rate limit for recycling: `rate` tokens a minute, holding at most `burst`. Pure: callers pass the time."""

    def __init__(self, rate_per_minute: float, burst: float, now: float) -> None:
        self.rate = rate_per_minute / 60.0
        self.burst = burst
        self._tokens = burst
        self._updated = now

    def available(self, now: float) -> bool:
        self._refill(now)
        return self._tokens >= 1.0

    def take(self, now: float) -> None:
        self._refill(now)
        self._tokens -= 1.0

    def wait_time(self, now: float) -> float:
        """Seconds until a token is available; infinity when the rate is zero."""
        self._refill(now)
        if self._tokens >= 1.0:
            return 0.0
        return (1.0 - self._tokens) / self.rate if self.rate > 0 else float("inf")

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._updated) * self.rate)
        self._updated = now


def recycle_bucket(rate_per_minute: float, now: float) -> TokenBucket:
    # Rate and burst are both --recycle-rate (issue 3); a fractional rate still allows one eviction at a time.
    return TokenBucket(rate_per_minute, max(1.0, rate_per_minute) if rate_per_minute > 0 else 0.0, now)


def event_body(pod: Mapping[str, Any], reason: str, event_type: str, action: str, note: str, *,
               instance: str, now: float) -> dict[str, Any]:
    """An events.k8s.io/v1 Event about a pod, named like client-go's recorder does: <pod>.<time in hex>."""
    metadata = pod.get("metadata") or {}
    name, namespace = str(metadata.get("name") or ""), str(metadata.get("namespace") or "")
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": f"{name[:230]}.{int(now * 1e9):x}", "namespace": namespace},
        "eventTime": micro_time(now),
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": instance[:128],
        "action": action,
        "reason": reason,
        "note": note[:1024],
        "type": event_type,
        "regarding": {"apiVersion": "v1", "kind": "Pod", "namespace": namespace, "name": name,
                      "uid": metadata.get("uid")},
    }


# --- the loop ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ControllerOptions:
    gate_condition: str = DEFAULT_GATE_CONDITION
    gate_label: str = DEFAULT_GATE_LABEL
    cilium_taint_key: str = CILIUM_TAINT_KEY
    policy: GatePolicy = field(default_factory=GatePolicy)
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
    worker decides and acts. Only the Lease holder writes; a dry-run replica decides, logs and counts."""

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
        self._bucket = recycle_bucket(o.recycle_rate, clock())
        self._lock = threading.RLock()
        self._pods_by_node: dict[str, set[Key]] = {}
        self._agents_by_node: dict[str, set[Key]] = {}
        self._ready_since: dict[str, float] = {}
        self._waiting: set[Key] = set()
        self._retry_at: dict[str, float] = {}  # pod uid -> no eviction before
        self._evicted: set[str] = set()
        self._gone: set[str] = set()  # uids the API server says are gone or replaced (404, 409, 422)
        self._dry_run_done: dict[str, set[Action]] = {}
        self._failures: dict[Key, int] = {}
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
            "grace_period": self.options.policy.grace_period, "release_after": self.options.policy.release_after,
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
        old_node, new_node = _node_of(old), _node_of(new)
        with self._lock:
            if old_node and old_node != new_node:
                self._pods_by_node.get(old_node, set()).discard(key)
            if new_node:
                self._pods_by_node.setdefault(new_node, set()).add(key)
            if new is not None and self._is_waiting(new):
                self._waiting.add(key)
            else:
                self._waiting.discard(key)
            self.metrics.pods_waiting.set(len(self._waiting))
            gone_uid = _uid_of(old) if new is None or _uid_of(new) != _uid_of(old) else ""
            if gone_uid:
                self._retry_at.pop(gone_uid, None)
                self._evicted.discard(gone_uid)
                self._gone.discard(gone_uid)
                self._dry_run_done.pop(gone_uid, None)
        self._queue.add(key)

    def _on_endpoint(self, key: Key, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        self._queue.add(key)  # the pod of the same namespace and name

    def _on_node(self, key: Key, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        self._node_changed(key[1])

    def _on_agent(self, key: Key, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        old_node, new_node = _node_of(old), _node_of(new)
        with self._lock:
            if old_node and old_node != new_node:
                self._agents_by_node.get(old_node, set()).discard(key)
            if new_node and new is not None:
                self._agents_by_node.setdefault(new_node, set()).add(key)
            elif new is None and old_node:
                self._agents_by_node.get(old_node, set()).discard(key)
        for node in {old_node, new_node} - {""}:
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
        state = self._agent_state(node)
        with self._lock:
            if state is AgentState.READY:
                self._ready_since.setdefault(node, self._clock())
            else:
                self._ready_since.pop(node, None)
            keys = list(self._pods_by_node.get(node, ()))
        for key in keys:
            self._queue.add(key)

    def _agent_state(self, node: str) -> AgentState:
        with self._lock:
            agent_keys = list(self._agents_by_node.get(node, ()))
        agents = [a for a in (self.agents.get(k) for k in agent_keys) if a is not None]
        return agent_state(self.nodes.get(("", node)), agents, self.options.cilium_taint_key)

    def _is_waiting(self, pod: Mapping[str, Any]) -> bool:
        f = pod_facts(pod, self.options.gate_condition)
        return f.phase not in FINISHED_PHASES and not f.terminating and f.has_gate and not f.gate_true

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
        with self._lock:
            if pod is not None and _uid_of(pod) in self._gone:
                pod = None  # dropped, not retried: the watch brings the deletion or the new pod
        if pod is not None:
            now = self._clock()
            self._carry_out(key, pod, decide(self._facts(pod), self.options.policy, now), now, checked=False)
        with self._lock:
            self._failures.pop(key, None)

    def _facts(self, pod: Mapping[str, Any], endpoint: Mapping[str, Any] | None = None,
               cached_endpoint: bool = True) -> Facts:
        f = pod_facts(pod, self.options.gate_condition)
        if cached_endpoint:
            endpoint = self.endpoints.get((f.namespace, f.name))
        with self._lock:
            retry_at = self._retry_at.get(f.uid)
        return Facts(pod=f, endpoint_state=endpoint_state(endpoint, f.uid),
                     endpoints_available=self.endpoints.available, node=self._node_facts(f.node_name),
                     eviction_retry_at=retry_at)

    def _node_facts(self, node: str) -> NodeFacts:
        if not node:
            return NodeFacts()
        state = self._agent_state(node)
        with self._lock:
            since = self._ready_since.get(node)
            if state is AgentState.READY and since is None:
                since = self._ready_since[node] = self._clock()
        return NodeFacts(state, since if state is AgentState.READY else None)

    def _carry_out(self, key: Key, pod: Mapping[str, Any], decision: Decision, now: float, *, checked: bool) -> None:
        if decision.action is Action.WAIT:
            if decision.recheck_at is not None:
                self._queue.add_after(key, decision.recheck_at - now + 0.01)
        elif decision.action in (Action.SET_CONDITION, Action.RELEASE):
            self._set_gate(pod, decision, now)
        elif decision.action is Action.RECYCLE:
            if checked:
                self._evict(key, pod, now)
            else:
                self._check_and_recycle(key, pod)

    def _check_and_recycle(self, key: Key, pod: Mapping[str, Any]) -> None:
        """Re-read the pod and its endpoint just before evicting, and decide again on what is fresh."""
        uid = _uid_of(pod)
        fresh = kube.get_pod(self._kube, *key)
        if fresh is None or _uid_of(fresh) != uid:
            log.info("pod gone before recycling", extra={"namespace": key[0], "pod": key[1], "uid": uid})
            with self._lock:
                self._gone.add(uid)
            return
        endpoint = kube.get_cilium_endpoint(self._kube, *key) if self.endpoints.available else None
        now = self._clock()
        decision = decide(self._facts(fresh, endpoint, cached_endpoint=False), self.options.policy, now)
        self._carry_out(key, fresh, decision, now, checked=True)

    def _evict(self, key: Key, pod: Mapping[str, Any], now: float) -> None:
        uid, dry_run = _uid_of(pod), self.options.dry_run
        fields = {"namespace": key[0], "pod": key[1], "uid": uid, "node": _node_of(pod), "dry_run": dry_run}
        with self._lock:
            if uid in self._evicted:
                return
        wait = self._bucket.wait_time(now)
        if wait > 0:
            log.info("recycling rate limit reached; waiting", extra={**fields, "wait_seconds": round(wait, 1)})
            if wait != float("inf"):
                self._queue.add_after(key, wait)
            return
        if dry_run:
            if self._first_time(uid, Action.RECYCLE):
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
                with self._lock:
                    self._retry_at[uid] = retry_at
                self.metrics.evictions_refused.inc()
                log.warning("eviction refused (a PodDisruptionBudget?); will retry, never delete", extra={
                    **fields, "error": err.message, "retry_in_seconds": round(retry_at - now, 1)})
                self._queue.add_after(key, retry_at - now)
                return
            if err.status in (404, 409):
                log.info("pod gone or replaced before its eviction", extra={**fields, "status": err.status})
                with self._lock:
                    self._gone.add(uid)
                return
            raise
        self._bucket.take(now)
        with self._lock:
            self._evicted.add(uid)
            self._retry_at.pop(uid, None)
        self.metrics.pods_recycled.labels(dry_run="false").inc()
        grace = self.options.policy.grace_period
        log.warning("evicted a pod that Cilium does not manage", extra=fields)
        self._event(pod, "UnmanagedPodRecycled", "Warning", "Evict",
                    f"No CiliumEndpoint {grace:g}s after the Cilium agent on node {_node_of(pod)} was ready: Cilium "
                    f"does not manage this pod's network. Evicted it so that its controller recreates it under "
                    f"Cilium.")

    def _set_gate(self, pod: Mapping[str, Any], decision: Decision, now: float) -> None:
        f = pod_facts(pod, self.options.gate_condition)
        gate, dry_run = self.options.gate_condition, self.options.dry_run
        release = decision.action is Action.RELEASE
        fields = {"namespace": f.namespace, "pod": f.name, "uid": f.uid, "node": f.node_name,
                  "reason": decision.reason, "dry_run": dry_run}
        if dry_run:
            if self._first_time(f.uid, decision.action):
                self._count_gate(decision, f, now, dry_run=True)
                log.info("would set the gate condition (dry run)", extra=fields)
            return
        if not self._may_write():
            return
        reason, message = _condition_text(decision, self.options.policy)
        try:
            kube.patch_pod_status(self._kube, f.namespace, f.name, condition_patch(f.uid, gate, reason, message, now))
        except ApiError as err:
            if err.status in GONE_STATUSES:
                log.info("pod gone or replaced; dropped", extra={**fields, "status": err.status})
                with self._lock:
                    self._gone.add(f.uid)
                return
            raise
        self._count_gate(decision, f, now, dry_run=False)
        if release:
            log.warning("released a gate without a ready CiliumEndpoint", extra=fields)
            self._event(pod, "GateReleased", "Warning", "ReleaseGate", message)
        else:
            log.info("gate condition set", extra={**fields, "wait_seconds": _since(f.started_at, now)})
            self._event(pod, "CiliumManaged", "Normal", "SetCondition", message)

    def _count_gate(self, decision: Decision, f: PodFacts, now: float, *, dry_run: bool) -> None:
        label = "true" if dry_run else "false"
        if decision.action is Action.RELEASE:
            self.metrics.gates_released.labels(reason=decision.reason, dry_run=label).inc()
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

    def _first_time(self, uid: str, action: Action) -> bool:
        """Dry run: the pod is left as it is, so each would-be action is counted once per pod."""
        with self._lock:
            done = self._dry_run_done.setdefault(uid, set())
            if action in done:
                return False
            done.add(action)
            return True

    def _may_write(self) -> bool:
        return not self.options.dry_run and self._elector is not None and self._elector.may_write()

    def _retry_later(self, key: Key) -> None:
        with self._lock:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
        self._queue.add_after(key, min(self.options.backoff_max, self.options.backoff_initial * 2 ** (failures - 1)))


def _condition_text(decision: Decision, policy: GatePolicy) -> tuple[str, str]:
    """The pod condition's reason and message; the message is also the event's note."""
    if decision.action is Action.SET_CONDITION:
        return "CiliumManaged", "Cilium manages this pod: its CiliumEndpoint is ready."
    why = {
        ReleaseReason.MAX_WAIT: f"no ready CiliumEndpoint {policy.release_after:g}s after the pod started "
                                f"(--release-after); Cilium may not manage this pod's network",
        ReleaseReason.NO_CILIUM_ENDPOINTS: "the API does not serve ciliumendpoints, so Cilium cannot report "
                                           "managing this pod; released after the grace period",
        ReleaseReason.HOST_NETWORK: "a host-network pod is never managed by Cilium",
        ReleaseReason.RELEASE_ALL: "released by `cilium-startup-guard controller --release-all`",
    }.get(ReleaseReason(decision.reason), decision.reason)
    return "GateReleased", f"Gate released: {why}."


def release_all(client: Kube, options: ControllerOptions, *, clock: Callable[[], float] = time.time,
                passes: int = 3) -> int:
    """--release-all: every gated pod's condition True, for uninstalling. Lists again after each pass so that a
    pod recreated meanwhile is released too. 0 when a final list finds none left, 1 otherwise."""
    target = Target(kube.PODS, label_selector=options.gate_selector)
    decision = Decision(Action.RELEASE, ReleaseReason.RELEASE_ALL)
    reason, message = _condition_text(decision, options.policy)
    for attempt in range(passes + 1):
        try:
            pods, _ = kube.list_all(client, target)
        except ApiError as err:
            log.error("cannot list gated pods", extra={"status": err.status, "error": err.message})
            return 1
        pending = [p for p in pods if not is_gate_true(p, options.gate_condition)]
        if not pending:
            log.info("every gated pod has its gate condition True", extra={"pods": len(pods)})
            return 0
        if options.dry_run:
            for pod in pending:
                log.info("would release the gate (dry run)", extra=_pod_fields(pod))
            return 0
        if attempt == passes:
            break
        for pod in pending:
            f = pod_facts(pod, options.gate_condition)
            patch = condition_patch(f.uid, options.gate_condition, reason, message, clock())
            try:
                kube.patch_pod_status(client, f.namespace, f.name, patch)
            except ApiError as err:
                level = logging.INFO if err.status in GONE_STATUSES else logging.ERROR
                log.log(level, "gate not released", extra={**_pod_fields(pod), "status": err.status,
                                                            "error": err.message})
                continue
            log.info("gate released", extra=_pod_fields(pod))
            body = event_body(pod, "GateReleased", "Warning", "ReleaseGate", message, instance=options.identity,
                              now=clock())
            try:
                kube.create_event(client, f.namespace, body)
            except ApiError as err:
                log.warning("could not record an event", extra={**_pod_fields(pod), "status": err.status})
    log.error("gated pods left with their gate condition not True",
              extra={"pods": [f"{p['metadata'].get('namespace')}/{p['metadata'].get('name')}" for p in pending]})
    return 1


def _pod_fields(pod: Mapping[str, Any]) -> dict[str, Any]:
    metadata = pod.get("metadata") or {}
    return {"namespace": metadata.get("namespace"), "pod": metadata.get("name"), "uid": metadata.get("uid")}


def _node_of(pod: Mapping[str, Any] | None) -> str:
    return str(((pod or {}).get("spec") or {}).get("nodeName") or "")


def _uid_of(pod: Mapping[str, Any] | None) -> str:
    return str(((pod or {}).get("metadata") or {}).get("uid") or "")


def _since(start: float | None, now: float) -> float | None:
    return None if start is None else round(now - start, 3)

