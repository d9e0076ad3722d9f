"""Objects of the size real clusters have, for bench/scale.py: gated DaemonSet pods, Cilium agent pods, Nodes and
CiliumEndpoints with the fields kube-apiserver returns (managedFields, container statuses, node images).

Shapes follow what `kubectl get -o json` shows for an EBS CSI node pod, a Cilium agent pod, an EKS node and a
CiliumEndpoint; sizes as JSON: pod ~7 KiB, node ~11 KiB, endpoint ~1.5 KiB. Nested parts that never change are
shared between objects (the fake API server never changes a stored object in place), so 10 000 pods cost the
driver little memory; the controller parses each one from JSON like any client.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

GATE = "startupguard.io/cilium-ready"
GATE_LABEL = "startupguard.io/gated"
CILIUM_TAINT = "node.cilium.io/agent-not-ready"
NAMESPACES = ("kube-system", "monitoring", "logging", "storage", "istio-system")


def stamp(epoch: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if epoch is None else epoch))


def _managed_fields(manager: str, operation: str, subresource: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "manager": manager, "operation": operation, "apiVersion": "v1", "time": stamp(), "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:generateName": {},
                                    "f:labels": {".": {}, "f:app": {}, "f:app.kubernetes.io/name": {},
                                                 "f:controller-revision-hash": {}, "f:pod-template-generation": {}},
                                    "f:ownerReferences": {".": {}, "k:{\"uid\":\"owner\"}": {}}},
                     "f:spec": {"f:affinity": {".": {}, "f:nodeAffinity": {".": {}}},
                                "f:containers": {f"k:{{\"name\":\"{c}\"}}": {".": {}, "f:args": {}, "f:env": {},
                                                                              "f:image": {}, "f:imagePullPolicy": {},
                                                                              "f:name": {}, "f:resources": {},
                                                                              "f:securityContext": {},
                                                                              "f:volumeMounts": {}}
                                                 for c in ("ebs-plugin", "node-driver-registrar", "liveness-probe")},
                                "f:readinessGates": {}, "f:tolerations": {}, "f:volumes": {}}},
    }
    if subresource:
        entry["subresource"] = subresource
        entry["fieldsV1"] = {"f:status": {"f:conditions": {}, "f:containerStatuses": {}, "f:hostIP": {},
                                          "f:phase": {}, "f:podIP": {}, "f:podIPs": {}, "f:startTime": {}}}
    return entry


def _container(name: str, image: str, args: list[str]) -> dict[str, Any]:
    return {
        "name": name, "image": image, "args": args, "imagePullPolicy": "IfNotPresent",
        "env": [{"name": "CSI_ENDPOINT", "value": "unix:/csi/csi.sock"},
                {"name": "CSI_NODE_NAME",
                 "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}}}],
        "resources": {"limits": {"memory": "256Mi"}, "requests": {"cpu": "10m", "memory": "40Mi"}},
        "securityContext": {"privileged": True, "readOnlyRootFilesystem": True},
        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
        "volumeMounts": [{"mountPath": "/var/lib/kubelet", "mountPropagation": "Bidirectional", "name": "kubelet-dir"},
                         {"mountPath": "/csi", "name": "plugin-dir"},
                         {"mountPath": "/dev", "name": "device-dir"},
                         {"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "name": "kube-api-access",
                          "readOnly": True}],
    }


_POD_SPEC_SHARED: dict[str, Any] = {
    "containers": [_container("ebs-plugin", "public.ecr.aws/ebs-csi-driver/aws-ebs-csi-driver:v1.35.0",
                              ["node", "--endpoint=$(CSI_ENDPOINT)", "--logging-format=text", "--v=2"]),
                   _container("node-driver-registrar",
                              "public.ecr.aws/csi-components/csi-node-driver-registrar:v2.11.1",
                              ["--csi-address=$(ADDRESS)", "--kubelet-registration-path=$(DRIVER_REG_SOCK_PATH)"]),
                   _container("liveness-probe", "public.ecr.aws/csi-components/livenessprobe:v2.13.1",
                              ["--csi-address=/csi/csi.sock"])],
    "dnsPolicy": "ClusterFirst", "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority",
    "priority": 2000001000, "priorityClassName": "system-node-critical", "restartPolicy": "Always",
    "schedulerName": "default-scheduler", "securityContext": {"fsGroup": 0, "runAsGroup": 0, "runAsNonRoot": False,
                                                              "runAsUser": 0},
    "serviceAccount": "ebs-csi-node-sa", "serviceAccountName": "ebs-csi-node-sa", "terminationGracePeriodSeconds": 30,
    "readinessGates": [{"conditionType": GATE}],
    "tolerations": [{"operator": "Exists", "effect": "NoSchedule"},
                    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
                    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
                    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"}],
    "volumes": [{"name": "kubelet-dir", "hostPath": {"path": "/var/lib/kubelet", "type": "Directory"}},
                {"name": "plugin-dir", "hostPath": {"path": "/var/lib/kubelet/plugins/ebs.csi.aws.com/",
                                                    "type": "DirectoryOrCreate"}},
                {"name": "device-dir", "hostPath": {"path": "/dev", "type": "Directory"}},
                {"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"items": [{"key": "ca.crt", "path": "ca.crt"}], "name": "kube-root-ca.crt"}},
                    {"downwardAPI": {"items": [{"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                                                "path": "namespace"}]}}]}}],
}
_MANAGED = [_managed_fields("kube-controller-manager", "Update"), _managed_fields("kubelet", "Update", "status")]
_CONTAINER_STATUSES = [
    {"name": c["name"], "image": c["image"], "imageID": c["image"].replace(":v", "@sha256:") + "0" * 40,
     "containerID": "containerd://" + "ab" * 32, "ready": True, "restartCount": 0, "started": True,
     "state": {"running": {"startedAt": stamp()}}, "lastState": {}}
    for c in _POD_SPEC_SHARED["containers"]]


def _host_ip(index: int) -> str:
    return f"192.168.{index % 250}.{index % 200 + 10}"


def gated_pod(name: str, namespace: str, node: str, index: int, *, gate_true: bool = False) -> dict[str, Any]:
    ip = f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"
    conditions: list[dict[str, Any]] = [
        {"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": None, "lastTransitionTime": stamp()},
        {"type": "Initialized", "status": "True", "lastProbeTime": None, "lastTransitionTime": stamp()},
        {"type": "Ready", "status": "True" if gate_true else "False", "lastProbeTime": None,
         "lastTransitionTime": stamp(),
         **({} if gate_true else {"reason": "ReadinessGatesNotReady",
                                  "message": f"corresponding condition of pod readiness gate \"{GATE}\" does not "
                                             f"exist."})},
        {"type": "ContainersReady", "status": "True", "lastProbeTime": None, "lastTransitionTime": stamp()},
        {"type": "PodScheduled", "status": "True", "lastProbeTime": None, "lastTransitionTime": stamp()},
    ]
    if gate_true:
        conditions.append({"type": GATE, "status": "True", "reason": "CiliumManaged", "lastProbeTime": None,
                           "lastTransitionTime": stamp(), "message": "Cilium manages this pod: its CiliumEndpoint is "
                                                                     "ready."})
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace, "generateName": name.rsplit("-", 1)[0] + "-",
            "uid": str(uuid.uuid4()), "creationTimestamp": stamp(),
            "labels": {"app": "ebs-csi-node", "app.kubernetes.io/component": "csi-driver",
                       "app.kubernetes.io/managed-by": "Helm", "app.kubernetes.io/name": "aws-ebs-csi-driver",
                       "app.kubernetes.io/version": "1.35.0", "controller-revision-hash": "5f8d9c7b6d",
                       "pod-template-generation": "3", GATE_LABEL: "true"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2024-09-01T10:00:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "ebs-csi-node",
                                 "uid": "2e1c7c1a-5c43-4a8b-9d57-0f6e7e0b5a11", "controller": True,
                                 "blockOwnerDeletion": True}],
            "managedFields": _MANAGED,
        },
        "spec": {**_POD_SPEC_SHARED, "nodeName": node,
                 "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                     {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}}},
        "status": {"phase": "Running", "conditions": conditions, "hostIP": _host_ip(index),
                   "hostIPs": [{"ip": _host_ip(index)}], "podIP": ip, "podIPs": [{"ip": ip}],
                   "qosClass": "Burstable", "startTime": stamp(), "containerStatuses": _CONTAINER_STATUSES},
    }


def agent_pod(node: str) -> dict[str, Any]:
    pod = gated_pod(f"cilium-{node}", "kube-system", node, 0, gate_true=True)
    pod["metadata"] = {**pod["metadata"], "labels": {"k8s-app": "cilium", "app.kubernetes.io/name": "cilium-agent"},
                       "uid": str(uuid.uuid4())}
    pod["spec"] = {**pod["spec"], "hostNetwork": True}
    del pod["spec"]["readinessGates"]
    pod["status"] = {**pod["status"], "conditions": [{"type": "Ready", "status": "True"}]}
    return pod


_NODE_IMAGES = [{"names": [f"602401143452.dkr.ecr.us-west-2.amazonaws.com/eks/image-{i}@sha256:{'c' * 64}",
                           f"602401143452.dkr.ecr.us-west-2.amazonaws.com/eks/image-{i}:v1.{i}.0"],
                 "sizeBytes": 10_000_000 + i} for i in range(24)]
_NODE_MANAGED = [{"manager": m, "operation": "Update", "apiVersion": "v1", "time": stamp(), "fieldsType": "FieldsV1",
                  "fieldsV1": {"f:metadata": {"f:annotations": {}, "f:labels": {}}, "f:spec": {"f:taints": {}},
                               "f:status": {"f:conditions": {}, "f:images": {}, "f:nodeInfo": {}}}}
                 for m in ("kubelet", "kube-controller-manager", "cilium-operator-generic")]


def node(name: str, index: int, *, tainted: bool = False) -> dict[str, Any]:
    conditions = [{"type": t, "status": "False", "reason": f"Kubelet Has No {t}", "message": f"kubelet has no {t}",
                   "lastHeartbeatTime": stamp(), "lastTransitionTime": stamp()}
                  for t in ("MemoryPressure", "DiskPressure", "PIDPressure")]
    conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                       "message": "kubelet is posting ready", "lastHeartbeatTime": stamp(),
                       "lastTransitionTime": stamp()})
    taints = [{"key": CILIUM_TAINT, "value": "true", "effect": "NoExecute"}] if tainted else []
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": str(uuid.uuid4()), "creationTimestamp": stamp(),
                     "labels": {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/instance-type": "m6i.2xlarge",
                                "beta.kubernetes.io/os": "linux", "eks.amazonaws.com/nodegroup": "workers",
                                "failure-domain.beta.kubernetes.io/region": "us-west-2",
                                "failure-domain.beta.kubernetes.io/zone": f"us-west-2{'abc'[index % 3]}",
                                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                "node.kubernetes.io/instance-type": "m6i.2xlarge",
                                "topology.kubernetes.io/zone": f"us-west-2{'abc'[index % 3]}"},
                     "annotations": {"alpha.kubernetes.io/provided-node-ip": _host_ip(index),
                                     "node.alpha.kubernetes.io/ttl": "0",
                                     "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
                     "managedFields": _NODE_MANAGED},
        "spec": {"providerID": f"aws:///us-west-2a/i-{index:017x}", "taints": taints},
        "status": {
            "addresses": [{"type": "InternalIP", "address": _host_ip(index)},
                          {"type": "Hostname", "address": name}, {"type": "InternalDNS", "address": name}],
            "allocatable": {"cpu": "7910m", "ephemeral-storage": "95491281146", "hugepages-1Gi": "0",
                            "hugepages-2Mi": "0", "memory": "31482540Ki", "pods": "58"},
            "capacity": {"cpu": "8", "ephemeral-storage": "104779756Ki", "hugepages-1Gi": "0", "hugepages-2Mi": "0",
                         "memory": "32499372Ki", "pods": "58"},
            "conditions": conditions, "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "images": _NODE_IMAGES,
            "nodeInfo": {"architecture": "amd64", "bootID": str(uuid.uuid4()), "containerRuntimeVersion":
                         "containerd://1.7.22", "kernelVersion": "6.1.109-118.189.amzn2023.x86_64",
                         "kubeProxyVersion": "v1.31.0-eks-a737599", "kubeletVersion": "v1.31.0-eks-a737599",
                         "machineID": "ec2" + "0" * 29, "operatingSystem": "linux",
                         "osImage": "Amazon Linux 2023.5.20240916", "systemUUID": "ec2" + "1" * 29},
        },
    }


def endpoint(pod: dict[str, Any], *, state: str = "ready", owner_uid: str | None = None) -> dict[str, Any]:
    metadata = pod["metadata"]
    uid = metadata["uid"] if owner_uid is None else owner_uid
    return {
        "apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint",
        "metadata": {"name": metadata["name"], "namespace": metadata["namespace"], "labels": metadata["labels"],
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": metadata["name"], "uid": uid}]},
        "status": {
            "id": 1000 + hash(metadata["name"]) % 60000, "state": state,
            "encryption": {},
            "external-identifiers": {"container-id": "ab" * 32, "k8s-namespace": metadata["namespace"],
                                     "k8s-pod-name": metadata["name"],
                                     "pod-name": f"{metadata['namespace']}/{metadata['name']}"},
            "identity": {"id": 40000 + hash(metadata["namespace"]) % 1000, "labels": [
                f"k8s:app={metadata['labels'].get('app', '')}",
                f"k8s:io.kubernetes.pod.namespace={metadata['namespace']}",
                "k8s:io.cilium.k8s.policy.serviceaccount=ebs-csi-node-sa",
                "k8s:io.cilium.k8s.policy.cluster=default"]},
            "networking": {"addressing": [{"ipv4": pod["status"].get("podIP", "")}],
                           "node": pod["status"].get("hostIP", "")},
            "named-ports": [{"name": "healthz", "port": 9808, "protocol": "TCP"}],
        },
    }


def replica_set(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": name}}}, "status": {"replicas": 3}}


def workload_pod(name: str, owner: dict[str, Any], node: str, index: int) -> dict[str, Any]:
    """A pod of a ReplicaSet, not gated: the same size as a gated pod, with no readiness gate or gate label."""
    pod = gated_pod(name, owner["metadata"]["namespace"], node, index)
    labels = {k: v for k, v in pod["metadata"]["labels"].items() if k != GATE_LABEL}
    pod["metadata"] = {**pod["metadata"], "labels": {**labels, "app": owner["metadata"]["name"]},
                       "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                            "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                                            "controller": True, "blockOwnerDeletion": True}]}
    pod["spec"] = {k: v for k, v in pod["spec"].items() if k != "readinessGates"}
    return pod
