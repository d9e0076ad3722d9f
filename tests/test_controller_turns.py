"""Eviction turns under the rate limit: a token before any read, one wake per token, a line that logs twice."""

from __future__ import annotations

from webhook.controller.ratelimit import TokenBucket
from webhook.controller.turns import EvictionTurns, LineChange, Turn

A, B, C = ("ns", "a"), ("ns", "b"), ("ns", "c")


def turns(rate_per_minute: float = 60, burst: float = 1) -> EvictionTurns:
    return EvictionTurns(TokenBucket(rate_per_minute, burst, now=0.0))


def test_a_token_is_granted_at_once_when_nobody_waits():
    assert turns().take(A, 0.0) == Turn(granted=True)


def test_without_a_token_the_first_to_wait_is_woken_when_the_next_token_is_due():
    line = turns(rate_per_minute=60)
    line.take(A, 0.0)
    assert line.take(B, 0.0) == Turn(False, wake=(B, 1.0), change=LineChange.STARTED)


def test_later_arrivals_wait_in_line_without_a_wake_of_their_own():
    line = turns()
    line.take(A, 0.0)
    line.take(B, 0.0)
    assert line.take(C, 0.0) == Turn(False)
    assert line.take(C, 0.5) == Turn(False)  # asking again neither duplicates it nor wakes anyone
    assert line.waiting() == 2


def test_a_later_arrival_cannot_take_the_token_of_the_first_in_line():
    line = turns()
    line.take(A, 0.0)
    line.take(B, 0.0)
    line.take(C, 0.0)
    assert line.take(C, 1.0).granted is False  # the token due at 1.0 is B's
    granted = line.take(B, 1.0)
    assert granted.granted and granted.wake == (C, 2.0)  # and B's turn schedules C for the next token


def test_one_wake_per_token_for_a_long_line():
    line = turns(rate_per_minute=60)
    line.take(("ns", "first"), 0.0)
    wakes = [line.take(("ns", f"p{i}"), 0.0).wake for i in range(500)]
    assert [w for w in wakes if w is not None] == [(("ns", "p0"), 1.0)]


def test_the_last_one_out_empties_the_line():
    line = turns()
    line.take(A, 0.0)
    line.take(B, 0.0)
    assert line.take(B, 1.0) == Turn(True, None, LineChange.EMPTIED)
    assert line.waiting() == 0


def test_a_token_given_back_goes_to_the_first_in_line_at_once():
    line = turns()
    line.take(A, 0.0)  # granted, then the fresh read shows A needs no eviction
    line.take(B, 0.0)
    assert line.give_back(0.1) == Turn(False, wake=(B, 0.1))
    assert line.take(B, 0.1).granted


def test_leaving_the_head_of_the_line_wakes_the_next():
    line = turns()
    line.take(A, 0.0)
    line.take(B, 0.0)
    line.take(C, 0.0)
    assert line.leave(B, 0.2) == Turn(False, wake=(C, 1.0))
    assert line.leave(C, 0.3) == Turn(False, None, LineChange.EMPTIED)
    assert line.leave(C, 0.4) == Turn(False)


def test_a_rate_of_zero_never_wakes_anyone():
    line = EvictionTurns(TokenBucket(0, 0, now=0.0))
    assert line.take(A, 0.0) == Turn(False, None, LineChange.STARTED)
