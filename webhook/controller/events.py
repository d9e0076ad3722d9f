"""events.k8s.io/v1 Event bodies about pods, as the gate controller records them. Pure: builds dicts; the loop
sends them through webhook.kube.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webhook.controller.rules import micro_time

REPORTING_CONTROLLER = "startupguard.io/controller"


def event_body(pod: Mapping[str, Any], reason: str, event_type: str, action: str, note: str, *,
               instance: str, now: float) -> dict[str, Any]:
    """An Event about a pod, named like client-go's recorder does: <pod>.<time in hex>."""
    metadata = pod.get("metadata") or {}
    name, namespace = str(metadata.get("name") or ""), str(metadata.get("namespace") or "")
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": f"{name[:230]}.{int(now * 1e9):x}", "namespace": namespace},
        "eventTime": micro_time(now),
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": instance[:128],
        "action": action,
        "reason": reason,
        "note": note[:1024],
        "type": event_type,
        "regarding": {"apiVersion": "v1", "kind": "Pod", "namespace": namespace, "name": name,
                      "uid": metadata.get("uid")},
    }
