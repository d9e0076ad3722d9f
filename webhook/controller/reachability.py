"""Whether the API server answers: one log line when it stops, one when it answers again, however many calls
fail in between; and the controller's client, which feeds it (webhook.kubeclient).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from webhook import kube, kubeclient

log = logging.getLogger(__name__)

# Failures for this long, with no good answer in between, make an outage. A lone failure (a keep-alive connection
# the server closed, say) followed by a good answer is not one, and is not logged.
OUTAGE_AFTER = 1.0


def is_outage_status(status: int) -> bool:
    """No answer (0) or a server error (5xx: kube-apiserver answers 503 while etcd is unavailable): the callers
    retry on their backoff, and Reachability speaks for all of them."""
    return status == 0 or status >= 500


class Reachability:
    """The controller's client retries nothing itself (urllib3's retries are off): every caller retries on its
    own backoff, and this says once per outage that the server cannot be reached or fails, instead of a warning
    per failed call."""

    def __init__(self, server: str, clock: Callable[[], float] = time.monotonic,
                 outage_after: float = OUTAGE_AFTER) -> None:
        self.server = server
        self._clock = clock
        self._outage_after = outage_after
        self._lock = threading.Lock()
        self._failing_since: float | None = None  # first failure since the last good answer
        self._down = False
        self._failures = 0
        self.outages = 0

    def observe(self, status: int, error: str = "") -> None:
        """Called after every request with the HTTP status of its answer, 0 when none came."""
        now = self._clock()
        with self._lock:
            if not is_outage_status(status):
                was_down, failing_since, failures = self._down, self._failing_since, self._failures
                self._failing_since, self._down, self._failures = None, False, 0
                if not was_down:
                    return
            else:
                self._failures += 1
                if self._failing_since is None:
                    self._failing_since = now
                if self._down or now - self._failing_since < self._outage_after:
                    return
                self._down = True
                self.outages += 1
        if not is_outage_status(status):
            log.info(f"the API server at {self.server} answers again", extra={
                "server": self.server, "down_seconds": round(now - (failing_since or now), 1),
                "failed_calls": failures})
        elif status == 0:
            log.error(f"cannot reach the API server at {self.server}; retrying",
                      extra={"server": self.server, "error": " ".join(error.split())[:300]})
        else:
            log.error(f"the API server at {self.server} fails ({status}); retrying",
                      extra={"server": self.server, "status": status, "error": " ".join(error.split())[:300]})

    @property
    def is_down(self) -> bool:
        with self._lock:
            return self._down


def connect(kubeconfig: Path | None, context: str | None, user_agent: str, workers: int) -> kube.Kube:
    """The controller's client. Every caller retries on its own backoff (honouring Retry-After), so urllib3
    retries nothing: one failed call is one failure, and an outage is one log line here, not four per call. The
    pool keeps a connection for each worker, each watch, the lease and the Event sender."""
    reachability = Reachability("")
    client = kubeclient.connect(kubeconfig, context, user_agent=user_agent, retries=0, pool_size=workers + 8,
                                on_answer=reachability.observe)
    reachability.server = kube.server_url(client)
    return client
