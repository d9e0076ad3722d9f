"""Retry delays: doubling up to a maximum, with jitter, back to the start on reset."""

from __future__ import annotations

from webhook.backoff import Backoff


def test_backoff_doubles_up_to_the_maximum():
    backoff = Backoff(1.0, 4.0)
    delays = [backoff.next() for _ in range(4)]
    assert [round(d / base) for d, base in zip(delays, (1, 2, 4, 4), strict=True)] == [1, 1, 1, 1]


def test_delays_are_jittered_within_a_fifth():
    delays = {Backoff(10.0, 10.0).next() for _ in range(50)}
    assert all(8.0 <= d <= 12.0 for d in delays)
    assert len(delays) > 1


def test_reset_starts_again_from_the_initial_delay():
    backoff = Backoff(1.0, 8.0)
    for _ in range(3):
        backoff.next()
    backoff.reset()
    assert 0.8 <= backoff.next() <= 1.2
