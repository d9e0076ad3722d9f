"""The gate controller's work queue: keys of pods to reconcile, each at most once in line, some after a delay.
Stdlib only: no Kubernetes, no decisions.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque

Key = tuple[str, str]  # (namespace, name); namespace is "" for cluster-scoped objects


class WorkQueue:
    """Keys waiting to be reconciled: each at most once in line; delayed keys wait in a heap until due.

    Made for one worker: a key handed out is no longer in line, so a second worker could take it again while
    the first still works on it. More workers need client-go's "processing" set and a done(key) call."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ready: deque[Key] = deque()
        self._queued: set[Key] = set()
        self._delayed: list[tuple[float, int, Key]] = []
        self._sequence = 0
        self._closed = False

    def add(self, key: Key) -> None:
        with self._cond:
            if key not in self._queued:
                self._queued.add(key)
                self._ready.append(key)
                self._cond.notify()

    def add_after(self, key: Key, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            self._sequence += 1
            heapq.heappush(self._delayed, (time.monotonic() + delay, self._sequence, key))
            self._cond.notify()

    def get(self, timeout: float) -> Key | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    _, _, key = heapq.heappop(self._delayed)
                    if key not in self._queued:
                        self._queued.add(key)
                        self._ready.append(key)
                if self._ready:
                    key = self._ready.popleft()
                    self._queued.discard(key)
                    return key
                if self._closed or now >= deadline:
                    return None
                wake = min(deadline, self._delayed[0][0]) if self._delayed else deadline
                self._cond.wait(max(0.0, wake - now))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._ready) + len(self._delayed)
