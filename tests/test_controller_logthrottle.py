"""One log line per kind of failure and minute."""

from __future__ import annotations

from webhook.controller.logthrottle import LogThrottle


def test_a_repeated_failure_is_logged_once_a_period_with_the_count_left_out():
    throttle = LogThrottle(period=60.0)
    assert throttle.allow(503, 0.0) == 0
    assert [throttle.allow(503, t) for t in (1.0, 2.0, 59.0)] == [None, None, None]
    assert throttle.allow(503, 60.0) == 3
    assert throttle.allow(503, 61.0) is None


def test_each_kind_has_its_own_period():
    throttle = LogThrottle(period=60.0)
    assert throttle.allow(503, 0.0) == 0
    assert throttle.allow(422, 1.0) == 0
    assert throttle.allow(("informer", 503), 1.0) == 0


def test_a_failure_without_an_answer_is_never_logged_here_and_others_are_throttled():
    throttle = LogThrottle()
    assert throttle.allow_failure("list", 0, 0.0) is None  # no answer at all: Reachability's line
    assert throttle.allow_failure("list", 403, 0.0) == 0
    assert throttle.allow_failure("list", 403, 1.0) is None
