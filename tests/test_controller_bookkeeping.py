"""What the gate controller's loop remembers between reconciles, per pod uid, per node and per queue key. Pure."""

from __future__ import annotations

from typing import Any

from tests.objects import agent_pod, gated_pod
from webhook.controller.bookkeeping import Bookkeeping
from webhook.controller.rules import Action, Plan

KEY = ("default", "p")


def pod(uid: str, node: str = "node-a") -> dict[str, Any]:
    raw = gated_pod("p", node=node)
    raw["metadata"]["uid"] = uid
    return raw


def test_a_gated_pod_is_filed_under_its_node_and_moves_with_it():
    books = Bookkeeping()
    books.pod_changed(KEY, None, pod("u1"), waiting=True)
    assert books.agent_readiness("node-a", True, 0.0) == [KEY]
    books.pod_changed(KEY, pod("u1"), pod("u1", node="node-b"), waiting=True)
    assert books.agent_readiness("node-a", True, 0.0) == []
    assert books.agent_readiness("node-b", True, 0.0) == [KEY]


def test_waiting_pods_are_counted():
    books = Bookkeeping()
    assert books.pod_changed(KEY, None, pod("u1"), waiting=True) == 1
    assert books.pod_changed(("default", "q"), None, pod("u2"), waiting=True) == 2
    assert books.pod_changed(KEY, pod("u1"), pod("u1"), waiting=False) == 1
    assert books.pod_changed(("default", "q"), pod("u2"), None, waiting=False) == 0


def test_a_deleted_pod_is_forgotten():
    books = Bookkeeping()
    books.pod_changed(KEY, None, pod("u1"), waiting=True)
    books.mark_gone("u1")
    books.eviction_refused("u1", 50.0)
    books.pod_changed(KEY, pod("u1"), None, waiting=False)
    assert not books.is_gone("u1")
    assert books.eviction_retry_at("u1") is None


def test_a_pod_replaced_under_the_same_name_starts_afresh():
    books = Bookkeeping()
    books.mark_evicted("u1")
    assert books.first_time("u1", Action.RECYCLE)
    books.pod_changed(KEY, pod("u1"), pod("u2"), waiting=True)
    assert not books.was_evicted("u1")
    assert books.first_time("u1", Action.RECYCLE)


def test_an_update_of_the_same_pod_keeps_its_record():
    books = Bookkeeping()
    books.mark_gone("u1")
    books.pod_changed(KEY, pod("u1"), pod("u1"), waiting=True)
    assert books.is_gone("u1")


def test_an_eviction_clears_its_refusal():
    books = Bookkeeping()
    books.eviction_refused("u1", 50.0)
    assert books.eviction_retry_at("u1") == 50.0
    books.mark_evicted("u1")
    assert books.was_evicted("u1")
    assert books.eviction_retry_at("u1") is None


def test_dry_run_counts_each_action_once_per_pod():
    books = Bookkeeping()
    assert books.first_time("u1", Action.RECYCLE)
    assert not books.first_time("u1", Action.RECYCLE)
    assert books.first_time("u1", Action.SET_CONDITION)
    assert books.first_time("u2", Action.RECYCLE)


def test_agent_ready_since_is_the_first_sighting_and_resets_when_not_ready():
    books = Bookkeeping()
    books.agent_readiness("node-a", True, 10.0)
    books.agent_readiness("node-a", True, 20.0)
    assert books.ready_since("node-a", 30.0) == 10.0
    books.agent_readiness("node-a", False, 40.0)
    assert books.ready_since("node-a", 50.0) == 50.0


def test_agents_are_filed_under_their_node_until_deleted():
    books = Bookkeeping()
    agent = agent_pod("node-a")
    key = ("kube-system", "cilium-node-a")
    books.agent_changed(key, None, agent)
    assert books.agents_on("node-a") == [key]
    books.agent_changed(key, agent, None)
    assert books.agents_on("node-a") == []
    assert books.agents_on("node-unknown") == []


def test_failures_count_up_until_a_success():
    books = Bookkeeping()
    assert [books.failed(KEY) for _ in range(3)] == [1, 2, 3]
    books.succeeded(KEY)
    assert books.failed(KEY) == 1


def test_plans_are_counted_by_action_and_reason():
    books = Bookkeeping()
    books.planned(Plan(Action.WAIT, "grace-period", 5.0))
    books.planned(Plan(Action.WAIT, "grace-period", 9.0))
    books.planned(Plan(Action.WAIT, "not-ready"))
    assert books.plans(Action.WAIT, "grace-period") == 2
    assert books.plans(Action.RECYCLE, "unmanaged") == 0


def test_unmanaged_pods_are_counted_by_namespace_and_owner_kind():
    books = Bookkeeping()
    assert books.unmanaged(KEY, ("default", "ReplicaSet")) == [(("default", "ReplicaSet"), 1)]
    assert books.unmanaged(("default", "q"), ("default", "ReplicaSet")) == [(("default", "ReplicaSet"), 2)]
    assert books.unmanaged(KEY, ("default", "ReplicaSet")) == []  # unchanged
    assert books.unmanaged(KEY, None) == [(("default", "ReplicaSet"), 1)]
    assert books.unmanaged(("default", "q"), ("default", "none")) == [(("default", "ReplicaSet"), 0),
                                                                      (("default", "none"), 1)]


def test_a_reboot_returns_every_pod_on_the_node_and_restarts_its_ready_clock():
    books = Bookkeeping()
    books.pod_changed(KEY, None, pod("u1"), waiting=True)
    books.scoped_pod_changed(("shop", "web"), None, pod("u2"))
    books.scoped_pod_changed(KEY, None, pod("u1"))  # a gated pod is in the scope's cache too
    assert books.ready_since("node-a", 10.0) == 10.0
    assert sorted(books.node_rebooted("node-a", 95.0, True, 100.0)) == [KEY, ("shop", "web")]
    assert (books.booted_at("node-a"), books.ready_since("node-a", 200.0)) == (95.0, 100.0)
    books.node_rebooted("node-a", 295.0, False, 300.0)
    assert books.ready_since("node-a", 310.0) == 310.0  # not ready at the boot: ready from when it is seen ready


def test_a_scoped_pod_leaving_its_node_or_the_cache_is_unfiled():
    books = Bookkeeping()
    books.scoped_pod_changed(("shop", "web"), None, pod("u2"))
    books.scoped_pod_changed(("shop", "web"), pod("u2"), pod("u2", node="node-b"))
    assert books.agent_readiness("node-a", True, 0.0) == []
    books.scoped_pod_changed(("shop", "web"), pod("u2", node="node-b"), None)
    assert books.agent_readiness("node-b", True, 0.0) == []


def test_an_unmanaged_pod_is_reported_once():
    books = Bookkeeping()
    assert books.first_report("u1") is True
    assert books.first_report("u1") is False
    assert books.first_report("u2") is True
