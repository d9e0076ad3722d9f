"""The work queue: each key once in line, delayed keys handed out when due, nothing after close."""

from __future__ import annotations

import time

from webhook.controller.workqueue import WorkQueue


def test_queue_holds_a_key_once():
    queue = WorkQueue()
    queue.add(("ns", "a"))
    queue.add(("ns", "a"))
    assert queue.get(timeout=0) == ("ns", "a")
    assert queue.get(timeout=0) is None


def test_delayed_key_is_handed_out_when_due():
    queue = WorkQueue()
    queue.add_after(("ns", "late"), 0.2)
    queue.add(("ns", "now"))
    assert queue.get(timeout=0) == ("ns", "now")
    assert queue.get(timeout=0.05) is None
    assert queue.get(timeout=1) == ("ns", "late")


def test_closed_queue_hands_out_nothing():
    queue = WorkQueue()
    queue.close()
    started = time.monotonic()
    assert queue.get(timeout=5) is None
    assert time.monotonic() - started < 1
