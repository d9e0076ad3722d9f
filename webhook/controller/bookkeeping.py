"""What the gate controller's loop remembers between reconciles, per pod, per node and per work-queue key.
Thread-safe, behind one lock; no API calls and no decisions (rules.py decides).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from webhook.controller.rules import Action, Plan, node_of, uid_of
from webhook.controller.workqueue import Key


@dataclass
class PodRecord:
    """One pod, by uid: a pod recreated under the same name starts a fresh record."""

    eviction_retry_at: float | None = None  # a PodDisruptionBudget refused: no eviction before this
    evicted: bool = False
    reported: bool = False  # its UnmanagedPodDetected Event is written (or, in a dry run, logged)
    gone: bool = False  # the API server said gone or replaced (404, 409, 422): dropped, not retried
    dry_run_done: set[Action] = field(default_factory=set)  # dry run: each would-be action is counted once


@dataclass
class NodeRecord:
    pods: set[Key] = field(default_factory=set)  # gated pods scheduled there
    scoped: set[Key] = field(default_factory=set)  # pods of the `all` scope scheduled there
    agents: set[Key] = field(default_factory=set)  # Cilium agent pods scheduled there
    ready_since: float | None = None  # when this controller saw the node's agent become ready
    booted_at: float | None = None  # the node rebooted: see rules.NodeFacts.booted_at


class Bookkeeping:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods: dict[str, PodRecord] = {}  # by pod uid
        self._nodes: dict[str, NodeRecord] = {}  # by node name
        self._waiting: set[Key] = set()  # gated pods whose gate is not True yet
        self._failures: dict[Key, int] = {}  # reconciles failed in a row, for the retry backoff
        self._plans: Counter[tuple[Action, str]] = Counter()
        self._unmanaged: dict[Key, tuple[str, str]] = {}  # unmanaged pods, by key: (namespace, owner kind)
        self._unmanaged_counts: Counter[tuple[str, str]] = Counter()

    # --- informer side ---

    def pod_changed(self, key: Key, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None, *,
                    waiting: bool) -> int:
        """File a gated pod under its node, note whether it waits, and forget a pod uid that went away (deleted
        or replaced under the same name). Returns how many pods wait."""
        old_node, new_node = node_of(old), node_of(new)
        old_uid = uid_of(old)
        with self._lock:
            if old_node and old_node != new_node:
                self._node(old_node).pods.discard(key)
            if new_node:
                self._node(new_node).pods.add(key)
            if waiting:
                self._waiting.add(key)
            else:
                self._waiting.discard(key)
            if old_uid and (new is None or uid_of(new) != old_uid):
                self._pods.pop(old_uid, None)
            return len(self._waiting)

    def scoped_pod_changed(self, key: Key, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
        """File a pod of the `all` scope under its node, and forget a pod uid that went away."""
        old_node, new_node = node_of(old), node_of(new)
        old_uid = uid_of(old)
        with self._lock:
            if old_node and old_node != new_node:
                self._node(old_node).scoped.discard(key)
            if new_node and new is not None:
                self._node(new_node).scoped.add(key)
            elif new is None and old_node:
                self._node(old_node).scoped.discard(key)
            if old_uid and (new is None or uid_of(new) != old_uid):
                self._pods.pop(old_uid, None)

    def agent_changed(self, key: Key, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
        """File a Cilium agent pod under its node."""
        old_node, new_node = node_of(old), node_of(new)
        with self._lock:
            if old_node and old_node != new_node:
                self._node(old_node).agents.discard(key)
            if new_node and new is not None:
                self._node(new_node).agents.add(key)
            elif new is None and old_node:
                self._node(old_node).agents.discard(key)

    def agents_on(self, node: str) -> list[Key]:
        with self._lock:
            record = self._nodes.get(node)
            return list(record.agents) if record else []

    def agent_readiness(self, node: str, ready: bool, now: float) -> list[Key]:
        """Note whether the node's agent is ready (since `now`, unless it already was); returns the pods on the
        node, which the change may concern."""
        with self._lock:
            record = self._node(node)
            if not ready:
                record.ready_since = None
            elif record.ready_since is None:
                record.ready_since = now
            return list(record.pods | record.scoped)

    def node_rebooted(self, node: str, booted_at: float, ready: bool, now: float) -> list[Key]:
        """The node's boot ID changed: its pods count as started anew, and its agent as ready since `now` at the
        earliest, even if it never showed not ready. Returns the pods on the node."""
        with self._lock:
            record = self._node(node)
            record.booted_at = booted_at
            record.ready_since = now if ready else None
            return list(record.pods | record.scoped)

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

    # --- worker side, per work-queue key ---

    def failed(self, key: Key) -> int:
        """Count a failed reconcile; returns how many failed in a row."""
        with self._lock:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            return failures

    def succeeded(self, key: Key) -> None:
        with self._lock:
            self._failures.pop(key, None)

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

    def _node(self, node: str) -> NodeRecord:
        record = self._nodes.get(node)
        if record is None:
            record = self._nodes[node] = NodeRecord()
        return record
