"""`audit`: every DaemonSet of a live cluster under the webhook's policy, its pods Cilium does not manage, and
the nodes' NoExecute taints. `build_report` is pure; `collect` lists through webhook.kube, never the client itself.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from webhook import kube, policy
from webhook.cilium import AgentState, agent_state, endpoint_state, is_cilium_taint
from webhook.config import DEFAULT_AGENT_SELECTOR, DEFAULT_AUDIT_TIMEOUT, DEFAULT_CILIUM_NAMESPACE
from webhook.kube import ApiError, Kube, Target
from webhook.policy import ExemptReason, PolicyConfig
from webhook.report import dump_json, format_columns

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


@dataclass(frozen=True)
class DaemonSetAudit:
    namespace: str
    name: str
    finding: bool
    blanket_tolerations: tuple[Mapping[str, Any], ...]
    exempt_reason: ExemptReason | None
    gated: bool
    unmanaged_pods: int | None

    def as_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace, "name": self.name, "finding": self.finding,
            "blanket_tolerations": [dict(t) for t in self.blanket_tolerations],
            "exempt_reason": self.exempt_reason.value if self.exempt_reason else None,
            "gated": self.gated, "unmanaged_pods": self.unmanaged_pods,
        }


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
class Report:
    daemonsets: tuple[DaemonSetAudit, ...]
    node_noexecute_taints: tuple[TaintCount, ...]

    def as_json(self) -> dict[str, Any]:
        return {"daemonsets": [d.as_json() for d in self.daemonsets],
                "node_noexecute_taints": [t.as_json() for t in self.node_noexecute_taints]}

    @property
    def findings(self) -> int:
        return sum(d.finding for d in self.daemonsets)


def build_report(cluster: Cluster, config: PolicyConfig) -> Report:
    unmanaged = _unmanaged_by_owner(cluster, config.cilium_taint_key)
    audits = []
    for ds in cluster.daemonsets:
        try:
            found = policy.assess(ds, config)
        except policy.MalformedObject as err:  # the API validates DaemonSets, so this takes a strange server
            raise AuditError(f"DaemonSet {_ref(ds)}: {err}") from None
        uid = str((ds.get("metadata") or {}).get("uid") or "")
        audits.append(DaemonSetAudit(
            namespace=found.ref.namespace, name=found.ref.name, finding=found.finding,
            blanket_tolerations=tuple(t for _, t in found.blanket), exempt_reason=found.exempt_reason,
            gated=found.gated, unmanaged_pods=None if unmanaged is None else unmanaged[uid],
        ))
    audits.sort(key=lambda d: (d.namespace, d.name))
    return Report(tuple(audits), noexecute_taints(cluster.nodes, config.cilium_taint_key))


def is_unmanaged(pod: Mapping[str, Any], endpoint: Mapping[str, Any] | None, agent: AgentState) -> bool:
    """Running on the pod network, not terminating, where the Cilium agent is ready, and no CiliumEndpoint of its
    own: an endpoint owned by an earlier pod of the same name does not count (the controller's stance)."""
    metadata, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    return (status.get("phase") == "Running"
            and spec.get("hostNetwork") is not True
            and metadata.get("deletionTimestamp") is None
            and agent is AgentState.READY
            and endpoint_state(endpoint, str(metadata.get("uid") or "")) is None)


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


def _unmanaged_by_owner(cluster: Cluster, taint_key: str) -> Counter[str] | None:
    """Unmanaged pods counted by the uid of each owner; None when CiliumEndpoints could not be listed."""
    if cluster.endpoints is None:
        return None
    endpoints = {_key(e): e for e in cluster.endpoints}
    nodes = {str((n.get("metadata") or {}).get("name") or ""): n for n in cluster.nodes}
    agents: defaultdict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for agent in cluster.agent_pods:
        agents[str((agent.get("spec") or {}).get("nodeName") or "")].append(agent)
    states: dict[str, AgentState] = {}
    counts: Counter[str] = Counter()
    for pod in cluster.pods:
        node = str((pod.get("spec") or {}).get("nodeName") or "")
        if node not in states:
            states[node] = agent_state(nodes.get(node), agents.get(node, []), taint_key)
        if is_unmanaged(pod, endpoints.get(_key(pod)), states[node]):
            counts.update({str(o.get("uid")) for o in (pod.get("metadata") or {}).get("ownerReferences") or []
                           if isinstance(o, Mapping) and o.get("uid")})
    return counts


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("namespace") or ""), str(metadata.get("name") or "")


