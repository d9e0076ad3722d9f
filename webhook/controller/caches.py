"""The gate controller's caches: an informer per list it watches (gated pods, CiliumEndpoints, nodes, Cilium agent
pods, and with scope `all` the scope's pods), each keeping summaries with by-node indexes, and what they tell
together: the pods on a node, a node's agent state, a pod any of them holds. Decides nothing; changes go to the
loop's callbacks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from webhook import kube
from webhook.backoff import Backoff
from webhook.cilium import AgentState
from webhook.controller.informer import Informer, OnChange, Transform
from webhook.controller.options import ControllerOptions
from webhook.controller.summaries import (
    PodSummary,
    agent_state,
    node_of_summary,
    summarize_agent,
    summarize_endpoint,
    summarize_node,
    summarize_pod,
    uid_of_summary,
)
from webhook.controller.workqueue import Key
from webhook.kube import ApiError, Kube, Target
from webhook.unmanaged import CANDIDATE_PODS, selections

BY_NODE = "node"


@dataclass(frozen=True)
class Callbacks:
    """What the loop does when a cached value changes (key, old and new summary) or the CiliumEndpoint resource
    comes or goes (is it served)."""

    on_pod: OnChange
    on_scoped_pod: OnChange
    on_endpoint: OnChange
    on_node: OnChange
    on_agent: OnChange
    on_endpoints_availability: Callable[[bool], None]


class Caches:
    """The informers of one controller, and the questions that read more than one of them."""

    def __init__(self, client: Kube, options: ControllerOptions, callbacks: Callbacks) -> None:
        self._kube = client
        self.options = o = options
        gate = o.gate_condition

        def pods(pod: dict[str, Any]) -> PodSummary:
            return summarize_pod(pod, gate)

        gated = Target(kube.PODS, label_selector=o.gate_selector)
        # Cilium copies the pod's labels onto its CiliumEndpoint, so the gate label selects these too; scope `all`
        # needs every pod's, the gated ones' included.
        endpoints = Target(kube.CILIUM_ENDPOINTS, label_selector=None if o.all_pods else o.gate_selector)
        self.pods = self._informer("gated-pods", gated, callbacks.on_pod, pods, by_node=True)
        self.endpoints = self._informer(
            "cilium-endpoints", endpoints, callbacks.on_endpoint, summarize_endpoint,
            on_availability=callbacks.on_endpoints_availability,
            lister=lambda version: self._list_endpoints(endpoints, version))
        self.nodes = self._informer("nodes", Target(kube.NODES), callbacks.on_node, summarize_node)
        self.agents = self._informer("cilium-agents", Target(
            kube.PODS, namespace=o.cilium_namespace, label_selector=o.agent_selector), callbacks.on_agent,
            summarize_agent, by_node=True)
        # Scope `all`: every Running pod on the pod network in the scope.
        self.scoped = [self._informer(
            f"scoped-pods-{s.namespace or 'all'}", Target(kube.PODS, s.namespace, s.label_selector,
                                                          s.field_selector or None),
            callbacks.on_scoped_pod, pods, by_node=True) for s in selections(o.unmanaged.pods, CANDIDATE_PODS)
        ] if o.all_pods else []
        self.all = (self.pods, self.endpoints, self.nodes, self.agents, *self.scoped)
        self._pod_caches = (self.pods, *self.scoped)

    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self.all)

    def pod_keys(self) -> Iterator[Key]:
        """Every pod the controller looks after, gated or in the scope (a key may come twice)."""
        for informer in self._pod_caches:
            yield from informer.cached_keys()

    def pods_on(self, node: str) -> set[Key]:
        return {key for informer in self._pod_caches for key in informer.by_index(BY_NODE, node)}

    def holds_pod(self, key: Key, uid: str) -> bool:
        """Whether the gated pods' cache or the scope's holds this pod (this uid) under `key`."""
        return any(uid_of_summary(informer.get(key)) == uid for informer in self._pod_caches)

    def scoped_pod(self, key: Key) -> PodSummary | None:
        for informer in self.scoped:
            pod: PodSummary | None = informer.get(key)
            if pod is not None:
                return pod
        return None

    def agent_state(self, node: str) -> AgentState:
        agents = [a for a in (self.agents.get(k) for k in self.agents.by_index(BY_NODE, node)) if a is not None]
        return agent_state(self.nodes.get(("", node)), agents, self.options.cilium_taint_key)

    def stop(self) -> None:
        for informer in self.all:
            informer.stop()

    def _informer(self, name: str, target: Target, on_change: OnChange, transform: Transform, *,
                  by_node: bool = False, on_availability: Callable[[bool], None] | None = None,
                  lister: Callable[[str], tuple[list[dict[str, Any]], str]] | None = None) -> Informer:
        o = self.options
        return Informer(
            name,
            lister or (lambda version: kube.list_all(self._kube, target, resource_version=version)),
            lambda version, timeout: kube.watch(self._kube, target, version, timeout),
            on_change,
            on_availability=on_availability,
            relist_period=o.relist_period,
            watch_timeout=o.watch_timeout,
            absent_recheck=o.absent_recheck,
            backoff=Backoff(o.backoff_initial, o.backoff_max),
            transform=transform,
            indexers={BY_NODE: node_of_summary} if by_node else None,
        )

    def _list_endpoints(self, target: Target, version: str) -> tuple[list[dict[str, Any]], str]:
        if not kube.has_resource(self._kube, kube.CILIUM_ENDPOINTS):
            raise ApiError(404, "API discovery does not list ciliumendpoints.cilium.io/v2")
        return kube.list_all(self._kube, target, resource_version=version)
