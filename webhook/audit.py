"""`audit`: every DaemonSet (and object of the other configured kinds) of a live cluster under the webhook's policy,
its pods Cilium does not manage, every unmanaged pod of any owner, and the nodes' NoExecute taints. `build_report` is
pure; `collect` lists through webhook.kube, never the client itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from webhook import kube, policy, workloads
from webhook.catalog import Offender
from webhook.cilium import is_cilium_taint
from webhook.config import DEFAULT_AGENT_SELECTOR, DEFAULT_CILIUM_NAMESPACE, DEFAULT_REQUEST_TIMEOUT
from webhook.controller.rules import has_gate
from webhook.kube import ApiError, Kube, Target
from webhook.policy import ExemptReason, PolicyConfig
from webhook.report import dump_json, format_columns
from webhook.unmanaged import Snapshot, namespaced_name, owner_facts, situations, snapshot_unmanaged
from webhook.workloads import KINDS, Kind

NOEXECUTE = "NoExecute"
# Only Running pods can be unmanaged; the server-side filter keeps finished Job pods out of the transfer.
RUNNING_PODS = "status.phase=Running"
AUDIT_RBAC = "the audit ClusterRole in docs/review-and-audit.md grants it"

_T = TypeVar("_T")


class AuditError(Exception):
    """The cluster cannot be audited; the message is one line for the person who ran the command. `status` is the
    API's answer (0: none) when an API call failed."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


# --- pure core -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """What the audit reads, as the API's JSON."""

    daemonsets: Sequence[Mapping[str, Any]]
    pods: Sequence[Mapping[str, Any]]  # pods of every namespace (only Running ones matter)
    nodes: Sequence[Mapping[str, Any]]
    agent_pods: Sequence[Mapping[str, Any]]  # the Cilium agent pods
    endpoints: Sequence[Mapping[str, Any]] | None  # CiliumEndpoints; None when they could not be listed
    # The objects of the other configured kinds (bare Pods: the running pods above), and the ReplicaSets and Jobs
    # through which a Deployment's or a CronJob's pods are counted.
    workloads: Mapping[Kind, Sequence[Mapping[str, Any]]] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkloadAudit:
    namespace: str
    name: str
    finding: bool
    blanket_tolerations: tuple[Mapping[str, Any], ...]
    exempt_reason: ExemptReason | None
    gated: bool  # its template carries the readiness gate, or (a DaemonSet) its running pods do
    unmanaged_pods: int | None
    fix: Offender | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace, "name": self.name, "finding": self.finding,
            "blanket_tolerations": [dict(t) for t in self.blanket_tolerations],
            "exempt_reason": self.exempt_reason.value if self.exempt_reason else None,
            "gated": self.gated, "unmanaged_pods": self.unmanaged_pods,
            "fix": self.fix.as_json() if self.fix else None,
        }


DaemonSetAudit = WorkloadAudit


@dataclass(frozen=True)
class TaintCount:
    key: str
    value: str | None  # None for a taint without a value (the API omits an empty one)
    effect: str
    nodes: int

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "effect": self.effect, "nodes": self.nodes}

    def __str__(self) -> str:
        # As `kubectl taint` spells it.
        return f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"


@dataclass(frozen=True)
class UnmanagedPod:
    namespace: str
    name: str
    node: str
    owner_kind: str | None  # the controlling owner; None for a bare pod
    owner_name: str | None

    def as_json(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "node": self.node, "owner_kind": self.owner_kind,
                "owner_name": self.owner_name}


@dataclass(frozen=True)
class Report:
    daemonsets: tuple[WorkloadAudit, ...]
    node_noexecute_taints: tuple[TaintCount, ...]
    others: tuple[tuple[Kind, tuple[WorkloadAudit, ...]], ...] = ()  # the other configured kinds, in Kind order
    unmanaged_pods: tuple[UnmanagedPod, ...] | None = ()  # every owner's; None when endpoints could not be listed

    def as_json(self) -> dict[str, Any]:
        """`daemonsets` exactly as before, one array per other configured kind (same fields), the taints, then
        every unmanaged pod."""
        return {"daemonsets": [d.as_json() for d in self.daemonsets],
                **{KINDS[kind].plural: [a.as_json() for a in audits] for kind, audits in self.others},
                "node_noexecute_taints": [t.as_json() for t in self.node_noexecute_taints],
                "unmanaged_pods": None if self.unmanaged_pods is None else [p.as_json() for p in self.unmanaged_pods]}

    @property
    def findings(self) -> int:
        return sum(d.finding for d in self.daemonsets) + sum(a.finding for _, audits in self.others for a in audits)