def _ref(obj: Mapping[str, Any]) -> str:
    return str(policy.ObjectRef(*_key(obj)))


# --- output --------------------------------------------------------------------------------------------------


def render_json(report: Report) -> str:
    return dump_json(report.as_json())


def render_table(report: Report, config: PolicyConfig) -> str:
    rows = [("DAEMONSET", "RESULT", "BLANKET TOLERATIONS", "GATED", "UNMANAGED PODS")]
    for d in report.daemonsets:
        result = "finding" if d.finding else f"exempt: {d.exempt_reason}" if d.exempt_reason else "ok"
        rows.append((
            f"{d.namespace}/{d.name}", result,
            ", ".join(policy.describe_toleration(t) for t in d.blanket_tolerations) or "-",
            "yes" if d.gated else "no", "n/a" if d.unmanaged_pods is None else str(d.unmanaged_pods),
        ))
    lines = format_columns(rows) if report.daemonsets else ["no DaemonSets in this cluster"]
    lines.append("")
    if report.node_noexecute_taints:
        lines += format_columns([(f"NODE NOEXECUTE TAINT (besides {config.cilium_taint_key})", "NODES")]
                                + [(str(t), str(t.nodes)) for t in report.node_noexecute_taints])
    else:
        lines.append(f"no NoExecute taints on nodes besides {config.cilium_taint_key}")
    lines.append("")
    lines.append(_summary(report))
    return "\n".join(lines) + "\n"


def _summary(report: Report) -> str:
    exempt = sum(d.exempt_reason is not None for d in report.daemonsets)
    counts = [d.unmanaged_pods for d in report.daemonsets]
    unmanaged = ("unmanaged pods unknown (CiliumEndpoints could not be listed)" if None in counts
                 else f"{sum(c or 0 for c in counts)} pod(s) not managed by Cilium")
    return (f"{len(report.daemonsets)} DaemonSet(s) audited: {report.findings} with a blanket NoExecute "
            f"toleration, {exempt} exempt; {unmanaged}")


def exit_status(report: Report) -> int:
    """As for `review`: 1 when a DaemonSet has a finding, else 0 (errors, 2, never reach a report)."""
    return 1 if report.findings else 0


# --- gathering through the API -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditOptions:
    timeout: float = DEFAULT_AUDIT_TIMEOUT  # bounds each API request, connecting included; requests are not retried
    cilium_namespace: str = DEFAULT_CILIUM_NAMESPACE
    agent_selector: str = DEFAULT_AGENT_SELECTOR
    page_size: int = kube.LIST_PAGE_SIZE  # tests shorten it


def collect(client: Kube, options: AuditOptions) -> tuple[Cluster, str | None]:
    """The lists the report needs, and a warning when CiliumEndpoints could not be listed (absent or forbidden:
    the report then says null rather than guessing). Raises AuditError, with one line saying why, otherwise."""
    daemonsets = _list(client, options, Target(kube.DAEMONSETS), "daemonsets.apps")
    pods = _list(client, options, Target(kube.PODS, field_selector=RUNNING_PODS), "pods")
    nodes = _list(client, options, Target(kube.NODES), "nodes")
    agents = _list(client, options, Target(kube.PODS, namespace=options.cilium_namespace,
                                           label_selector=options.agent_selector),
                   f"pods in namespace {options.cilium_namespace} (the Cilium agents)")
    endpoints, warning = _endpoints(client, options)
    return Cluster(daemonsets, pods, nodes, agents, endpoints), warning


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


