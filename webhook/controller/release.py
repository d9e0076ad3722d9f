"""`controller --release-all`: every gated pod's gate condition True, for uninstalling without leaving a pod
waiting on a gate nobody will set. Needs no Lease; calls the API through webhook.kube only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from webhook import kube
from webhook.controller.events import event_body
from webhook.controller.loop import ControllerOptions
from webhook.controller.rules import (
    GONE_STATUSES,
    Action,
    Plan,
    ReleaseReason,
    condition_patch,
    condition_text,
    is_gate_true,
    pod_facts,
)
from webhook.kube import ApiError, Kube, Target

log = logging.getLogger(__name__)


def release_all(client: Kube, options: ControllerOptions, *, clock: Callable[[], float] = time.time,
                passes: int = 3) -> int:
    """--release-all: every gated pod's condition True, for uninstalling. Lists again after each pass so that a
    pod recreated meanwhile is released too. 0 when a final list finds none left, 1 otherwise."""
    target = Target(kube.PODS, label_selector=options.gate_selector)
    reason, message = condition_text(Plan(Action.RELEASE, ReleaseReason.RELEASE_ALL), options.timings)
    for attempt in range(passes + 1):
        try:
            pods, _ = kube.list_all(client, target)
        except ApiError as err:
            log.error("cannot list gated pods", extra={"status": err.status, "error": err.message})
            return 1
        pending = [p for p in pods if not is_gate_true(p, options.gate_condition)]
        if not pending:
            log.info("every gated pod has its gate condition True", extra={"pods": len(pods)})
            return 0
        if options.dry_run:
            for pod in pending:
                log.info("would release the gate (dry run)", extra=_pod_fields(pod))
            return 0
        if attempt == passes:
            break
        for pod in pending:
            f = pod_facts(pod, options.gate_condition)
            patch = condition_patch(f.uid, options.gate_condition, reason, message, clock())
            try:
                kube.patch_pod_status(client, f.namespace, f.name, patch)
            except ApiError as err:
                level = logging.INFO if err.status in GONE_STATUSES else logging.ERROR
                log.log(level, "gate not released", extra={**_pod_fields(pod), "status": err.status,
                                                            "error": err.message})
                continue
            log.info("gate released", extra=_pod_fields(pod))
            body = event_body(pod, "GateReleased", "Warning", "ReleaseGate", message, instance=options.identity,
                              now=clock())
            try:
                kube.create_event(client, f.namespace, body)
            except ApiError as err:
                log.warning("could not record an event", extra={**_pod_fields(pod), "status": err.status})
    log.error("gated pods left with their gate condition not True",
              extra={"pods": [f"{p['metadata'].get('namespace')}/{p['metadata'].get('name')}" for p in pending]})
    return 1


def _pod_fields(pod: Mapping[str, Any]) -> dict[str, Any]:
    metadata = pod.get("metadata") or {}
    return {"namespace": metadata.get("namespace"), "pod": metadata.get("name"), "uid": metadata.get("uid")}
