"""The work queue: client-go's semantics for several workers, per-key backoff that honours Retry-After."""

from __future__ import annotations

import threading
import time

import pytest

from webhook.controller.workqueue import RateLimitingQueue

# --- RateLimitingQueue: client-go's semantics, for several workers ---

A, B = ("ns", "a"), ("ns", "b")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_key_being_processed_is_not_handed_to_a_second_worker():
    queue = RateLimitingQueue()
    queue.add(A)
    assert queue.get(timeout=0) == A
    queue.add(A)  # an event while the first worker is busy with it
    assert queue.get(timeout=0) is None


def test_a_key_added_while_processing_is_processed_again_after_done():
    queue = RateLimitingQueue()
    queue.add(A)
    assert queue.get(timeout=0) == A
    queue.add(A)
    queue.add(A)
    queue.done(A)
    assert queue.get(timeout=0) == A  # once, however often it was added meanwhile
    queue.done(A)
    assert queue.get(timeout=0) is None


def test_a_key_done_without_being_added_again_is_not_requeued():
    queue = RateLimitingQueue()
    queue.add(A)
    queue.get(timeout=0)
    queue.done(A)
    assert queue.get(timeout=0) is None


def test_keys_are_handed_out_in_the_order_they_were_added():
    queue = RateLimitingQueue()
    for key in (B, A, B):
        queue.add(key)
    assert [queue.get(timeout=0), queue.get(timeout=0), queue.get(timeout=0)] == [B, A, None]


@pytest.mark.parametrize("failures, retry_after, expected", [
    pytest.param(0, None, 0.5, id="first-failure"),
    pytest.param(3, None, 4.0, id="doubles"),
    pytest.param(10, None, 30.0, id="capped"),
    pytest.param(0, 5.0, 5.0, id="retry-after-wins"),
    pytest.param(7, 5.0, 30.0, id="backoff-wins"),
    pytest.param(5000, None, 30.0, id="no-overflow"),
])
def test_rate_limited_requeue_backs_off_exponentially_and_honours_retry_after(failures, retry_after, expected):
    queue = RateLimitingQueue(backoff_initial=0.5, backoff_max=30.0, clock=FakeClock())
    for _ in range(failures):
        queue.add_rate_limited(A)
    assert queue.add_rate_limited(A, retry_after) == expected


def test_a_rate_limited_key_is_not_handed_out_before_its_delay():
    clock = FakeClock()
    queue = RateLimitingQueue(clock=clock)
    queue.add_rate_limited(A, retry_after=5.0)
    assert queue.get(timeout=0) is None
    clock.now += 4.99
    assert queue.get(timeout=0) is None
    clock.now += 0.02
    assert queue.get(timeout=0) == A


def test_forget_resets_the_backoff():
    queue = RateLimitingQueue(backoff_initial=0.5, clock=FakeClock())
    queue.add_rate_limited(A)
    queue.add_rate_limited(A)
    assert queue.requeues(A) == 2
    queue.forget(A)
    assert queue.requeues(A) == 0
    assert queue.add_rate_limited(A) == 0.5


def test_shut_down_wakes_a_waiting_worker_and_refuses_new_keys():
    queue = RateLimitingQueue()
    got: list[object] = []
    worker = threading.Thread(target=lambda: got.append(queue.get(timeout=10)))
    worker.start()
    time.sleep(0.05)
    queue.shut_down()
    worker.join(timeout=2)
    assert got == [None] and not worker.is_alive()
    queue.add(A)
    assert queue.get(timeout=0) is None and queue.shutting_down


def test_workers_never_hold_the_same_key_at_once():
    queue = RateLimitingQueue()
    holding: set[tuple[str, str]] = set()
    overlaps: list[tuple[str, str]] = []
    lock = threading.Lock()
    processed = [0]

    def work() -> None:
        while (key := queue.get(timeout=0.2)) is not None:
            with lock:
                if key in holding:
                    overlaps.append(key)
                holding.add(key)
            time.sleep(0.001)
            with lock:
                holding.discard(key)
                processed[0] += 1
            queue.done(key)

    workers = [threading.Thread(target=work) for _ in range(8)]
    for worker in workers:
        worker.start()
    for i in range(400):
        queue.add(("ns", f"p{i % 10}"))
    for worker in workers:
        worker.join(timeout=10)
    assert not overlaps and processed[0] >= 10


def test_busy_while_a_key_is_in_line_or_with_a_worker_but_not_while_one_only_waits_its_delay():
    queue = RateLimitingQueue()
    queue.add_after(A, 60)
    assert not queue.busy()
    queue.add(B)
    assert queue.busy()
    assert queue.get(timeout=0) == B
    assert queue.busy()
    queue.done(B)
    assert not queue.busy()
