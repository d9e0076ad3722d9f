"""Leader election on a coordination.k8s.io/v1 Lease, after client-go's leaderelection package.
API calls through webhook.kube only; imports nothing else of the controller but rules' time spelling.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from webhook import kube
from webhook.config import DEFAULT_LEASE_DURATION, DEFAULT_RENEW_DEADLINE, DEFAULT_RETRY_PERIOD
from webhook.controller.reachability import is_outage_status
from webhook.controller.rules import micro_time
from webhook.kube import ApiError, Kube

log = logging.getLogger(__name__)


# Pure parts (`LeaseRecord`, `is_held_by_other`, `claim`, `released`) take clock readings as arguments. Expiry
# is measured on this replica's monotonic clock from the moment it *saw* the record change, never from the
# renewTime written by another machine, so clock skew between nodes cannot hand out two leases.


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    lease_duration: int = DEFAULT_LEASE_DURATION  # seconds; the Lease field is an integer
    renew_deadline: float = DEFAULT_RENEW_DEADLINE
    retry_period: float = DEFAULT_RETRY_PERIOD

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election needs 0 < retry period < renew deadline < lease duration")


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    duration: int
    acquire_time: str | None
    renew_time: str | None
    transitions: int


def read_record(lease: Mapping[str, Any]) -> LeaseRecord:
    spec = lease.get("spec") or {}
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        duration=int(spec.get("leaseDurationSeconds") or 0),
        acquire_time=spec.get("acquireTime"),
        renew_time=spec.get("renewTime"),
        transitions=int(spec.get("leaseTransitions") or 0),
    )


def is_held_by_other(record: LeaseRecord, identity: str, observed_at: float, now: float) -> bool:
    """Someone else holds the lease and, as far as this replica has seen, it has not expired."""
    return bool(record.holder) and record.holder != identity and observed_at + record.duration > now


def claim(record: LeaseRecord | None, identity: str, duration: int, now_wall: float) -> dict[str, Any]:
    """The spec that acquires (or, when already ours, renews) the lease."""
    stamp = micro_time(now_wall)
    if record is None:
        transitions, acquired = 0, stamp
    elif record.holder == identity:
        transitions, acquired = record.transitions, record.acquire_time or stamp
    else:
        transitions, acquired = record.transitions + 1, stamp
    return {"holderIdentity": identity, "leaseDurationSeconds": duration, "acquireTime": acquired,
            "renewTime": stamp, "leaseTransitions": transitions}


def released(record: LeaseRecord, now_wall: float) -> dict[str, Any]:
    """What a leader writes on the way out: no holder, so another replica takes over without waiting."""
    stamp = micro_time(now_wall)
    return {"holderIdentity": "", "leaseDurationSeconds": 1, "acquireTime": stamp, "renewTime": stamp,
            "leaseTransitions": record.transitions}


class LeaderElector:
    """Acquires and renews the Lease every retry period. A leader that cannot renew within the renew deadline
    stops leading (and `may_write` turns false even earlier if this thread is stuck)."""

    def __init__(
        self,
        client: Kube,
        config: LeaseConfig,
        on_started_leading: Callable[[], None],
        on_stopped_leading: Callable[[], None],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._kube = client
        self.config = config
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._monotonic = monotonic
        self._wall = wall
        self._leader = False
        self._renewed_at = 0.0
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._lease: dict[str, Any] | None = None
        self.lost = False

    def is_leader(self) -> bool:
        return self._leader

    def may_write(self) -> bool:
        """Leader, and the last renewal is recent enough that no other replica can have taken over."""
        return self._leader and self._monotonic() - self._renewed_at < self.config.renew_deadline

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            started = self._monotonic()
            renewed = self._try_acquire_or_renew()
            if renewed:
                # Counted from before the request: others start counting only once they see the write.
                self._renewed_at = started
                if not self._leader:
                    self._leader = True
                    log.info("became leader", extra={"lease": self._describe(), "identity": self.config.identity})
                    self._on_started()
            elif self._leader and self._monotonic() - self._renewed_at >= self.config.renew_deadline:
                self._leader = False
                self.lost = True
                log.error("could not renew the lease within the renew deadline; stopped leading",
                          extra={"lease": self._describe(), "identity": self.config.identity})
                self._on_stopped()
                return
            stop.wait(self.config.retry_period)
        if self._leader:
            self.release()

    def release(self) -> None:
        """Give the lease up (on SIGTERM) so that another replica takes over at once."""
        was_leader, self._leader = self._leader, False
        if not was_leader or self._lease is None or self._observed is None:
            return
        lease = dict(self._lease, spec=released(self._observed, self._wall()))
        try:
            kube.replace_lease(self._kube, self.config.namespace, self.config.name, lease, timeout=self._timeout())
            log.info("released the lease", extra={"lease": self._describe()})
        except ApiError as err:
            log.warning("could not release the lease; it expires on its own",
                        extra={"lease": self._describe(), "status": err.status, "error": err.message})

    def _try_acquire_or_renew(self) -> bool:
        c = self.config
        try:
            current = kube.get_lease(self._kube, c.namespace, c.name, timeout=self._timeout())
            if current is None:
                spec = claim(None, c.identity, c.lease_duration, self._wall())
                body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": c.name, "namespace": c.namespace}, "spec": spec}
                self._remember(kube.create_lease(self._kube, c.namespace, body, timeout=self._timeout()))
                return True
            record = read_record(current)
            if record != self._observed:
                self._observed, self._observed_at = record, self._monotonic()
            if is_held_by_other(record, c.identity, self._observed_at, self._monotonic()):
                return False
            if record.holder != c.identity:
                log.info("acquiring the lease", extra={"lease": self._describe(), "previous_holder": record.holder})
            spec = claim(record, c.identity, c.lease_duration, self._wall())
            self._remember(kube.replace_lease(self._kube, c.namespace, c.name, dict(current, spec=spec),
                                              timeout=self._timeout()))
            return True
        except ApiError as err:
            # 409: another replica wrote first; no answer or a server error: Reachability says so, once.
            if err.status != 409 and not is_outage_status(err.status):
                log.warning("lease update failed", extra={
                    "lease": self._describe(), "status": err.status, "error": err.message})
            return False

    def _remember(self, lease: dict[str, Any]) -> None:
        self._lease = lease
        self._observed, self._observed_at = read_record(lease), self._monotonic()

    def _timeout(self) -> float:
        # A renewal that hangs must not outlive the renew deadline.
        return max(0.5, self.config.renew_deadline / 2)

    def _describe(self) -> str:
        return f"{self.config.namespace}/{self.config.name}"
