"""Builders for the Kubernetes objects the controller tests store in the fake API server, and the API calls
(with the RBAC they need) of the controller and of `certs --in-cluster`."""

from __future__ import annotations

import time
from typing import Any

from tests.fakekube import Request
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


def agent_pod(node_name: str, *, ready: bool = True, name: str | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name or f"cilium-{node_name}", "namespace": CILIUM_NAMESPACE,
                         "labels": {"k8s-app": "cilium"}},
            "spec": {"nodeName": node_name, "hostNetwork": True,
                     "containers": [{"name": "cilium-agent", "image": "quay.io/cilium/cilium:v1.16"}]},
            "status": {"phase": "Running", "startTime": stamp(),
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


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
# --lease-namespace. tests/test_controller.py checks the calls against it, tests/test_manifests.py the RBAC.
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


def authorization(request: Request) -> tuple[str, str, str, str, str | None]:
    """The (namespace, apiGroup, resource, verb, resourceName) an API server authorizes a resource request as."""
    parts = [p for p in request.path.split("/") if p]
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource = "/".join([rest[0], *rest[2:3]])
    name = rest[1] if len(rest) > 1 else None
    verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection"}.get(request.method)
    if verb is None:
        verb = "get" if name else ("watch" if request.query.get("watch") == "true" else "list")
    return namespace, group, resource, verb, name


def is_granted(call: tuple[str, str, str, str, str | None],
               grants: set[tuple[str, str, str, str, str | None]]) -> bool:
    """RBAC's rule: a grant without a resourceName covers every name, one with a name only that name."""
    *scope, name = call
    return any(tuple(g[:4]) == tuple(scope) and g[4] in (None, name) for g in grants)
