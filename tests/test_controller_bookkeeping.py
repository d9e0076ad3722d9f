"""What the gate controller's loop remembers between reconciles, per pod uid and per node. Pure."""

from __future__ import annotations

from webhook.controller.bookkeeping import Bookkeeping
from webhook.controller.rules import Action, Plan

KEY = ("default", "p")


def test_waiting_pods_are_counted():
    books = Bookkeeping()
    assert books.pod_changed(KEY, "", "u1", waiting=True) == 1
    assert books.pod_changed(("default", "q"), "", "u2", waiting=True) == 2
    assert books.pod_changed(KEY, "u1", "u1", waiting=False) == 1
    assert books.pod_changed(("default", "q"), "u2", "", waiting=False) == 0


def test_a_deleted_pod_is_forgotten():
    books = Bookkeeping()
    books.pod_changed(KEY, "", "u1", waiting=True)
    books.mark_gone("u1")
    books.eviction_refused("u1", 50.0)
    books.pod_changed(KEY, "u1", "", waiting=False)
    assert not books.is_gone("u1")
    assert books.eviction_retry_at("u1") is None


def test_a_pod_replaced_under_the_same_name_starts_afresh():
    books = Bookkeeping()
    books.mark_evicted("u1")
    assert books.first_time("u1", Action.RECYCLE)
    books.pod_changed(KEY, "u1", "u2", waiting=True)
    assert not books.was_evicted("u1")
    assert books.first_time("u1", Action.RECYCLE)


def test_an_update_of_the_same_pod_keeps_its_record():
    books = Bookkeeping()
    books.mark_gone("u1")
    books.pod_changed(KEY, "u1", "u1", waiting=True)
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


def test_a_reboot_restarts_the_nodes_ready_clock():
    books = Bookkeeping()
    assert books.ready_since("node-a", 10.0) == 10.0
    books.node_rebooted("node-a", 95.0, True, 100.0)
    assert (books.booted_at("node-a"), books.ready_since("node-a", 200.0)) == (95.0, 100.0)
    books.node_rebooted("node-a", 295.0, False, 300.0)
    assert books.ready_since("node-a", 310.0) == 310.0  # not ready at the boot: ready from when it is seen ready


def test_a_scoped_pod_that_goes_away_is_forgotten():
    books = Bookkeeping()
    books.mark_evicted("u2")
    books.scoped_pod_changed("u2", "u2")
    assert books.was_evicted("u2")
    books.scoped_pod_changed("u2", "")
    assert not books.was_evicted("u2")


def test_an_unmanaged_pod_is_reported_once():
    books = Bookkeeping()
    assert books.first_report("u1") is True
    assert books.first_report("u1") is False
    assert books.first_report("u2") is True


def test_a_gate_this_controller_set_counts_as_set_until_the_pod_goes():
    books = Bookkeeping()
    assert not books.gate_set("u1")
    books.mark_gate_set("u1")
    assert books.gate_set("u1")
    books.pod_changed(KEY, "u1", "", waiting=False)
    assert not books.gate_set("u1")
