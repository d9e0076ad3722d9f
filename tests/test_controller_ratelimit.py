"""The recycling rate limit: a token bucket driven by the time the caller passes."""

from __future__ import annotations

import pytest

from webhook.controller.ratelimit import TokenBucket, recycle_bucket


def test_token_bucket_allows_a_burst_then_the_rate():
    bucket = TokenBucket(rate_per_minute=5, burst=5, now=0)
    for _ in range(5):
        assert bucket.available(0)
        bucket.take(0)
    assert not bucket.available(0)
    assert bucket.wait_time(0) == pytest.approx(12)
    assert not bucket.available(11.9)
    assert bucket.available(12)


def test_token_bucket_refills_no_higher_than_the_burst():
    bucket = TokenBucket(rate_per_minute=5, burst=5, now=0)
    for _ in range(5):
        bucket.take(0)
    bucket.available(3600)
    taken = 0
    while bucket.available(3600):
        bucket.take(3600)
        taken += 1
    assert taken == 5


def test_zero_recycle_rate_never_allows_an_eviction():
    bucket = recycle_bucket(0, now=0)
    assert not bucket.available(1e9)
    assert bucket.wait_time(0) == float("inf")


def test_fractional_recycle_rate_still_allows_one_at_a_time():
    bucket = recycle_bucket(0.5, now=0)
    assert bucket.available(0)
    bucket.take(0)
    assert bucket.wait_time(0) == pytest.approx(120)


def test_a_token_given_back_is_available_again_but_never_beyond_the_burst():
    bucket = TokenBucket(60, 1, now=0.0)
    bucket.take(0.0)
    assert not bucket.available(0.0)
    bucket.give_back(0.0)
    assert bucket.available(0.0)
    bucket.give_back(0.0)
    bucket.take(0.0)
    assert not bucket.available(0.0)
