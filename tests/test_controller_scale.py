"""The gate controller's mechanisms at scale, against the fake API server: workers, Events off the critical path,
Retry-After, watch-cache lists, one line per outage, eviction turns. Correctness only; the figures are
bench/scale.py's.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import pytest

from tests.controller_harness import GRACE, cluster, evictions, gate_of, options, wait_until
from tests.fakekube import FakeKube
from tests.objects import endpoint, gated_pod
from webhook.controller.lease import LeaseConfig
from webhook.controller.reachability import OUTAGE_AFTER
from webhook.controller.rules import Timings
from webhook.controller.summaries import AgentSummary, EndpointSummary, NodeSummary

pytestmark = pytest.mark.slow  # the fake API server, and a controller's threads

WAITING = Timings(grace_period=60, release_after=0)  # long enough that nothing is recycled


def patches_by_pod(fake: FakeKube) -> Counter[str]:
    return Counter(a.request.path.split("/")[6] for a in fake.answers
                   if a.request.method == "PATCH" and a.request.path.endswith("/status") and a.status == 200)


def test_a_burst_is_written_by_several_workers_each_pod_once(fake_kube: FakeKube, start):
    fake_kube.write_latency = 0.01
    cluster(fake_kube, "node-a", "node-b")
    pods = [fake_kube.create(gated_pod(f"agent-{i}", node=f"node-{'ab'[i % 2]}")) for i in range(120)]
    start(options(workers=8, timings=WAITING))
    started = time.monotonic()
    for pod in pods:
        fake_kube.create(endpoint(pod))
    fake_kube.wait_for(lambda: len(patches_by_pod(fake_kube)) == 120, timeout=20)
    elapsed = time.monotonic() - started
    assert set(patches_by_pod(fake_kube).values()) == {1}  # no pod written twice
    assert all(gate_of(fake_kube, p["metadata"]["name"]) == "True" for p in pods)
    assert elapsed < 120 * 0.01  # one worker alone needs at least 1.2 s of write latency


def test_every_worker_stops_writing_once_the_lease_may_have_passed(fake_kube: FakeKube, start):
    fake_kube.write_latency = 0.01
    cluster(fake_kube)
    a = start(options("replica-a", workers=8, timings=WAITING))
    b = start(options("replica-b", workers=8, timings=WAITING), lead=False)
    fake_kube.fail("PUT", "/leases/guard$", status=500, times=None,
                   when=lambda r: r.user_agent == "cilium-startup-guard/replica-a")
    stopped_renewing = time.monotonic()
    pods = [fake_kube.create(gated_pod(f"agent-{i}")) for i in range(80)]
    for pod in pods:
        fake_kube.create(endpoint(pod))
    wait_until(lambda: b.controller.leading, timeout=10)
    fake_kube.wait_for(lambda: all(gate_of(fake_kube, p["metadata"]["name"]) == "True" for p in pods), timeout=20)
    late = [r for r in fake_kube.calls("PATCH") if r.user_agent == "cilium-startup-guard/replica-a"
            and r.at > stopped_renewing + a.controller.options.lease.renew_deadline]
    assert not late
    assert a.exit_code == 1


def test_events_never_hold_up_conditions_and_a_full_queue_drops_and_counts(fake_kube: FakeKube, start):
    fake_kube.write_latency = 0.02  # an Event costs as much as a condition
    cluster(fake_kube)
    pods = [fake_kube.create(gated_pod(f"agent-{i}")) for i in range(60)]
    replica = start(options(workers=16, event_queue=2, timings=WAITING))
    for pod in pods:
        fake_kube.create(endpoint(pod))
    fake_kube.wait_for(lambda: len(patches_by_pod(fake_kube)) == 60, timeout=20)
    def outcome(name: str) -> float:
        return replica.metric("cilium_startup_guard_events_total", outcome=name)

    wait_until(lambda: outcome("queued") + outcome("dropped") == 60)  # every condition asked for its Event
    assert outcome("dropped") > 0
    wait_until(lambda: len(fake_kube.list("events.events.k8s.io")) == outcome("queued"))


def test_failing_events_are_counted_and_logged_once(fake_kube: FakeKube, start, caplog):
    caplog.set_level(logging.INFO, logger="webhook.controller.loop")
    cluster(fake_kube)
    fake_kube.fail("POST", "/events$", status=403, times=None)  # say, a missing permission
    pods = [fake_kube.create(gated_pod(f"agent-{i}")) for i in range(10)]
    replica = start(options(timings=WAITING))
    for pod in pods:
        fake_kube.create(endpoint(pod))
    fake_kube.wait_for(lambda: all(gate_of(fake_kube, p["metadata"]["name"]) == "True" for p in pods))
    wait_until(lambda: replica.metric("cilium_startup_guard_events_total", outcome="failed") == 10)
    assert len([r for r in caplog.records if r.getMessage().startswith("could not record an event")]) == 1


def test_a_throttled_condition_is_retried_no_sooner_than_retry_after(fake_kube: FakeKube, start):
    cluster(fake_kube)
    pod = fake_kube.create(gated_pod("agent-1"))
    fake_kube.throttle("/pods/agent-1/status$", retry_after=1, times=1)
    start(options(timings=WAITING))
    fake_kube.create(endpoint(pod))
    fake_kube.wait_for(lambda: gate_of(fake_kube, "agent-1") == "True", timeout=5)
    first, second = [a for a in fake_kube.answers if a.request.path.endswith("/agent-1/status")]
    assert (first.status, second.status) == (429, 200)
    assert second.request.at - first.at >= 1.0


def test_initial_lists_come_from_the_watch_cache(fake_kube: FakeKube, start):
    cluster(fake_kube)
    start()
    lists = [r for r in fake_kube.requests if r.method == "GET" and r.query.get("watch") != "true"
             and r.path in ("/api/v1/pods", "/api/v1/nodes", "/api/v1/namespaces/kube-system/pods",
                            "/apis/cilium.io/v2/ciliumendpoints")]
    assert len(lists) == 4 and all(r.query.get("resourceVersion") == "0" and "limit" not in r.query for r in lists)


def test_refused_watch_cache_lists_fall_back_to_pages_and_the_controller_works(fake_kube: FakeKube, start):
    fake_kube.refuse_cached_lists(504)
    cluster(fake_kube)
    pod = fake_kube.create(gated_pod("agent-1"))
    fake_kube.create(endpoint(pod))
    start()
    fake_kube.wait_for(lambda: gate_of(fake_kube, "agent-1") == "True")
    assert any(r.query.get("limit") for r in fake_kube.calls("GET", "^/api/v1/pods$"))


def test_an_outage_is_one_log_line_and_its_end_another(fake_kube: FakeKube, start, caplog):
    caplog.set_level(logging.INFO)
    cluster(fake_kube)
    lease = LeaseConfig("default", "guard", "replica-a", lease_duration=10, renew_deadline=6, retry_period=0.1)
    start(options(timings=WAITING, lease=lease))  # a lease that outlasts the outage
    fake_kube.restart(down_for=2 * OUTAGE_AFTER)
    pod = fake_kube.create(gated_pod("agent-after"))
    fake_kube.create(endpoint(pod))
    fake_kube.wait_for(lambda: gate_of(fake_kube, "agent-after") == "True", timeout=10)
    down = [r for r in caplog.records if r.getMessage().startswith("cannot reach the API server at")]
    back = [r for r in caplog.records if r.getMessage().endswith("answers again")]
    assert len(down) == 1 and len(back) == 1
    assert not [r for r in caplog.records if r.getMessage().startswith("Retrying")]  # urllib3 retries nothing
    assert not [r for r in caplog.records if r.getMessage() in ("API call failed; will retry",
                                                                "list or watch failed; retrying")
                and getattr(r, "status", None) == 0]


def test_the_caches_keep_summaries_indexed_by_node(fake_kube: FakeKube, start):
    cluster(fake_kube, "node-a", "node-b")
    pod = fake_kube.create(gated_pod("agent-1", node="node-b"))
    fake_kube.create(endpoint(pod))
    replica = start(options(timings=WAITING))
    c = replica.controller.caches
    assert isinstance(c.nodes.get(("", "node-a")), NodeSummary)
    assert c.agents.by_index("node", "node-b") == [("kube-system", "cilium-node-b")]
    assert isinstance(c.agents.get(("kube-system", "cilium-node-b")), AgentSummary)
    assert c.pods.by_index("node", "node-b") == [("default", "agent-1")]
    assert isinstance(c.endpoints.get(("default", "agent-1")), EndpointSummary)


def test_a_waiting_pod_that_becomes_managed_leaves_the_line_and_the_next_gets_its_turn(fake_kube: FakeKube, start):
    cluster(fake_kube)
    pods = [fake_kube.create(gated_pod(f"agent-{i}")) for i in range(4)]
    replica = start(options(recycle_rate=1, timings=Timings(grace_period=GRACE, release_after=0)))  # burst one
    fake_kube.wait_for(lambda: evictions(fake_kube))
    wait_until(lambda: replica.metric("cilium_startup_guard_recycle_waiting") == 3)
    waiting = [p for p in pods if fake_kube.get("pods", "default", p["metadata"]["name"]) is not None]
    fake_kube.create(endpoint(waiting[0]))  # Cilium manages the first in line after all
    wait_until(lambda: replica.metric("cilium_startup_guard_recycle_waiting") == 2)
    fake_kube.wait_for(lambda: gate_of(fake_kube, waiting[0]["metadata"]["name"]) == "True")
    assert len(evictions(fake_kube)) == 1
