"""The gate controller's settings, as one frozen value the command line builds and every part reads.
Plain data: no I/O, no threads, no kubernetes client.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from webhook.config import (
    DEFAULT_AGENT_SELECTOR,
    DEFAULT_CILIUM_NAMESPACE,
    DEFAULT_RECYCLE_RATE,
    DEFAULT_WORKERS,
    UnmanagedSettings,
)
from webhook.controller.lease import LeaseConfig
from webhook.controller.rules import EVICTION_RETRY_FLOOR, Timings
from webhook.enums import UnmanagedAction, UnmanagedScope
from webhook.policy import CILIUM_TAINT_KEY, DEFAULT_GATE_CONDITION, DEFAULT_GATE_LABEL


@dataclass(frozen=True)
class ControllerOptions:
    gate_condition: str = DEFAULT_GATE_CONDITION
    gate_label: str = DEFAULT_GATE_LABEL
    cilium_taint_key: str = CILIUM_TAINT_KEY
    timings: Timings = field(default_factory=Timings)
    recycle_rate: float = DEFAULT_RECYCLE_RATE
    cilium_namespace: str = DEFAULT_CILIUM_NAMESPACE
    agent_selector: str = DEFAULT_AGENT_SELECTOR
    unmanaged: UnmanagedSettings = field(default_factory=UnmanagedSettings)
    dry_run: bool = False
    lease: LeaseConfig | None = None  # required unless dry_run: dry-run replicas take no part in the election
    identity: str = "cilium-startup-guard"  # reportingInstance of events; the Lease holder
    workers: int = DEFAULT_WORKERS  # reconciles at once; each pod is with one worker at most
    # Internal timings and sizes, not flags; tests shorten them.
    eviction_retry_floor: float = EVICTION_RETRY_FLOOR
    resync_period: float = 300.0
    relist_period: float = 900.0
    watch_timeout: int = 300  # seconds; each watch lasts this long times a random 1..2, as in client-go
    absent_recheck: float = 30.0  # how often to look for ciliumendpoints again while it is not served
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    event_queue: int = 1000  # Events waiting to be sent; more are dropped (and counted)

    @property
    def gate_selector(self) -> str:
        return f"{self.gate_label}=true"

    @property
    def all_pods(self) -> bool:
        """Scope `all`: every pod on the pod network in the scope, not only the gated ones."""
        return self.unmanaged.scope is UnmanagedScope.ALL

    @property
    def observe(self) -> bool:
        """Action `observe`: unmanaged pods are reported, never evicted."""
        return self.unmanaged.effective_action is UnmanagedAction.OBSERVE