def build_report(cluster: Cluster, config: PolicyConfig) -> Report:
    pods = _unmanaged(cluster, config)
    unmanaged = None if pods is None else _by_owner(pods)
    gated_pods = _gated_owners(cluster.pods, config.gate_condition_type)
    daemonsets = _audit_all(Kind.DAEMONSET, cluster.daemonsets, config, unmanaged, gated_pods)
    others = []
    for kind in Kind:
        if kind is Kind.DAEMONSET or kind not in config.kinds:
            continue
        objects = cluster.pods if kind is Kind.POD else cluster.workloads.get(kind, ())
        reviewed = [o for o in objects if policy.is_reviewed(kind, o, "CREATE", config)]
        counts = _rolled_up(kind, cluster, unmanaged)
        others.append((kind, _audit_all(kind, reviewed, config, counts, Counter())))
    listed = None if pods is None else tuple(sorted((_unmanaged_pod(p) for p in pods),
                                                   key=lambda p: (p.namespace, p.name)))
    return Report(daemonsets, noexecute_taints(cluster.nodes, config.cilium_taint_key), tuple(others), listed)


def _audit_all(kind: Kind, objects: Sequence[Mapping[str, Any]], config: PolicyConfig,
               unmanaged: Counter[str] | None, gated_pods: Counter[str]) -> tuple[WorkloadAudit, ...]:
    audits = []
    for obj in objects:
        try:
            found = policy.assess(obj, config, kind=kind)
        except policy.MalformedObject as err:  # the API validates these objects, so this takes a strange server
            raise AuditError(f"{kind.value} {_ref(obj)}: {err}") from None
        uid = str((obj.get("metadata") or {}).get("uid") or "")
        audits.append(WorkloadAudit(
            namespace=found.ref.namespace, name=found.ref.name, finding=found.finding,
            blanket_tolerations=tuple(t for _, t in found.blanket), exempt_reason=found.exempt_reason,
            gated=found.gated or gated_pods[uid] > 0,
            unmanaged_pods=None if unmanaged is None else unmanaged[uid], fix=found.offender,
        ))
    audits.sort(key=lambda d: (d.namespace, d.name))
    return tuple(audits)


def _gated_owners(pods: Sequence[Mapping[str, Any]], condition_type: str) -> Counter[str]:
    """Running pods that carry the readiness gate, by the uid of their controller (the gate at Pod CREATE)."""
    counts: Counter[str] = Counter()
    for pod in pods:
        owner = workloads.controller_of(pod)
        if owner is not None and has_gate(pod, condition_type):
            counts[str(owner.get("uid") or "")] += 1
    return counts


def _rolled_up(kind: Kind, cluster: Cluster, unmanaged: Counter[str] | None) -> Counter[str] | None:
    """Unmanaged pods by owner uid, with a Deployment's counted through its ReplicaSets and a CronJob's through
    its Jobs; a bare pod counts itself."""
    if unmanaged is None:
        return None
    if kind is Kind.POD:
        return Counter({str((p.get("metadata") or {}).get("uid") or ""): unmanaged.get(
            "pod:" + str((p.get("metadata") or {}).get("uid") or ""), 0) for p in cluster.pods})
    middle = {Kind.DEPLOYMENT: Kind.REPLICASET, Kind.CRONJOB: Kind.JOB}.get(kind)
    if middle is None:
        return unmanaged
    counts: Counter[str] = Counter()
    for child in cluster.workloads.get(middle, ()):
        owner = workloads.controller_of(child)
        if owner is not None:
            counts[str(owner.get("uid") or "")] += unmanaged[str((child.get("metadata") or {}).get("uid") or "")]
    return counts


