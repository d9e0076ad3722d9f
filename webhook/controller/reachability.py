"""Whether the API server answers: one log line when it stops, one when it answers again, however many calls
fail in between. Fed by webhook.kube's answer hook; stdlib only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Reachability:
    """The controller's client retries nothing itself (urllib3's retries are off): every caller retries on its
    own backoff, and this says once per outage that the server cannot be reached, instead of a warning per
    failed call."""

    def __init__(self, server: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.server = server
        self._clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._failures = 0
        self.outages = 0

    def observe(self, answered: bool, error: str = "") -> None:
        """Called after every request: `answered` when any HTTP answer came back, errors included."""
        with self._lock:
            if answered:
                if self._down_since is None:
                    return
                down_for, failures = self._clock() - self._down_since, self._failures
                self._down_since, self._failures = None, 0
            else:
                self._failures += 1
                if self._down_since is not None:
                    return
                self._down_since = self._clock()
                self.outages += 1
        if answered:
            log.info(f"the API server at {self.server} answers again",
                     extra={"server": self.server, "down_seconds": round(down_for, 1), "failed_calls": failures})
        else:
            log.error(f"cannot reach the API server at {self.server}; retrying",
                      extra={"server": self.server, "error": " ".join(error.split())[:300]})

    @property
    def is_down(self) -> bool:
        with self._lock:
            return self._down_since is not None
