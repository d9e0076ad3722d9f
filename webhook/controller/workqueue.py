"""The gate controller's work queue: keys of pods to reconcile, for several workers, with client-go's semantics.
Stdlib only: no Kubernetes, no decisions.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable

Key = tuple[str, str]  # (namespace, name); namespace is "" for cluster-scoped objects


class RateLimitingQueue:
    """A work queue with client-go's semantics, for several workers
    (https://github.com/kubernetes/kubernetes/blob/a802e788602ff6ad87e1cbeaf3fb5d6a6d874ba1/staging/src/k8s.io/client-go/util/workqueue/queue.go):

    - a key is handed to at most one worker at a time: `get` marks it processing until `done(key)`;
    - a key added while it is processing is not handed out again before `done`, and then once more;
    - a key is in line at most once, however often it is added;
    - `add_rate_limited` puts a key back after its own exponential backoff, never sooner than a Retry-After the
      server gave; `forget` resets that backoff once the key succeeds
      (https://github.com/kubernetes/kubernetes/blob/78fc8e44052f699bf598f84b697b41e5a328c9c5/staging/src/k8s.io/client-go/util/workqueue/default_rate_limiters.go);
    - `shut_down` wakes every waiting worker; `get` then answers None.
    """

    def __init__(self, backoff_initial: float = 0.5, backoff_max: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._cond = threading.Condition()
        self._clock = clock
        self._ready: deque[Key] = deque()
        self._dirty: set[Key] = set()  # in line, or to be put back in line when done
        self._processing: set[Key] = set()
        self._delayed: list[tuple[float, int, Key]] = []
        self._sequence = 0
        self._failures: dict[Key, int] = {}
        self._backoff_initial, self._backoff_max = backoff_initial, backoff_max
        self._shutting_down = False

    def add(self, key: Key) -> None:
        with self._cond:
            self._add(key)

    def _add(self, key: Key) -> None:
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._ready.append(key)
            self._cond.notify()

    def add_after(self, key: Key, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            if self._shutting_down:
                return
            self._sequence += 1
            heapq.heappush(self._delayed, (self._clock() + delay, self._sequence, key))
            self._cond.notify()

    def add_rate_limited(self, key: Key, retry_after: float | None = None) -> float:
        """Put the key back after its backoff (initial * 2^failures, at most the maximum), or after `retry_after`
        when that is later. Returns the delay."""
        with self._cond:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
            delay = min(self._backoff_max, self._backoff_initial * 2.0 ** min(failures, 60))
        delay = max(delay, retry_after or 0.0)
        self.add_after(key, delay)
        return delay

    def forget(self, key: Key) -> None:
        with self._cond:
            self._failures.pop(key, None)

    def requeues(self, key: Key) -> int:
        with self._cond:
            return self._failures.get(key, 0)

    def get(self, timeout: float) -> Key | None:
        """The next key, now processing, or None after `timeout` or once shut down."""
        with self._cond:
            deadline = self._clock() + timeout
            while True:
                now = self._clock()
                while self._delayed and self._delayed[0][0] <= now:
                    self._add(heapq.heappop(self._delayed)[2])
                if self._ready:
                    key = self._ready.popleft()
                    self._processing.add(key)
                    self._dirty.discard(key)
                    return key
                if self._shutting_down or now >= deadline:
                    return None
                wake = min(deadline, self._delayed[0][0]) if self._delayed else deadline
                self._cond.wait(max(0.0, wake - now))

    def done(self, key: Key) -> None:
        """The worker is finished with `key`: if it was added meanwhile, it goes back in line now."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._ready.append(key)
                self._cond.notify()

    def shut_down(self) -> None:
        with self._cond:
            self._shutting_down = True
            self._cond.notify_all()

    @property
    def shutting_down(self) -> bool:
        with self._cond:
            return self._shutting_down

    def busy(self) -> bool:
        """A key is in line now or with a worker (keys waiting for their delay do not count)."""
        with self._cond:
            return bool(self._ready or self._processing)
