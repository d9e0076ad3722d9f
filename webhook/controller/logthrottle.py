"""At most one log line per kind of failure and period: a failure that repeats (every Event forbidden, every
patch refused) is one line a minute, with how many happened since. Stdlib only; callers pass the time."""

from __future__ import annotations

import threading
from collections.abc import Hashable

PERIOD = 60.0


class LogThrottle:
    def __init__(self, period: float = PERIOD) -> None:
        self._period = period
        self._lock = threading.Lock()
        self._logged: dict[Hashable, float] = {}
        self._since: dict[Hashable, int] = {}

    def allow(self, kind: Hashable, now: float) -> int | None:
        """None: do not log this one. Otherwise log it, mentioning the returned count of the same kind left out
        since the last line."""
        with self._lock:
            last = self._logged.get(kind)
            if last is not None and now - last < self._period:
                self._since[kind] = self._since.get(kind, 0) + 1
                return None
            self._logged[kind] = now
            return self._since.pop(kind, 0)

    def allow_failure(self, kind: Hashable, status: int, now: float) -> int | None:
        """allow() for an API call that failed with `status`; never for 0, no answer at all, which Reachability
        logs once per outage."""
        return None if status == 0 else self.allow(kind, now)
