"""`recycle`: once, evict the pods Cilium should manage and does not, at a rate, so that their owners recreate them
under Cilium. Which pods, and why, is webhook.unmanaged's and the controller's rules; this module lists, reads
owners and evicts through webhook.kube (never the client itself), and renders the report.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import orjson

from webhook import kube
from webhook.cilium import endpoint_state
from webhook.config import (
    DEFAULT_AGENT_SELECTOR,
    DEFAULT_CILIUM_NAMESPACE,
    DEFAULT_RECYCLE_RATE,
    DEFAULT_REQUEST_TIMEOUT,
    PodScope,
)
from webhook.controller.ratelimit import recycle_bucket
from webhook.controller.rules import (
    EVICTION_GONE,
    EVICTION_REFUSED,
    Action,
    Plan,
    Situation,
    Timings,
    pod_facts,
)
from webhook.kube import ApiError, Kube, Resource, Target
from webhook.policy import CILIUM_TAINT_KEY, DEFAULT_GATE_CONDITION
from webhook.report import format_columns
from webhook.unmanaged import (
    CANDIDATE_PODS,
    WHY_NOT,
    Owner,
    OwnerFacts,
    Snapshot,
    owner_facts,
    owner_verdict,
    plan_reading_owner,
    plan_unmanaged,
    selections,
    situations,
)

RECYCLE_RBAC = "the ClusterRole for recycle in docs/review-and-audit.md grants it"

_T = TypeVar("_T")


class RecycleError(Exception):
    """`recycle` cannot go on; the message is one line for the person who ran it."""


class Outcome(StrEnum):
    EVICTED = "evicted"
    REFUSED = "refused-by-pdb"  # 429: a PodDisruptionBudget (or the API server's limit) said no; never deleted
    WOULD_EVICT = "would-evict"  # --dry-run
    REPORTED = "reported-only"  # evicting it would not bring it back under Cilium


@dataclass(frozen=True)
class RecycleOptions:
    scope: PodScope = field(default_factory=PodScope)
    timings: Timings = field(default_factory=Timings)  # the grace period
    rate: float = DEFAULT_RECYCLE_RATE  # evictions a minute, also the burst
    include_bare: bool = False
    dry_run: bool = False
    timeout: float = DEFAULT_REQUEST_TIMEOUT  # bounds each API request, connecting included; none is retried
    cilium_namespace: str = DEFAULT_CILIUM_NAMESPACE
    agent_selector: str = DEFAULT_AGENT_SELECTOR
    taint_key: str = CILIUM_TAINT_KEY
    gate_condition: str = DEFAULT_GATE_CONDITION
    page_size: int = kube.LIST_PAGE_SIZE  # tests shorten it


@dataclass(frozen=True)
class Candidate:
    """An unmanaged pod past its grace period, with what the decision read."""

    situation: Situation
    owner: OwnerFacts
    plan: Plan  # RECYCLE or REPORT


@dataclass(frozen=True)
class Row:
    namespace: str
    name: str
    node: str
    owner: Owner
    age: float | None  # seconds since the pod started
    action: Outcome
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "node": self.node,
                "owner_kind": self.owner.kind or None, "owner_name": self.owner.name or None,
                "age_seconds": None if self.age is None else int(self.age), "action": str(self.action),
                "reason": self.reason}


# --- finding the candidates ------------------------------------------------------------------------------------


def find(client: Kube, options: RecycleOptions, now: float) -> list[Candidate]:
    """Every pod in scope that Cilium should manage and does not, sorted by namespace and name, each planned to be
    evicted (RECYCLE) or reported (REPORT). Raises RecycleError, with one line saying why, when the cluster cannot
    be read; a cluster that does not serve CiliumEndpoints is such an error, never "nothing to do"."""
    if not _call(client, options, "read API discovery for ciliumendpoints.cilium.io",
                 lambda: kube.has_resource(client, kube.CILIUM_ENDPOINTS, options.timeout)):
        raise RecycleError(_no_endpoints(client))
    snapshot = Snapshot(
        pods=_list_scoped(client, options, kube.PODS, CANDIDATE_PODS, "pods"),
        nodes=_list(client, options, Target(kube.NODES), "nodes"),
        agents=_list(client, options, Target(kube.PODS, namespace=options.cilium_namespace,
                                             label_selector=options.agent_selector),
                     f"pods in namespace {options.cilium_namespace} (the Cilium agents)"),
        endpoints=_list_scoped(client, options, kube.CILIUM_ENDPOINTS, "", "ciliumendpoints.cilium.io",
                               labels=False))
    owners: dict[tuple[str, str, str], str] = {}
    candidates = []
    for pod, situation in situations(snapshot, options.taint_key, options.gate_condition):
        read_verdict = functools.partial(_owner_verdict, client, options, situation.pod.namespace, seen=owners)
        facts, step = plan_reading_owner(situation, owner_facts(pod), options.timings, now, read_verdict,
                                         include_bare=options.include_bare)
        if step.action in (Action.RECYCLE, Action.REPORT):
            candidates.append(Candidate(situation, facts, step))
    return sorted(candidates, key=lambda c: (c.situation.pod.namespace, c.situation.pod.name))


def _owner_verdict(client: Kube, options: RecycleOptions, namespace: str, owner: Owner,
                   seen: dict[tuple[str, str, str], str]) -> str:
    key = (owner.kind, namespace, owner.name)
    if key not in seen:
        resource = kube.OWNER_RESOURCES[owner.kind]
        obj = _call(client, options, f"get {_plural(resource)} {namespace}/{owner.name}",
                    lambda: kube.get_object(client, resource, namespace, owner.name, options.timeout))
        seen[key] = owner_verdict(owner, obj)
    return seen[key]


def _list_scoped(client: Kube, options: RecycleOptions, resource: Resource, fields: str, what: str, *,
                 labels: bool = True) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for s in selections(options.scope, fields, labels=labels):
        items += _list(client, options, Target(resource, s.namespace, s.label_selector, s.field_selector or None),
                       what if s.namespace is None else f"{what} in namespace {s.namespace}")
    return items


def _list(client: Kube, options: RecycleOptions, target: Target, what: str) -> list[dict[str, Any]]:
    def list_all() -> list[dict[str, Any]]:
        try:
            return kube.list_all(client, target, options.page_size, options.timeout)[0]
        except ApiError as err:
            if target.resource == kube.CILIUM_ENDPOINTS and err.status == 404:  # went away after discovery
                raise RecycleError(_no_endpoints(client)) from None
            raise

    return _call(client, options, f"list {what}", list_all)


def _no_endpoints(client: Kube) -> str:
    return (f"the API server {kube.server_url(client)} does not serve ciliumendpoints.cilium.io/v2 (is Cilium "
            f"installed?); without CiliumEndpoints no pod can be told managed or unmanaged")


def _call(client: Kube, options: RecycleOptions, action: str, call: Callable[[], _T]) -> _T:
    try:
        return call()
    except ApiError as err:
        raise RecycleError(err.describe(action, server=kube.server_url(client), timeout=options.timeout,
                                        rbac=RECYCLE_RBAC)) from None
    except orjson.JSONDecodeError:  # a 200 answer that is not JSON
        raise RecycleError(f"{action}: the answer from {kube.server_url(client)} is not JSON; is it a Kubernetes "
                           f"API server?") from None


def _plural(resource: Resource) -> str:
    return f"{resource.plural}.{resource.group}" if resource.group else resource.plural


# --- evicting ---------------------------------------------------------------------------------------------------


def recycle(client: Kube, options: RecycleOptions, candidates: list[Candidate], *,
            clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
            on_wait: Callable[[float, int], None] | None = None) -> Iterator[Row]:
    """A row per candidate, as its eviction is done (or, in a dry run, would be): at most `rate` a minute (burst
    the same), each after a fresh read of the pod and its CiliumEndpoint. A pod found gone, replaced or managed
    meanwhile is left out. `on_wait(seconds, left)` is told before each wait for the rate limit."""
    bucket = recycle_bucket(options.rate, clock())
    to_evict = sum(c.plan.action is Action.RECYCLE for c in candidates)
    for candidate in candidates:
        if candidate.plan.action is Action.REPORT:
            yield _row(candidate, Outcome.REPORTED, WHY_NOT.get(candidate.plan.reason, candidate.plan.reason), clock())
            continue
        if options.dry_run:
            yield _row(candidate, Outcome.WOULD_EVICT, "no CiliumEndpoint past the grace period", clock())
            continue
        wait = bucket.wait_time(clock())
        if wait > 0:
            if on_wait is not None:
                on_wait(wait, to_evict)
            sleep(wait)
        row = _evict_one(client, options, candidate, clock())
        to_evict -= 1
        if row is None:
            continue
        if row.action is Outcome.EVICTED:
            bucket.take(clock())
        yield row


def _evict_one(client: Kube, options: RecycleOptions, candidate: Candidate, now: float) -> Row | None:
    f = candidate.situation.pod
    fresh = _call(client, options, f"get pod {f.namespace}/{f.name}",
                  lambda: kube.get_pod(client, f.namespace, f.name, options.timeout))
    if fresh is None or str((fresh.get("metadata") or {}).get("uid") or "") != f.uid:
        return None
    endpoint = _call(client, options, f"get ciliumendpoints.cilium.io {f.namespace}/{f.name}",
                     lambda: kube.get_cilium_endpoint(client, f.namespace, f.name, options.timeout))
    facts = pod_facts(fresh, options.gate_condition)
    situation = Situation(pod=facts, endpoint_state=endpoint_state(endpoint, facts.uid),
                          node=candidate.situation.node)
    step = plan_unmanaged(situation, candidate.owner, options.timings, now, include_bare=options.include_bare)
    if step.action is Action.REPORT:
        return _row(candidate, Outcome.REPORTED, WHY_NOT.get(step.reason, step.reason), now)
    if step.action is not Action.RECYCLE:
        return None  # managed, finished or leaving by now
    try:
        kube.evict_pod(client, f.namespace, f.name, f.uid, options.timeout)
    except ApiError as err:
        if err.status == EVICTION_REFUSED:
            later = f"; retry after {err.retry_after:g} s" if err.retry_after else ""
            message = " ".join(err.message.split()).rstrip(".")
            return _row(candidate, Outcome.REFUSED, f"{message}{later}", now)
        if err.status in EVICTION_GONE:
            return None
        raise RecycleError(err.describe(f"evict pod {f.namespace}/{f.name}", server=kube.server_url(client),
                                        timeout=options.timeout, rbac=RECYCLE_RBAC)) from None
    return _row(candidate, Outcome.EVICTED, "no CiliumEndpoint past the grace period", now)


def _row(candidate: Candidate, action: Outcome, reason: str, now: float) -> Row:
    f = candidate.situation.pod
    return Row(f.namespace, f.name, f.node_name, candidate.owner.owner,
               None if f.started_at is None else max(0.0, now - f.started_at), action, reason)


# --- output -----------------------------------------------------------------------------------------------------


def render_json_line(row: Row) -> str:
    return orjson.dumps(row.as_json()).decode() + "\n"


def render_table(rows: list[Row], dry_run: bool) -> str:
    if not rows:
        return "no unmanaged pods in scope\n"
    lines = format_columns([("POD", "NODE", "OWNER", "AGE", "ACTION", "REASON")] + [
        (f"{r.namespace}/{r.name}", r.node, str(r.owner), _age(r.age), str(r.action), r.reason) for r in rows])
    return "\n".join([*lines, "", summary(rows, dry_run)]) + "\n"


def summary(rows: list[Row], dry_run: bool) -> str:
    counts = {o: sum(r.action is o for r in rows) for o in Outcome}
    done = (f"{counts[Outcome.WOULD_EVICT]} would be evicted (dry run)" if dry_run
            else f"{counts[Outcome.EVICTED]} evicted, {counts[Outcome.REFUSED]} refused by a PodDisruptionBudget")
    return f"{len(rows)} unmanaged pod(s): {done}, {counts[Outcome.REPORTED]} reported only"


def exit_status(rows: list[Row]) -> int:
    """0 when nothing unmanaged is left in scope (every one evicted), 1 when some remain."""
    return 0 if all(r.action is Outcome.EVICTED for r in rows) else 1


def _age(seconds: float | None) -> str:
    """As kubectl prints an age: 45s, 12m, 5h, 3d."""
    if seconds is None:
        return "-"
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"
