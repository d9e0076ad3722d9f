"""Builders for the Kubernetes objects the controller tests store in the fake API server, and the API calls
(with the RBAC they need) of the controller and of `certs --in-cluster`."""

from __future__ import annotations

import time
from typing import Any

from webhook.certs import CA_SECRET_SUFFIX, DEFAULT_NAMESPACE, DEFAULT_SECRET, DEFAULT_WEBHOOK_CONFIGURATION
from webhook.policy import CILIUM_TAINT_KEY, DEFAULT_GATE_CONDITION, DEFAULT_GATE_LABEL

GATE = DEFAULT_GATE_CONDITION
GATE_LABEL = DEFAULT_GATE_LABEL
CILIUM_NAMESPACE = "kube-system"


def stamp(epoch: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if epoch is None else epoch))


def gated_pod(name: str, namespace: str = "default", node: str = "node-a", *, phase: str = "Running",
              ip: str = "10.0.0.5", started: float | None = None, gate_true: bool = False,
              host_network: bool = False, labels: dict[str, str] | None = None) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}]
    if gate_true:
        conditions.append({"type": GATE, "status": "True"})
    status: dict[str, Any] = {"phase": phase, "conditions": conditions}
    if phase == "Running":
        status["startTime"] = stamp(started)
        if ip:
            status["podIP"] = ip
    spec: dict[str, Any] = {"containers": [{"name": "agent", "image": "example/agent:1"}],
                            "readinessGates": [{"conditionType": GATE}]}
    if node:
        spec["nodeName"] = node
    if host_network:
        spec["hostNetwork"] = True
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {GATE_LABEL: "true", "app": "node-agent", **(labels or {})}},
            "spec": spec, "status": status}


def node(name: str, *, tainted: bool = False) -> dict[str, Any]:
    taints = [{"key": CILIUM_TAINT_KEY, "value": "true", "effect": "NoExecute"}] if tainted else []
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {"taints": taints}}


def agent_pod(node_name: str, *, ready: bool = True, name: str | None = None,
              ready_since: float | None = None) -> dict[str, Any]:
    """A Cilium agent pod; its Ready condition last changed at `ready_since` (default: an hour ago)."""
    since = stamp(time.time() - 3600 if ready_since is None else ready_since)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name or f"cilium-{node_name}", "namespace": CILIUM_NAMESPACE,
                         "labels": {"k8s-app": "cilium"}},
            "spec": {"nodeName": node_name, "hostNetwork": True,
                     "containers": [{"name": "cilium-agent", "image": "quay.io/cilium/cilium:v1.16"}]},
            "status": {"phase": "Running", "startTime": stamp(),
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                       "lastTransitionTime": since}]}}


def endpoint(pod: dict[str, Any], *, state: str = "ready") -> dict[str, Any]:
    """A CiliumEndpoint as the agent writes it: the pod's name, namespace and labels, the pod as owner."""
    metadata = pod["metadata"]
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint",
            "metadata": {"name": metadata["name"], "namespace": metadata["namespace"],
                         "labels": dict(metadata.get("labels") or {}),
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": metadata["name"],
                                              "uid": metadata.get("uid", "")}]},
            "status": {"id": 1234, "state": state,
                       "networking": {"addressing": [{"ipv4": (pod.get("status") or {}).get("podIP", "")}]}}}


def gate_status(pod: dict[str, Any] | None) -> str | None:
    for condition in ((pod or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == GATE:
            return str(condition.get("status"))
    return None


# The controller's API calls as (apiGroup, resource, verb): every one cluster-wide except leases, which live in
# --lease-namespace. tests/test_controller_loop.py checks the calls against it, tests/test_manifests.py the RBAC.
CONTROLLER_RBAC = {
    ("", "pods", "get"), ("", "pods", "list"), ("", "pods", "watch"),
    ("", "pods/status", "patch"),
    ("", "pods/eviction", "create"),
    ("", "nodes", "list"), ("", "nodes", "watch"),
    ("cilium.io", "ciliumendpoints", "get"), ("cilium.io", "ciliumendpoints", "list"),
    ("cilium.io", "ciliumendpoints", "watch"),
    ("events.k8s.io", "events", "create"),
    ("coordination.k8s.io", "leases", "get"), ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"),
}
# Scope `all` adds the cilium-config ConfigMap (read once at start-up, in --cilium-namespace); observing unmanaged
# pods evicts none, so it makes neither the eviction nor the reads just before one. Recycling them adds the reads of
# their owners (manifests/components/unmanaged-recycle).
CILIUM_CONFIG_READ = ("", "configmaps", "get")
OWNER_READS = {("apps", "replicasets", "get"), ("apps", "statefulsets", "get"), ("apps", "daemonsets", "get"),
               ("batch", "jobs", "get")}
CONTROLLER_RBAC_ALL_OBSERVE = (CONTROLLER_RBAC - {("", "pods", "get"), ("", "pods/eviction", "create"),
                                                  ("cilium.io", "ciliumendpoints", "get")}) | {CILIUM_CONFIG_READ}
CONTROLLER_RBAC_ALL_RECYCLE = CONTROLLER_RBAC | {CILIUM_CONFIG_READ} | OWNER_READS


def daemonset_pod(daemonset: dict[str, Any], name: str, node_name: str = "node-a", *, phase: str = "Running",
                  host_network: bool = False, terminating: bool = False, owner_uid: str | None = None,
                  ) -> dict[str, Any]:
    """A pod as the DaemonSet controller makes it: in the DaemonSet's namespace, owned by it (by uid)."""
    metadata = daemonset["metadata"]
    uid = metadata.get("uid", "") if owner_uid is None else owner_uid
    pod_metadata: dict[str, Any] = {
        "name": name, "namespace": metadata["namespace"],
        "labels": dict(((daemonset.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}),
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": metadata["name"], "uid": uid,
                             "controller": True, "blockOwnerDeletion": True}]}
    if terminating:
        pod_metadata["deletionTimestamp"] = stamp()
    spec: dict[str, Any] = {"nodeName": node_name, "containers": [{"name": "main", "image": "example/main:1"}]}
    if host_network:
        spec["hostNetwork"] = True
    status: dict[str, Any] = {"phase": phase}
    if phase == "Running":
        status.update(startTime=stamp(), podIP="10.0.1.7")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_metadata, "spec": spec, "status": status}


