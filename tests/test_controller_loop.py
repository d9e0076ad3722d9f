"""The gate controller's loop end to end: the real kubernetes client against the fake API server.

Timings are shrunk (grace 0.4 s, lease 2 s) so the whole file runs in seconds; the rules themselves are tested
without any I/O in test_controller_rules.py. A test that expects nothing to happen waits for the worker to have
planned it (a positive signal a stalled worker would not give) rather than sleeping.
"""

from __future__ import annotations

import logging
import time

import pytest

from tests.controller_harness import (
    GRACE,
    cluster,
    events,
    evictions,
    gate_of,
    lease_reads_by,
    logged,
    options,
    planned,
    wait_until,
)
from tests.fakekube import FakeKube, rbac_of, writes
from tests.objects import CILIUM_NAMESPACE, CONTROLLER_RBAC, GATE, endpoint, gated_pod, node, stamp
from webhook.controller.lease import LeaseConfig
from webhook.controller.rules import Action, Timings

pytestmark = pytest.mark.slow  # the fake API server, and a controller's threads

# --- setting the gate ---


def test_endpoint_appearing_sets_the_condition_within_a_second(fake_kube: FakeKube, start, record_property):
    cluster(fake_kube)
    pods = [fake_kube.create(gated_pod(f"agent-{i}")) for i in range(10)]
    replica = start(options(timings=Timings(grace_period=60, release_after=0)))
    planned(replica, Action.WAIT, "grace-period", times=10)
    assert all(gate_of(fake_kube, p["metadata"]["name"]) is None for p in pods)
    latencies = []
    for pod in pods:  # one at a time: each is the time from one endpoint's creation to its pod's condition
        name = pod["metadata"]["name"]
        created = time.monotonic()
        fake_kube.create(endpoint(pod))
        fake_kube.wait_for(lambda name=name: gate_of(fake_kube, name) == "True", timeout=2)
        latencies.append(time.monotonic() - created)
    latencies.sort()
    summary = {"min_ms": round(latencies[0] * 1000, 1), "median_ms": round(latencies[len(latencies) // 2] * 1000, 1),
               "max_ms": round(latencies[-1] * 1000, 1)}
    record_property("endpoint_to_condition", summary)
    print(f"\nendpoint created -> gate condition True, {len(latencies)} pods: {summary}")
    assert latencies[-1] < 1.0  # "within a second or two" is the promise; no poll interval is involved
    wait_until(lambda: replica.metric("cilium_startup_guard_gate_conditions_set_total", dry_run="false") == 10)


def test_endpoint_present_at_start_sets_the_condition(fake_kube: FakeKube, start):
    cluster(fake_kube)
    pod = fake_kube.create(gated_pod("agent-1"))
    fake_kube.create(endpoint(pod))
    start()
    fake_kube.wait_for(lambda: gate_of(fake_kube, "agent-1") == "True")
    [event] = wait_until(lambda: events(fake_kube, "CiliumManaged"))
    assert (event["type"], event["regarding"]["uid"]) == ("Normal", pod["metadata"]["uid"])


def test_condition_patch_keeps_the_kubelets_conditions(fake_kube: FakeKube, start):
    cluster(fake_kube)
    pod = fake_kube.create(gated_pod("agent-1"))
    fake_kube.create(endpoint(pod))
    start()
    fake_kube.wait_for(lambda: gate_of(fake_kube, "agent-1") == "True")
    conditions = fake_kube.get("pods", "default", "agent-1")["status"]["conditions"]
    assert {c["type"] for c in conditions} == {"Ready", "PodScheduled", GATE}
    [patch] = fake_kube.calls("PATCH", "/pods/agent-1/status$")
    assert patch.content_type == "application/strategic-merge-patch+json"
    assert patch.body["metadata"]["uid"] == pod["metadata"]["uid"]


def test_pod_gone_or_replaced_answer_is_dropped_not_retried(fake_kube: FakeKube, start, caplog):
    caplog.set_level(logging.INFO, logger="webhook.controller")
    cluster(fake_kube)
    pod = fake_kube.create(gated_pod("agent-1"))
    fake_kube.fail("PATCH", "/pods/agent-1/status$", status=422, times=None)
    start()
    fake_kube.create(endpoint(pod))
    wait_until(lambda: logged(caplog, "pod gone or replaced; dropped", "agent-1"))
    # The worker has moved on to another pod, so it is done with this one: a retry would have been logged.
    other = fake_kube.create(gated_pod("agent-2"))
    fake_kube.create(endpoint(other))
    fake_kube.wait_for(lambda: gate_of(fake_kube, "agent-2") == "True")
    assert not logged(caplog, "API call failed; will retry", "agent-1")
    assert len(fake_kube.calls("PATCH", "/pods/agent-1/status$")) == 1


def test_end_to_end_pod_started_before_cilium_waits_then_is_set(fake_kube: FakeKube, start):
    # The problem this project exists for: a DaemonSet pod tolerates the Cilium taint and runs before the
    # agent is ready. It must stay gated (unready) and untouched until Cilium manages it.
    cluster(fake_kube, tainted=True, agent_ready=False)
    pod = fake_kube.create(gated_pod("ebs-csi-node-x"))
    replica = start()
    planned(replica, Action.WAIT, "not-ready")
    assert gate_of(fake_kube, "ebs-csi-node-x") is None and not evictions(fake_kube)
    assert replica.metric("cilium_startup_guard_pods_waiting") == 1
    fake_kube.modify("pods", CILIUM_NAMESPACE, "cilium-node-a",
                     lambda a: a["status"].update(conditions=[{"type": "Ready", "status": "True"}]))
    fake_kube.modify("nodes", "", "node-a", lambda n: n["spec"].update(taints=[]))
    fake_kube.create(endpoint(pod))
    fake_kube.wait_for(lambda: gate_of(fake_kube, "ebs-csi-node-x") == "True")
    assert not evictions(fake_kube)
    wait_until(lambda: replica.metric("cilium_startup_guard_pods_waiting") == 0)
    wait_until(lambda: replica.metric("cilium_startup_guard_gate_wait_seconds_count", dry_run="false") == 1)


# --- recycling ---


def test_unmanaged_pod_after_grace_with_agent_ready_is_evicted_once(fake_kube: FakeKube, start):
    fake_kube.graceful_pod_deletion = True  # the evicted pod keeps running, IP and all, while it terminates
    cluster(fake_kube)
    pod = fake_kube.create(gated_pod("agent-1"))
    replica = start()
    fake_kube.wait_for(lambda: evictions(fake_kube))
    planned(replica, Action.SKIP, "terminating")  # it has seen the pod on its way out, and left it alone
    [eviction] = evictions(fake_kube)
    assert eviction.body["deleteOptions"]["preconditions"]["uid"] == pod["metadata"]["uid"]
    assert fake_kube.get("pods", "default", "agent-1")["metadata"]["deletionTimestamp"]
    [event] = events(fake_kube, "UnmanagedPodRecycled")
    assert event["type"] == "Warning"
    assert replica.metric("cilium_startup_guard_pods_recycled_total", dry_run="false") == 1


def test_pod_is_not_evicted_before_the_grace_period(fake_kube: FakeKube, start):
    cluster(fake_kube)
    fake_kube.create(gated_pod("agent-1"))
    replica = start(options(timings=Timings(grace_period=30, release_after=0)))
    planned(replica, Action.WAIT, "grace-period")
    assert not evictions(fake_kube)


def test_pod_on_a_node_whose_agent_is_not_ready_is_not_evicted(fake_kube: FakeKube, start):
    cluster(fake_kube, agent_ready=False)
    fake_kube.create(gated_pod("agent-1"))
    replica = start()
    planned(replica, Action.WAIT, "not-ready")
    assert not evictions(fake_kube)


def test_pod_on_a_node_that_still_has_the_cilium_taint_is_not_evicted(fake_kube: FakeKube, start):
    cluster(fake_kube, tainted=True)
    fake_kube.create(gated_pod("agent-1"))
    replica = start()
    planned(replica, Action.WAIT, "not-ready")
    assert not evictions(fake_kube)


def test_pod_on_a_node_without_a_cilium_agent_is_not_evicted(fake_kube: FakeKube, start):
    fake_kube.create(node("fargate-ip-10-0-0-1"))
    fake_kube.create(gated_pod("agent-1", node="fargate-ip-10-0-0-1"))
    replica = start()
    planned(replica, Action.WAIT, "no-agent")
    assert not evictions(fake_kube)


def test_pod_deleted_before_its_eviction_is_dropped(fake_kube: FakeKube, start, caplog):
    caplog.set_level(logging.INFO, logger="webhook.controller")
    cluster(fake_kube)
    fake_kube.create(gated_pod("agent-1"))
    fake_kube.fail("GET", "/namespaces/default/pods/agent-1$", status=404, times=None)
    start()
    wait_until(lambda: logged(caplog, "pod gone before recycling", "agent-1"))
    # The worker has moved on to another pod, so it is done with this one: a retry would have been logged.
    other = fake_kube.create(gated_pod("agent-2"))
    fake_kube.create(endpoint(other))
    fake_kube.wait_for(lambda: gate_of(fake_kube, "agent-2") == "True")
    assert not logged(caplog, "API call failed; will retry", "agent-1")
    assert not evictions(fake_kube)
    assert len(fake_kube.calls("GET", "/pods/agent-1$")) == 1


def test_eviction_refused_by_a_budget_is_retried_later_and_never_deleted(fake_kube: FakeKube, start):
    cluster(fake_kube)
    fake_kube.create(gated_pod("agent-1"))
    fake_kube.block_evictions("default")
    replica = start()
    fake_kube.wait_for(lambda: len(evictions(fake_kube)) >= 2, timeout=5)
    first, second = evictions(fake_kube)[:2]
    assert second.at - first.at >= 0.6  # the retry floor in options()
    assert replica.metric("cilium_startup_guard_evictions_refused_total") >= 1
    assert not fake_kube.calls("DELETE")
    assert fake_kube.get("pods", "default", "agent-1") is not None
    fake_kube.allow_evictions()
    fake_kube.wait_for(lambda: fake_kube.get("pods", "default", "agent-1") is None)
    assert not fake_kube.calls("DELETE")


def test_refused_eviction_waits_at_least_the_retry_floor(fake_kube: FakeKube, start):
    cluster(fake_kube)
    fake_kube.create(gated_pod("agent-1"))
    fake_kube.block_evictions("default", retry_after=1)
    start(options(eviction_retry_floor=0.3))
    fake_kube.wait_for(lambda: evictions(fake_kube))
    first = time.monotonic()
    fake_kube.wait_for(lambda: len(evictions(fake_kube)) >= 2, timeout=4)
    assert time.monotonic() - first >= 0.9  # Retry-After (1 s) is longer than the floor and wins


def test_recycling_rate_limit_holds_without_reads_or_a_log_line_per_waiting_pod(fake_kube: FakeKube, start, caplog):
    caplog.set_level(logging.INFO, logger="webhook.controller.loop")
    cluster(fake_kube)
    for i in range(5):
        fake_kube.create(gated_pod(f"agent-{i}"))
    replica = start(options(recycle_rate=2))  # two a minute, burst two
    fake_kube.wait_for(lambda: len(evictions(fake_kube)) >= 2)
    # The other three wait in line for a token, due in about 30 s; they were not read, and the line logged once.
    wait_until(lambda: replica.metric("cilium_startup_guard_recycle_waiting") == 3)
    assert len(logged(caplog, "recycling waits for the rate limit; pods wait in line, one is woken per token")) == 1
    assert len(fake_kube.calls("GET", "/namespaces/default/pods/agent-")) == 2
    assert len(evictions(fake_kube)) == 2
    assert len(fake_kube.list("pods", "default")) == 3


# --- robust watching ---


def test_dropped_watches_and_410_gone_recover_with_no_missed_pod(fake_kube: FakeKube, start):
    cluster(fake_kube)
    replica = start()
    listed = replica.controller.caches.pods.lists
    fake_kube.fail("GET", "^/api/v1/pods$", status=503, times=2, when=lambda r: r.query.get("watch") == "true")
    fake_kube.drop_watches()
    pod = fake_kube.create(gated_pod("born-while-disconnected"))
    fake_kube.create(endpoint(pod))
    fake_kube.compact()  # the resourceVersion the informer holds is now too old: 410 on the next watch
    fake_kube.wait_for(lambda: gate_of(fake_kube, "born-while-disconnected") == "True", timeout=5)
    assert replica.controller.caches.pods.lists > listed


def test_periodic_resync_lists_again(fake_kube: FakeKube, start):
    cluster(fake_kube)
    replica = start(options(relist_period=0.3))
    wait_until(lambda: replica.controller.caches.pods.lists >= 3, timeout=5)


# --- high availability ---


def test_two_controllers_elect_one_leader_which_alone_writes(fake_kube: FakeKube, start):
    cluster(fake_kube)
    a = start(options("replica-a"))
    b = start(options("replica-b"), lead=False)
    wait_until(lambda: lease_reads_by(fake_kube, "replica-b") >= 2)  # b has tried, and found the lease held
    assert a.controller.leading and not b.controller.leading
    pod = fake_kube.create(gated_pod("agent-1"))
    fake_kube.create(endpoint(pod))
    fake_kube.wait_for(lambda: gate_of(fake_kube, "agent-1") == "True")
    reads = lease_reads_by(fake_kube, "replica-b")
    wait_until(lambda: lease_reads_by(fake_kube, "replica-b") >= reads + 2)  # b is alive, and still standing by
    assert not b.controller.leading
    patchers = {r.user_agent for r in fake_kube.calls("PATCH")}
    assert patchers == {"cilium-startup-guard/replica-a"}
    assert (a.metric("cilium_startup_guard_leader"), b.metric("cilium_startup_guard_leader")) == (1, 0)


def test_the_other_controller_takes_over_when_the_leader_stops_renewing(fake_kube: FakeKube, start):
    cluster(fake_kube)
    a = start(options("replica-a"))
    b = start(options("replica-b"), lead=False)
    fake_kube.fail("PUT", "/leases/guard$", status=500, times=None,
                   when=lambda r: r.user_agent == "cilium-startup-guard/replica-a")
    a.thread.join(timeout=5)
    assert a.exit_code == 1  # stopped writing, exits to be restarted
    wait_until(lambda: b.controller.leading, timeout=5)
    pod = fake_kube.create(gated_pod("agent-2"))
    fake_kube.create(endpoint(pod))
    fake_kube.wait_for(lambda: gate_of(fake_kube, "agent-2") == "True")
    assert {r.user_agent for r in fake_kube.calls("PATCH")} == {"cilium-startup-guard/replica-b"}


def test_a_stopped_leader_releases_the_lease_for_a_quick_takeover(fake_kube: FakeKube, start):
    cluster(fake_kube)
    a = start(options("replica-a", lease=LeaseConfig("default", "guard", "replica-a", lease_duration=30,
                                                      renew_deadline=20, retry_period=0.1)))
    b = start(options("replica-b", lease=LeaseConfig("default", "guard", "replica-b", lease_duration=30,
                                                      renew_deadline=20, retry_period=0.1)), lead=False)
    assert a.stop() == 0
    wait_until(lambda: b.controller.leading, timeout=3)  # not the 30 s lease


# --- dry run ---


def test_dry_run_changes_nothing_and_counts_once(fake_kube: FakeKube, start):
    cluster(fake_kube)
    managed = fake_kube.create(gated_pod("managed"))
    fake_kube.create(endpoint(managed))
    fake_kube.create(gated_pod("unmanaged"))
    before = len(writes(fake_kube))
    replica = start(options(dry_run=True, lease=None))
    wait_until(lambda: replica.metric("cilium_startup_guard_pods_recycled_total", dry_run="true") == 1)
    wait_until(lambda: replica.metric("cilium_startup_guard_gate_conditions_set_total", dry_run="true") == 1)
    books = replica.controller.books
    recycles, sets = books.plans(Action.RECYCLE, "unmanaged"), books.plans(Action.SET_CONDITION, "endpoint-ready")
    for name in ("managed", "unmanaged"):  # a change the controller reads makes the worker plan both again
        fake_kube.modify("pods", "default", name, lambda p: p["status"].update(startTime=stamp(time.time() - 3600)))
    planned(replica, Action.RECYCLE, "unmanaged", recycles + 1)
    planned(replica, Action.SET_CONDITION, "endpoint-ready", sets + 1)
    assert len(writes(fake_kube)) == before
    assert not fake_kube.calls(path="/leases")
    assert replica.metric("cilium_startup_guard_pods_recycled_total", dry_run="true") == 1
    assert replica.metric("cilium_startup_guard_gate_conditions_set_total", dry_run="true") == 1
    assert gate_of(fake_kube, "managed") is None


# --- fail-safes ---


def test_without_the_ciliumendpoints_resource_gates_are_released_after_grace_and_nothing_is_evicted(
        fake_kube: FakeKube, start):
    fake_kube.remove_resource("ciliumendpoints.cilium.io")
    cluster(fake_kube)
    fake_kube.create(gated_pod("agent-1"))
    replica = start()
    fake_kube.wait_for(lambda: gate_of(fake_kube, "agent-1") == "True")
    assert not evictions(fake_kube)
    [event] = wait_until(lambda: events(fake_kube, "GateReleased"))
    assert event["type"] == "Warning"
    assert replica.metric("cilium_startup_guard_gates_released_total", reason="no-cilium-endpoints",
                          dry_run="false") == 1
    assert replica.metric("cilium_startup_guard_cilium_endpoints_available") == 0


def test_the_ciliumendpoints_resource_appearing_restores_normal_behaviour(fake_kube: FakeKube, start):
    resource = fake_kube.remove_resource("ciliumendpoints.cilium.io")
    cluster(fake_kube)
    replica = start()
    fake_kube.add_resource(resource)
    wait_until(lambda: replica.metric("cilium_startup_guard_cilium_endpoints_available") == 1)
    pod = fake_kube.create(gated_pod("agent-1"))
    fake_kube.create(endpoint(pod))
    fake_kube.wait_for(lambda: gate_of(fake_kube, "agent-1") == "True")
    wait_until(lambda: events(fake_kube, "CiliumManaged"))
    assert not events(fake_kube, "GateReleased")


def test_maximum_wait_releases_the_gate_with_a_warning(fake_kube: FakeKube, start):
    cluster(fake_kube, agent_ready=False)
    fake_kube.create(gated_pod("agent-1"))
    replica = start(options(timings=Timings(grace_period=GRACE, release_after=1.0)))
    fake_kube.wait_for(lambda: gate_of(fake_kube, "agent-1") == "True", timeout=4)
    [event] = wait_until(lambda: events(fake_kube, "GateReleased"))
    assert "--release-after" in event["note"]
    assert replica.metric("cilium_startup_guard_gates_released_total", reason="max-wait", dry_run="false") == 1


def test_host_network_pod_gate_is_released_not_recycled(fake_kube: FakeKube, start):
    cluster(fake_kube)
    fake_kube.create(gated_pod("agent-1", host_network=True))
    start()
    fake_kube.wait_for(lambda: gate_of(fake_kube, "agent-1") == "True")
    assert not evictions(fake_kube)


# --- probes ---


def test_controller_is_ready_once_synced_and_healthy_while_its_threads_run(fake_kube: FakeKube, start):
    cluster(fake_kube)
    replica = start()  # waits for is_ready()
    assert replica.controller.is_healthy()
    assert replica.stop() == 0
    assert not replica.controller.is_healthy()


# --- RBAC: the calls made are exactly the ones docs/controller.md documents ---

# Discovery, which the built-in system:discovery ClusterRole grants every authenticated user.
DISCOVERY = {("nonResourceURL", "/apis/cilium.io/v2", "get")}


def test_api_calls_are_exactly_the_documented_rbac(fake_kube: FakeKube, start):
    fake_kube.graceful_pod_deletion = True
    cluster(fake_kube)
    managed = fake_kube.create(gated_pod("managed"))
    fake_kube.create(endpoint(managed))
    fake_kube.create(gated_pod("unmanaged"))
    replica = start()
    fake_kube.wait_for(lambda: gate_of(fake_kube, "managed") == "True" and evictions(fake_kube))
    wait_until(lambda: len(fake_kube.list("events.events.k8s.io")) == 2)
    assert replica.stop() == 0  # releases the lease: an update
    used = {rbac_of(r) for r in fake_kube.requests}
    assert used - DISCOVERY == CONTROLLER_RBAC
