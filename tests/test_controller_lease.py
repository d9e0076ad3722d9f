"""Leader election: the pure lease rules, and the elector against the fake API server."""

from __future__ import annotations

import threading
import time

import pytest

from tests.fakekube import FakeKube
from webhook import kubeclient
from webhook.controller.lease import LeaderElector, LeaseConfig, LeaseRecord, claim, is_held_by_other, released
from webhook.controller.rules import micro_time

RECORD = LeaseRecord(holder="a", duration=15, acquire_time="t0", renew_time="t1", transitions=3)


@pytest.mark.parametrize("record, identity, observed_at, now, expected", [
    pytest.param(RECORD, "b", 100.0, 114.9, True, id="other-holder-not-expired"),
    pytest.param(RECORD, "b", 100.0, 115.0, False, id="other-holder-expired"),
    pytest.param(RECORD, "a", 100.0, 101.0, False, id="own-lease"),
    pytest.param(LeaseRecord("", 1, None, None, 3), "b", 100.0, 100.0, False, id="released-lease"),
])
def test_is_held_by_other(record, identity, observed_at, now, expected):
    assert is_held_by_other(record, identity, observed_at, now) is expected


def test_claim_of_a_new_lease_starts_at_zero_transitions():
    spec = claim(None, "a", 15, 0.0)
    assert (spec["holderIdentity"], spec["leaseTransitions"], spec["acquireTime"]) == ("a", 0, spec["renewTime"])


def test_renewal_keeps_acquire_time_and_transitions():
    spec = claim(RECORD, "a", 15, 0.0)
    assert (spec["acquireTime"], spec["leaseTransitions"]) == ("t0", 3)
    assert spec["renewTime"] == micro_time(0.0)


def test_takeover_counts_a_transition():
    spec = claim(RECORD, "b", 15, 0.0)
    assert (spec["holderIdentity"], spec["leaseTransitions"], spec["acquireTime"]) == ("b", 4, micro_time(0.0))


def test_release_clears_the_holder():
    spec = released(RECORD, 0.0)
    assert (spec["holderIdentity"], spec["leaseDurationSeconds"], spec["leaseTransitions"]) == ("", 1, 3)


def test_config_rejects_a_renew_deadline_past_the_lease():
    with pytest.raises(ValueError, match="renew deadline"):
        LeaseConfig("ns", "l", "a", lease_duration=5, renew_deadline=6, retry_period=1)


def start_elector(client, identity: str, **timings) -> tuple[LeaderElector, threading.Event, threading.Thread,
                                                              threading.Event]:
    config = LeaseConfig("default", "guard", identity, **{"lease_duration": 2, "renew_deadline": 1.2,
                                                          "retry_period": 0.1, **timings})
    lost = threading.Event()
    elector = LeaderElector(client, config, lambda: None, lost.set)
    stop = threading.Event()
    thread = threading.Thread(target=elector.run, args=(stop,), daemon=True)
    thread.start()
    return elector, stop, thread, lost


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.slow
def test_released_lease_is_taken_over_without_waiting_for_expiry(fake_kube: FakeKube, kube_client, kubeconfig_path):
    first, stop_first, thread_first, _ = start_elector(kube_client, "first", lease_duration=30, renew_deadline=20)
    wait_until(first.is_leader)
    second_client = kubeclient.connect(kubeconfig_path, "fake", user_agent="second")
    second, stop_second, thread_second, _ = start_elector(second_client, "second", lease_duration=30,
                                                          renew_deadline=20)
    # Two reads of the held lease: the first attempt to acquire it is over, and it failed.
    wait_until(lambda: len([r for r in fake_kube.calls("GET", "/leases/guard$") if r.user_agent == "second"]) >= 2)
    assert not second.is_leader()
    assert not [r for r in fake_kube.calls("PUT", "/leases/guard$") if r.user_agent == "second"]
    stop_first.set()
    thread_first.join(timeout=5)
    started = time.monotonic()
    wait_until(second.is_leader, timeout=3)
    assert time.monotonic() - started < 3  # far less than the 30 s lease
    assert fake_kube.get("leases.coordination.k8s.io", "default", "guard")["spec"]["holderIdentity"] == "second"
    stop_second.set()
    thread_second.join(timeout=5)
    second_client.close()


@pytest.mark.slow
def test_a_leader_that_cannot_renew_stops_writing_before_its_lease_expires(fake_kube: FakeKube, kube_client):
    elector, stop, thread, lost = start_elector(kube_client, "only")
    wait_until(elector.is_leader)
    renewed_at = time.monotonic()
    fake_kube.fail("PUT", "/leases/guard$", status=500, times=None)
    wait_until(lambda: not elector.may_write(), timeout=3)
    stopped_writing = time.monotonic() - renewed_at
    assert stopped_writing < 2  # the lease duration: nobody else can hold it yet
    assert lost.wait(3) and elector.lost
    thread.join(timeout=5)
    assert not thread.is_alive()
    stop.set()
