"""Events off the critical path: a bounded queue that one background thread empties into the API.
The correlator is pure (a clock reading in, a verdict out); the sender calls a send function it is given, never
webhook.kube itself, so it can be tested without a server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)

# As client-go's EventCorrelator: an LRU of 4096 keys, and a repeat within 10 minutes is not recorded again
# (https://github.com/kubernetes/kubernetes/blob/00080d400fe27f11795b654ad1e124311831a0fc/staging/src/k8s.io/client-go/tools/record/events_cache.go:
# maxLruCacheEntries, defaultAggregateIntervalInSeconds).
CORRELATOR_SIZE = 4096
DEDUPLICATE_WINDOW = 600.0
QUEUE_CAPACITY = 1000
# While the controller has work in hand, an Event waits (at most this long) so that it does not take a write of
# the API server's from a condition.
MAX_DEFER = 5.0

EventKey = tuple[str, str]  # (the regarding object's uid, the reason)


class Verdict(StrEnum):
    QUEUED = "queued"
    DUPLICATE = "duplicate"  # the same object and reason within the window: not sent again
    DROPPED = "dropped"  # the queue was full


class Correlator:
    """Remembers, per (object uid, reason), when it was last recorded; at most `size` keys, least recent first
    out. Not thread-safe: the sender holds its lock."""

    def __init__(self, size: int = CORRELATOR_SIZE, window: float = DEDUPLICATE_WINDOW) -> None:
        self._size, self._window = size, window
        self._seen: OrderedDict[EventKey, float] = OrderedDict()

    def is_duplicate(self, key: EventKey, now: float) -> bool:
        """True when `key` was recorded less than the window ago; otherwise records it now."""
        last = self._seen.get(key)
        if last is not None and now - last < self._window:
            return True
        self._seen[key] = now
        self._seen.move_to_end(key)
        while len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return False

    def forget(self, key: EventKey) -> None:
        """An event that could not be queued or sent: a later one for the same key is not a duplicate."""
        self._seen.pop(key, None)


class EventSender:
    """Queues Events for one background thread to send, so that a burst of gates never waits on its Events:
    deduplicated by the Correlator, at most `capacity` waiting (further ones dropped and counted), each sent once,
    best effort (a failure is logged and counted, never retried)."""

    def __init__(self, send: Callable[[dict[str, Any]], None], *, capacity: int = QUEUE_CAPACITY,
                 correlator: Correlator | None = None, may_send: Callable[[], bool] = lambda: True,
                 on_verdict: Callable[[Verdict], None] = lambda verdict: None,
                 on_failure: Callable[[Exception], None] = lambda err: None,
                 defer_while: Callable[[], bool] = lambda: False, max_defer: float = MAX_DEFER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self._defer_while = defer_while
        self._max_defer = max_defer
        self._capacity = capacity
        self._correlator = correlator or Correlator()
        self._may_send = may_send
        self._on_verdict = on_verdict
        self._on_failure = on_failure
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: deque[tuple[EventKey, dict[str, Any]]] = deque()
        self._closed = False
        self._busy = False
        self.sent = self.failed = 0

    def record(self, key: EventKey, event: dict[str, Any]) -> Verdict:
        """Queue an Event about an object; returns at once."""
        with self._cond:
            if self._correlator.is_duplicate(key, self._clock()):
                verdict = Verdict.DUPLICATE
            elif self._closed or len(self._queue) >= self._capacity:
                self._correlator.forget(key)
                verdict = Verdict.DROPPED
            else:
                self._queue.append((key, event))
                self._cond.notify()
                verdict = Verdict.QUEUED
        self._on_verdict(verdict)
        return verdict

    def run(self, stop: threading.Event) -> None:
        """Send queued Events until `stop` is set and close() was called; what is left then is dropped. Each
        waits while `defer_while()` says the controller has work in hand, for at most `max_defer` seconds."""
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait(0.5)
                if not self._queue:
                    return
            deadline = self._clock() + self._max_defer
            while not self._closed and self._defer_while() and self._clock() < deadline:
                stop.wait(0.02)
            with self._cond:
                if not self._queue:
                    continue
                key, event = self._queue.popleft()
                self._busy = True
            try:
                if self._may_send():
                    self._send(event)
                    self.sent += 1
                else:
                    self._on_verdict(Verdict.DROPPED)  # no longer leader: another replica records from now on
            except Exception as err:  # best effort: one failed Event must not stop the others
                self.failed += 1
                with self._cond:
                    self._correlator.forget(key)
                self._on_failure(err)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
            if stop.is_set() and self._closed:
                self._drop_rest()
                return

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far has been sent (for tests and shutdown); False on timeout."""
        deadline = self._clock() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def _drop_rest(self) -> None:
        with self._cond:
            dropped, self._queue = len(self._queue), deque()
        for _ in range(dropped):
            self._on_verdict(Verdict.DROPPED)

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)