def noexecute_taints(nodes: Sequence[Mapping[str, Any]], cilium_taint_key: str) -> tuple[TaintCount, ...]:
    """The distinct NoExecute taints (key, value) other than Cilium's, with how many nodes carry each."""
    counts: Counter[tuple[str, str | None]] = Counter()
    for node in nodes:
        taints = (node.get("spec") or {}).get("taints") or []
        counts.update({(str(t.get("key") or ""), str(t.get("value") or "") or None) for t in taints
                       if isinstance(t, Mapping) and t.get("effect") == NOEXECUTE
                       and not is_cilium_taint(t, cilium_taint_key)})
    return tuple(TaintCount(key, value, NOEXECUTE, n)
                 for (key, value), n in sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")))


def _unmanaged(cluster: Cluster, config: PolicyConfig) -> list[Mapping[str, Any]] | None:
    """The pods Cilium does not manage right now, of every owner; None when CiliumEndpoints could not be listed."""
    if cluster.endpoints is None:
        return None
    snapshot = Snapshot(cluster.pods, cluster.nodes, cluster.agent_pods, cluster.endpoints)
    return [pod for pod, situation in situations(snapshot, config.cilium_taint_key, config.gate_condition_type)
            if snapshot_unmanaged(situation)]


def _by_owner(pods: Sequence[Mapping[str, Any]]) -> Counter[str]:
    """Unmanaged pods counted by the uid of each owner, and each by its own uid ("pod:<uid>", for bare pods)."""
    counts: Counter[str] = Counter()
    for pod in pods:
        metadata = pod.get("metadata") or {}
        counts.update({str(o.get("uid")) for o in metadata.get("ownerReferences") or []
                       if isinstance(o, Mapping) and o.get("uid")})
        counts[f"pod:{metadata.get('uid') or ''}"] += 1
    return counts


def _unmanaged_pod(pod: Mapping[str, Any]) -> UnmanagedPod:
    owner = owner_facts(pod).owner
    namespace, name = namespaced_name(pod)
    return UnmanagedPod(namespace, name, str((pod.get("spec") or {}).get("nodeName") or ""), owner.kind or None,
                        owner.name or None)


def _ref(obj: Mapping[str, Any]) -> str:
    return str(policy.ObjectRef(*namespaced_name(obj)))


# --- output --------------------------------------------------------------------------------------------------


def render_json(report: Report) -> str:
    return dump_json(report.as_json())


def render_table(report: Report, config: PolicyConfig) -> str:
    lines = _workload_table("DAEMONSET", report.daemonsets) if report.daemonsets else ["no DaemonSets in this cluster"]
    for kind, audits in report.others:
        lines.append("")
        lines += _workload_table(kind.value.upper(), audits) if audits else [f"no {kind.value}s to audit"]
    fixes = [(kind, a) for kind, audits in ((Kind.DAEMONSET, report.daemonsets), *report.others)
             for a in audits if a.finding and a.fix is not None]
    if fixes:
        lines.append("")
        lines += [f"fix {kind.value} {a.namespace}/{a.name}: {a.fix.chart} chart values: {a.fix.fix}"
                  for kind, a in fixes if a.fix is not None]
    lines.append("")
    if report.node_noexecute_taints:
        lines += format_columns([(f"NODE NOEXECUTE TAINT (besides {config.cilium_taint_key})", "NODES")]
                                + [(str(t), str(t.nodes)) for t in report.node_noexecute_taints])
    else:
        lines.append(f"no NoExecute taints on nodes besides {config.cilium_taint_key}")
    if report.unmanaged_pods:
        lines.append("")
        lines += format_columns([("UNMANAGED POD", "NODE", "OWNER")] + [
            (f"{p.namespace}/{p.name}", p.node, f"{p.owner_kind}/{p.owner_name}" if p.owner_kind else "-")
            for p in report.unmanaged_pods])
    lines.append("")
    lines.append(_summary(report))
    return "\n".join(lines) + "\n"


def _workload_table(header: str, audits: Sequence[WorkloadAudit]) -> list[str]:
    rows = [(header, "RESULT", "BLANKET TOLERATIONS", "GATED", "UNMANAGED PODS")]
    for d in audits:
        result = "finding" if d.finding else f"exempt: {d.exempt_reason}" if d.exempt_reason else "ok"
        rows.append((
            f"{d.namespace}/{d.name}", result,
            ", ".join(policy.describe_toleration(t) for t in d.blanket_tolerations) or "-",
            "yes" if d.gated else "no", "n/a" if d.unmanaged_pods is None else str(d.unmanaged_pods),
        ))
    return format_columns(rows)


def _summary(report: Report) -> str:
    every = [*report.daemonsets, *(a for _, audits in report.others for a in audits)]
    exempt = sum(d.exempt_reason is not None for d in every)
    unmanaged = ("unmanaged pods unknown (CiliumEndpoints could not be listed)" if report.unmanaged_pods is None
                 else f"{len(report.unmanaged_pods)} pod(s) not managed by Cilium")
    audited = ", ".join([f"{len(report.daemonsets)} DaemonSet(s)",
                         *(f"{len(audits)} {kind.value}(s)" for kind, audits in report.others)])
    return (f"{audited} audited: {report.findings} with a blanket NoExecute toleration, {exempt} exempt; "
            f"{unmanaged}")


def exit_status(report: Report) -> int:
    """As for `review`: 1 when a DaemonSet has a finding, else 0 (errors, 2, never reach a report)."""
    return 1 if report.findings else 0


# --- gathering through the API -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditOptions:
    timeout: float = DEFAULT_REQUEST_TIMEOUT  # bounds each API request, connecting included; requests are not retried
    cilium_namespace: str = DEFAULT_CILIUM_NAMESPACE
    agent_selector: str = DEFAULT_AGENT_SELECTOR
    page_size: int = kube.LIST_PAGE_SIZE  # tests shorten it


# What each configured kind needs listed besides DaemonSets, pods and nodes: a Deployment's pods are counted
# through its ReplicaSets, a CronJob's through its Jobs. Bare Pods come from the pod list itself.
_LISTED: dict[Kind, tuple[Kind, ...]] = {
    Kind.DEPLOYMENT: (Kind.DEPLOYMENT, Kind.REPLICASET), Kind.STATEFULSET: (Kind.STATEFULSET,),
    Kind.REPLICASET: (Kind.REPLICASET,), Kind.JOB: (Kind.JOB,), Kind.CRONJOB: (Kind.CRONJOB, Kind.JOB),
}
_RESOURCES = {Kind.DEPLOYMENT: kube.DEPLOYMENTS, Kind.STATEFULSET: kube.STATEFULSETS,
              Kind.REPLICASET: kube.REPLICASETS, Kind.JOB: kube.JOBS, Kind.CRONJOB: kube.CRONJOBS}


def collect(client: Kube, options: AuditOptions, kinds: frozenset[Kind] = frozenset({Kind.DAEMONSET})
            ) -> tuple[Cluster, str | None]:
    """The lists the report needs, and a warning when CiliumEndpoints could not be listed (absent or forbidden:
    the report then says null rather than guessing). Raises AuditError, with one line saying why, otherwise."""
    daemonsets = _list(client, options, Target(kube.DAEMONSETS), "daemonsets.apps")
    pods = _list(client, options, Target(kube.PODS, field_selector=RUNNING_PODS), "pods")
    nodes = _list(client, options, Target(kube.NODES), "nodes")
    agents = _list(client, options, Target(kube.PODS, namespace=options.cilium_namespace,
                                           label_selector=options.agent_selector),
                   f"pods in namespace {options.cilium_namespace} (the Cilium agents)")
    endpoints, warning = _endpoints(client, options)
    listed = {listed for kind in kinds for listed in _LISTED.get(kind, ())}
    others = {kind: _list(client, options, Target(_RESOURCES[kind]), f"{KINDS[kind].plural}.{KINDS[kind].group}")
              for kind in Kind if kind in listed}
    return Cluster(daemonsets, pods, nodes, agents, endpoints, others), warning


def _endpoints(client: Kube, options: AuditOptions) -> tuple[list[dict[str, Any]] | None, str | None]:
    what = "ciliumendpoints.cilium.io"
    absent = f"the API does not serve {what}/v2 (is Cilium installed?)"
    try:
        if not _call(client, options, what, lambda: kube.has_resource(client, kube.CILIUM_ENDPOINTS, options.timeout)):
            return None, absent
        return _list(client, options, Target(kube.CILIUM_ENDPOINTS), what), None
    except AuditError as err:
        if err.status == 404:  # discovery lists it, yet the list is not served (or it went away meanwhile)
            return None, absent
        if err.status == 403:
            return None, str(err)
        raise


def _list(client: Kube, options: AuditOptions, target: Target, what: str) -> list[dict[str, Any]]:
    return _call(client, options, what,
                 lambda: kube.list_all(client, target, options.page_size, options.timeout)[0])


def _call(client: Kube, options: AuditOptions, what: str, call: Callable[[], _T]) -> _T:
    try:
        return call()
    except ApiError as err:
        raise AuditError(err.describe(f"list {what}", server=kube.server_url(client), timeout=options.timeout,
                                      rbac=AUDIT_RBAC), err.status) from None
    except orjson.JSONDecodeError:  # a 200 answer that is not JSON
        raise AuditError(f"listing {what}: the answer from {kube.server_url(client)} is not JSON; is it a "
                         f"Kubernetes API server?") from None