def workload_pod(name: str, namespace: str = "default", node_name: str = "node-a", *,
                 owner: tuple[str, str, str] | None = None, phase: str = "Running", ip: str = "10.0.2.9",
                 started: float | None = None, host_network: bool = False, mirror: bool = False,
                 labels: dict[str, str] | None = None) -> dict[str, Any]:
    """An ungated pod as its owner (kind, name, uid) makes it; owner None is a bare pod, `mirror` a static pod's
    mirror (annotated, and owned by its Node)."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels or {"app": name})}
    if owner is not None:
        kind, owner_name, uid = owner
        metadata["ownerReferences"] = [{"apiVersion": "batch/v1" if kind == "Job" else "apps/v1", "kind": kind,
                                        "name": owner_name, "uid": uid, "controller": True,
                                        "blockOwnerDeletion": True}]
    if mirror:
        metadata["annotations"] = {"kubernetes.io/config.mirror": "5f2a", "kubernetes.io/config.source": "file"}
        metadata["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": "node-uid",
                                        "controller": True}]
    spec: dict[str, Any] = {"nodeName": node_name, "containers": [{"name": "main", "image": "example/app:1"}]}
    if host_network:
        spec["hostNetwork"] = True
    status: dict[str, Any] = {"phase": phase}
    if phase == "Running":
        status.update(startTime=stamp(started), podIP=ip,
                      containerStatuses=[{"name": "main", "ready": True,
                                          "state": {"running": {"startedAt": stamp(started)}}}])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": status}


def owner_object(kind: str, name: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    """A ReplicaSet, StatefulSet, DaemonSet or Job, just enough for the owner checks."""
    api = "batch/v1" if kind == "Job" else "apps/v1"
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": 1, **spec} if kind in ("ReplicaSet", "StatefulSet") else dict(spec)}


def with_taints(the_node: dict[str, Any], *taints: dict[str, str]) -> dict[str, Any]:
    the_node["spec"]["taints"] = [*the_node["spec"]["taints"], *taints]
    return the_node


# What `audit` calls, as (apiGroup, resource, verb): the ClusterRole in docs/review-and-audit.md grants exactly these.
AUDIT_RBAC = {
    ("apps", "daemonsets", "list"), ("", "pods", "list"), ("", "nodes", "list"),
    ("cilium.io", "ciliumendpoints", "list"),
}


# What `recycle` calls, as (apiGroup, resource, verb): its ClusterRole in docs/review-and-audit.md grants exactly
# these. A --dry-run needs neither the eviction nor the gets of pods and CiliumEndpoints just before one.
RECYCLE_RBAC = {
    ("", "pods", "list"), ("", "pods", "get"), ("", "pods/eviction", "create"), ("", "nodes", "list"),
    ("cilium.io", "ciliumendpoints", "list"), ("cilium.io", "ciliumendpoints", "get"),
} | OWNER_READS


# What `certs --in-cluster` may do, as (namespace or "" for cluster-wide, apiGroup, resource, verb, resourceName or
# None), one line per grant, for the names of manifests/overlays/self-managed-job. tests/test_manifests.py checks
# the overlay's RBAC against it, tests/test_certs_cluster.py the calls the command makes. `create` cannot be
# limited by name: the authorizer sees no name before the object exists.
CERTS_JOB_GRANTS = {
    (DEFAULT_NAMESPACE, "", "secrets", "create", None),
    *((DEFAULT_NAMESPACE, "", "secrets", verb, name) for verb in ("get", "update")
      for name in (DEFAULT_SECRET, DEFAULT_SECRET + CA_SECRET_SUFFIX)),
    *(("", "admissionregistration.k8s.io", resource, verb, DEFAULT_WEBHOOK_CONFIGURATION)
      for resource in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations")
      for verb in ("get", "patch")),
}

