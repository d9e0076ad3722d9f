"""Events off the critical path: deduplicated like client-go's correlator, bounded, sent by a background thread."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from webhook.controller.eventsender import Correlator, EventSender, Verdict

POD = ("uid-1", "CiliumManaged")


@pytest.mark.parametrize("first, second, elapsed, duplicate", [
    pytest.param(POD, POD, 1.0, True, id="same-object-and-reason-within-the-window"),
    pytest.param(POD, POD, 600.0, False, id="same-after-the-window"),
    pytest.param(POD, ("uid-1", "GateReleased"), 1.0, False, id="other-reason"),
    pytest.param(POD, ("uid-2", "CiliumManaged"), 1.0, False, id="other-object"),
])
def test_correlator_deduplicates_per_object_and_reason(first, second, elapsed, duplicate):
    correlator = Correlator(window=600.0)
    assert correlator.is_duplicate(first, 100.0) is False
    assert correlator.is_duplicate(second, 100.0 + elapsed) is duplicate


def test_correlator_forgets_the_least_recent_key_beyond_its_size():
    correlator = Correlator(size=2)
    for uid in ("a", "b", "c"):
        correlator.is_duplicate((uid, "R"), 0.0)
    assert correlator.is_duplicate(("a", "R"), 1.0) is False  # forgotten, so recorded again
    assert correlator.is_duplicate(("c", "R"), 1.0) is True


def test_record_queues_then_deduplicates_without_sending_in_the_callers_thread():
    sent: list[dict[str, Any]] = []
    sender = EventSender(sent.append)
    assert sender.record(POD, {"n": 1}) is Verdict.QUEUED
    assert sender.record(POD, {"n": 2}) is Verdict.DUPLICATE
    assert sent == [] and len(sender) == 1  # nothing is sent until the background thread runs


def test_a_full_queue_drops_and_counts_and_forgets_the_key():
    verdicts: list[Verdict] = []
    sender = EventSender(lambda event: None, capacity=2, on_verdict=verdicts.append)
    for uid in ("a", "b", "c"):
        sender.record((uid, "R"), {"uid": uid})
    assert verdicts == [Verdict.QUEUED, Verdict.QUEUED, Verdict.DROPPED]
    assert len(sender) == 2


def test_the_background_thread_sends_each_event_once_and_counts_failures():
    sent: list[str] = []
    failures: list[Exception] = []

    def send(event: dict[str, Any]) -> None:
        if event["uid"] == "bad":
            raise RuntimeError("422")
        sent.append(event["uid"])

    sender = EventSender(send, on_failure=failures.append)
    stop = threading.Event()
    thread = threading.Thread(target=sender.run, args=(stop,), daemon=True)
    thread.start()
    for uid in ("a", "bad", "b"):
        sender.record((uid, "R"), {"uid": uid})
    assert sender.flush(timeout=5)
    sender.close()
    stop.set()
    thread.join(timeout=5)
    assert sent == ["a", "b"] and sender.sent == 2 and sender.failed == 1 and len(failures) == 1
    assert not thread.is_alive()


def test_a_replica_that_may_no_longer_write_drops_its_queued_events():
    verdicts: list[Verdict] = []
    sent: list[dict[str, Any]] = []
    sender = EventSender(sent.append, may_send=lambda: False, on_verdict=verdicts.append)
    sender.record(POD, {"n": 1})
    stop = threading.Event()
    thread = threading.Thread(target=sender.run, args=(stop,), daemon=True)
    thread.start()
    assert sender.flush(timeout=5)
    sender.close()
    thread.join(timeout=5)
    assert sent == [] and verdicts == [Verdict.QUEUED, Verdict.DROPPED]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.01  # every look at the clock takes a little time
        return self.now


def test_an_event_waits_while_the_controller_is_busy_and_is_sent_once_it_is_not():
    busy = [True]
    sent: list[dict[str, Any]] = []
    sender = EventSender(sent.append, defer_while=lambda: busy[0], max_defer=60.0)
    stop = threading.Event()
    thread = threading.Thread(target=sender.run, args=(stop,), daemon=True)
    thread.start()
    sender.record(POD, {"n": 1})
    assert not sender.flush(timeout=0.1) and sent == []  # held back while busy
    busy[0] = False
    assert sender.flush(timeout=5) and sent == [{"n": 1}]
    sender.close()
    thread.join(timeout=5)


def test_an_event_is_not_held_back_longer_than_the_most_it_may_wait():
    sent: list[dict[str, Any]] = []
    sender = EventSender(sent.append, defer_while=lambda: True, max_defer=0.05, clock=Clock())
    stop = threading.Event()
    thread = threading.Thread(target=sender.run, args=(stop,), daemon=True)
    thread.start()
    sender.record(POD, {"n": 1})
    assert sender.flush(timeout=5) and sent == [{"n": 1}]
    sender.close()
    thread.join(timeout=5)
