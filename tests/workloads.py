"""A cluster with a pod of every kind `audit`, `recycle` and the controller tell apart, stored in the fake API
server: what is unmanaged, what may be evicted, and what must be left alone."""

from __future__ import annotations

import time
from typing import Any

from tests.fakekube import FakeKube
from tests.objects import agent_pod, endpoint, node, owner_object, workload_pod


def owner(fake: FakeKube, kind: str, name: str, namespace: str = "shop", **spec: Any) -> tuple[str, str, str]:
    stored = fake.create(owner_object(kind, name, namespace, **spec))
    return kind, name, stored["metadata"]["uid"]


def unmanaged_cluster(fake: FakeKube) -> dict[str, dict[str, Any]]:
    """node-1: a ready Cilium agent for an hour. node-2: its agent is not ready. node-3: still has the Cilium taint.
    node-4: rebooted, its agent ready again 10 s ago. Pods on node-1 started 10 minutes ago, unless said."""
    long_ago = time.time() - 3600
    for name, ready, tainted, since in (("node-1", True, False, long_ago), ("node-2", False, False, long_ago),
                                        ("node-3", True, True, long_ago), ("node-4", True, False, time.time() - 10)):
        fake.create(node(name, tainted=tainted))
        fake.create(agent_pod(name, ready=ready, ready_since=since))
    web = owner(fake, "ReplicaSet", "web-5d8f")
    api = owner(fake, "ReplicaSet", "api-7c9d", "pay")
    db = owner(fake, "StatefulSet", "db")
    old_job = owner(fake, "Job", "report", "batch")
    agents = owner(fake, "DaemonSet", "log-agent", "logging")
    fake.modify("jobs.batch", "batch", "report",
                lambda j: j.update(status={"conditions": [{"type": "Complete", "status": "True"}]}))
    started = time.time() - 600
    pods = {
        "web-a": workload_pod("web-5d8f-a", "shop", "node-1", owner=web, started=started),  # a Deployment's pod
        "db-0": workload_pod("db-0", "shop", "node-1", owner=db, started=started),
        "debug": workload_pod("debug", "shop", "node-1", started=started),  # bare
        "mirror": workload_pod("etcd-node-1", "kube-system", "node-1", mirror=True, started=started),
        "job": workload_pod("report-x", "batch", "node-1", owner=old_job, started=started),
        "daemonset": workload_pod("log-agent-node-1", "logging", "node-1", owner=agents, started=started),
        "api": workload_pod("api-7c9d-a", "pay", "node-1", owner=api, started=started),  # a budget refuses
        "host": workload_pod("ingress-1", "shop", "node-1", owner=web, host_network=True, started=started),
        "managed": workload_pod("web-5d8f-b", "shop", "node-1", owner=web, started=started),
        "not-ready": workload_pod("web-5d8f-c", "shop", "node-2", owner=web, started=started),
        "tainted": workload_pod("web-5d8f-d", "shop", "node-3", owner=web, started=started),
        "rebooted": workload_pod("web-5d8f-e", "shop", "node-4", owner=web, started=started),
    }
    stored = {key: fake.create(pod) for key, pod in pods.items()}
    fake.create(endpoint(stored["managed"]))
    fake.block_evictions("pay", retry_after=20)
    return stored
