"""What the gate controller's loop remembers between reconciles, per pod and per node; which pods sit on which
node is the informers' index, not kept here. Thread-safe, behind one lock; no API calls and no decisions.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from webhook.controller.rules import Action, Plan
from webhook.controller.workqueue import Key


@dataclass
class PodRecord:
    """One pod, by uid: a pod recreated under the same name starts a fresh record."""

    eviction_retry_at: float | None = None  # a PodDisruptionBudget refused: no eviction before this
    evicted: bool = False
    reported: bool = False  # its UnmanagedPodDetected Event is written (or, in a dry run, logged)
    gate_set: bool = False  # this controller set its condition True; the cache may not show it yet
    gone: bool = False  # the API server said gone or replaced (404, 409, 422): dropped, not retried
    dry_run_done: set[Action] = field(default_factory=set)  # dry run: each would-be action is counted once


@dataclass
class NodeRecord:
    ready_since: float | None = None  # when this controller saw the node's agent become ready
    booted_at: float | None = None  # the node rebooted: see rules.NodeFacts.booted_at


class Bookkeeping:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods: dict[str, PodRecord] = {}  # by pod uid
        self._nodes: dict[str, NodeRecord] = {}  # by node name
        self._waiting: set[Key] = set()  # gated pods whose gate is not True yet
        self._plans: Counter[tuple[Action, str]] = Counter()
        self._unmanaged: dict[Key, tuple[str, str]] = {}  # unmanaged pods, by key: (namespace, owner kind)
        self._unmanaged_counts: Counter[tuple[str, str]] = Counter()

    # --- informer side ---

    def pod_changed(self, key: Key, old_uid: str, new_uid: str, *, waiting: bool) -> int:
        """Note whether a gated pod waits, and forget a pod uid that went away (deleted or replaced under the
        same name). Returns how many pods wait."""
        with self._lock:
            if waiting:
                self._waiting.add(key)
            else:
                self._waiting.discard(key)
            self._forget(old_uid, new_uid)
            return len(self._waiting)

    def scoped_pod_changed(self, old_uid: str, new_uid: str) -> None:
        """A pod of the `all` scope changed: forget its uid when it went away."""
        with self._lock:
            self._forget(old_uid, new_uid)

    def agent_readiness(self, node: str, ready: bool, now: float) -> None:
        """Note whether the node's agent is ready (since `now`, unless it already was)."""
        with self._lock:
            record = self._node(node)
            if not ready:
                record.ready_since = None
            elif record.ready_since is None:
                record.ready_since = now

    def node_rebooted(self, node: str, booted_at: float, ready: bool, now: float) -> None:
        """The node's boot ID changed: its pods count as started anew, and its agent as ready since `now` at the
        earliest, even if it never showed not ready."""
        with self._lock:
            record = self._node(node)
            record.booted_at = booted_at
            record.ready_since = now if ready else None

    def booted_at(self, node: str) -> float | None:
        with self._lock:
            record = self._nodes.get(node)
            return record.booted_at if record else None

    def ready_since(self, node: str, now: float) -> float:
        """When the node's agent was first seen ready, `now` when this is the first time; for a ready agent."""
        with self._lock:
            record = self._node(node)
            if record.ready_since is None:
                record.ready_since = now
            return record.ready_since

    # --- worker side, per pod uid ---

    def is_gone(self, uid: str) -> bool:
        with self._lock:
            record = self._pods.get(uid)
            return record is not None and record.gone

    def mark_gone(self, uid: str) -> None:
        with self._lock:
            self._pod(uid).gone = True

    def eviction_retry_at(self, uid: str) -> float | None:
        with self._lock:
            record = self._pods.get(uid)
            return record.eviction_retry_at if record else None

    def eviction_refused(self, uid: str, retry_at: float) -> None:
        with self._lock:
            self._pod(uid).eviction_retry_at = retry_at

    def was_evicted(self, uid: str) -> bool:
        with self._lock:
            record = self._pods.get(uid)
            return record is not None and record.evicted

    def mark_evicted(self, uid: str) -> None:
        with self._lock:
            record = self._pod(uid)
            record.evicted, record.eviction_retry_at = True, None

    def mark_gate_set(self, uid: str) -> None:
        with self._lock:
            self._pod(uid).gate_set = True

    def gate_set(self, uid: str) -> bool:
        """This controller set the pod's condition True: until the watch brings the pod back with it, the cache
        still shows the gate closed, and a second worker (or a second look) must not write it again."""
        with self._lock:
            record = self._pods.get(uid)
            return record is not None and record.gate_set

    def first_report(self, uid: str) -> bool:
        """An unmanaged pod is reported once (one Event per pod); True the first time."""
        with self._lock:
            record = self._pod(uid)
            first, record.reported = not record.reported, True
            return first

    def unmanaged(self, key: Key, labels: tuple[str, str] | None) -> list[tuple[tuple[str, str], int]]:
        """Note whether the pod is unmanaged, with its (namespace, owner kind), or not (None); returns the label
        sets whose count changed, with their new counts, for the gauge."""
        with self._lock:
            old = self._unmanaged.get(key)
            if old == labels:
                return []
            changed = []
            if old is not None:
                del self._unmanaged[key]
                self._unmanaged_counts[old] -= 1
                changed.append((old, self._unmanaged_counts[old]))
                if not self._unmanaged_counts[old]:
                    del self._unmanaged_counts[old]
            if labels is not None:
                self._unmanaged[key] = labels
                self._unmanaged_counts[labels] += 1
                changed.append((labels, self._unmanaged_counts[labels]))
            return changed

    def first_time(self, uid: str, action: Action) -> bool:
        """Dry run: the pod is left as it is, so each would-be action is counted once per pod."""
        with self._lock:
            done = self._pod(uid).dry_run_done
            if action in done:
                return False
            done.add(action)
            return True

    # --- what the workers planned ---

    def planned(self, step: Plan) -> None:
        with self._lock:
            self._plans[step.action, step.reason] += 1

    def plans(self, action: Action, reason: str) -> int:
        """How many times the worker planned `action` for `reason`: what the worker did, for tests and
        debugging, where a WAIT leaves no other trace."""
        with self._lock:
            return self._plans[action, reason]

    # --- records, created on first use (the lock is held) ---

    def _pod(self, uid: str) -> PodRecord:
        record = self._pods.get(uid)
        if record is None:
            record = self._pods[uid] = PodRecord()
        return record

    def _forget(self, old_uid: str, new_uid: str) -> None:
        if old_uid and old_uid != new_uid:
            self._pods.pop(old_uid, None)

    def _node(self, node: str) -> NodeRecord:
        record = self._nodes.get(node)
        if record is None:
            record = self._nodes[node] = NodeRecord()
        return record
