"""The recycling rate limit: a token bucket. Pure: callers pass the time; no threads, no I/O."""

from __future__ import annotations


class TokenBucket:
    """`rate` tokens a minute, holding at most `burst`."""

    def __init__(self, rate_per_minute: float, burst: float, now: float) -> None:
        self.rate = rate_per_minute / 60.0
        self.burst = burst
        self._tokens = burst
        self._updated = now

    def available(self, now: float) -> bool:
        self._refill(now)
        return self._tokens >= 1.0

    def take(self, now: float) -> None:
        self._refill(now)
        self._tokens -= 1.0

    def give_back(self, now: float) -> None:
        """Return a token taken but not spent."""
        self._refill(now)
        self._tokens = min(self.burst, self._tokens + 1.0)

    def wait_time(self, now: float) -> float:
        """Seconds until a token is available; infinity when the rate is zero."""
        self._refill(now)
        if self._tokens >= 1.0:
            return 0.0
        return (1.0 - self._tokens) / self.rate if self.rate > 0 else float("inf")

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._updated) * self.rate)
        self._updated = now


def recycle_bucket(rate_per_minute: float, now: float) -> TokenBucket:
    # Rate and burst are both --recycle-rate; a fractional rate still allows one eviction at a time.
    return TokenBucket(rate_per_minute, max(1.0, rate_per_minute) if rate_per_minute > 0 else 0.0, now)
