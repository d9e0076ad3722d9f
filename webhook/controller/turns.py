"""Whose turn it is to be evicted under the recycling rate limit, without a thundering herd.
Pure apart from a lock: callers pass the time and act on the answer; no I/O, no logging.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

from webhook.controller.ratelimit import TokenBucket
from webhook.controller.workqueue import Key


class LineChange(StrEnum):
    """The two moments worth a log line: pods start waiting for the rate limit, and none waits any more."""

    STARTED = "started"
    EMPTIED = "emptied"


@dataclass(frozen=True)
class Turn:
    granted: bool  # a token was taken for this key: read, then evict (or give it back)
    wake: tuple[Key, float] | None = None  # reconcile this key at this time: the first in line, for the next token
    change: LineChange | None = None


class EvictionTurns:
    """A token is taken before anything is read, so a pod that cannot be evicted yet costs no API call. Pods
    that find no token wait in line, first come first served, and only the first in line is woken, when the
    next token is due: one wake per token, whatever the length of the line."""

    def __init__(self, bucket: TokenBucket) -> None:
        self._bucket = bucket
        self._lock = threading.Lock()
        self._line: OrderedDict[Key, None] = OrderedDict()

    def take(self, key: Key, now: float) -> Turn:
        """Ask for a token for `key`: granted when the line is empty or `key` is first in it, and a token is
        there; otherwise `key` waits in line (once)."""
        with self._lock:
            first = next(iter(self._line), key)
            if first == key and self._bucket.available(now):
                self._bucket.take(now)
                was_waiting = self._line.pop(key, False) is None
                return Turn(True, self._wake_first(now), LineChange.EMPTIED if was_waiting and not self._line
                            else None)
            started = not self._line
            self._line.setdefault(key, None)
            wake = self._wake_first(now) if first == key else None
            return Turn(False, wake, LineChange.STARTED if started else None)

    def give_back(self, now: float) -> Turn:
        """A granted token went unused (the fresh read showed nothing to evict, or a budget refused): the
        first in line may have it at once."""
        with self._lock:
            self._bucket.give_back(now)
            return Turn(False, self._wake_first(now))

    def leave(self, key: Key, now: float) -> Turn:
        """`key` no longer wants a turn (gone, managed after all, not a candidate any more)."""
        with self._lock:
            if key not in self._line:
                return Turn(False)
            was_first = next(iter(self._line)) == key
            del self._line[key]
            if not self._line:
                return Turn(False, None, LineChange.EMPTIED)
            return Turn(False, self._wake_first(now) if was_first else None)

    def waiting(self) -> int:
        with self._lock:
            return len(self._line)

    def _wake_first(self, now: float) -> tuple[Key, float] | None:
        if not self._line:
            return None
        wait = self._bucket.wait_time(now)
        if wait == float("inf"):
            return None  # a rate of zero: nobody is ever evicted
        return next(iter(self._line)), now + wait
