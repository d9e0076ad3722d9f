"""The workload kinds the policy reviews: where each keeps its pod template, and who controls an object.

Stdlib only, like policy.py: plain dicts in, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    DAEMONSET = "DaemonSet"
    DEPLOYMENT = "Deployment"
    STATEFULSET = "StatefulSet"
    REPLICASET = "ReplicaSet"
    JOB = "Job"
    CRONJOB = "CronJob"
    POD = "Pod"


@dataclass(frozen=True)
class KindInfo:
    group: str  # "" for the core API
    plural: str
    # Where the pod template is: its metadata at template + ("metadata",), its pod spec at template + ("spec",).
    # A bare Pod is its own template.
    template: tuple[str, ...]
    # Reviewed at CREATE only: a Job's pod template is immutable once created, and a Pod's tolerations can never be
    # removed, so a finding on UPDATE could not be fixed in place and strip or deny would only break the update.
    create_only: bool = False
    # With a controlling owner, the object is written by that owner's controller from the owner's template: it is
    # judged through the owner. A strip patch on it would make it differ from the owner's template, and the owner's
    # controller would fight back (a Deployment whose ReplicaSet differs makes another one).
    judged_through_controller: bool = False


KINDS: dict[Kind, KindInfo] = {
    Kind.DAEMONSET: KindInfo("apps", "daemonsets", ("spec", "template")),
    Kind.DEPLOYMENT: KindInfo("apps", "deployments", ("spec", "template")),
    Kind.STATEFULSET: KindInfo("apps", "statefulsets", ("spec", "template")),
    Kind.REPLICASET: KindInfo("apps", "replicasets", ("spec", "template"), judged_through_controller=True),
    Kind.JOB: KindInfo("batch", "jobs", ("spec", "template"), create_only=True, judged_through_controller=True),
    Kind.CRONJOB: KindInfo("batch", "cronjobs", ("spec", "jobTemplate", "spec", "template")),
    Kind.POD: KindInfo("", "pods", (), create_only=True, judged_through_controller=True),
}
_BY_GROUP_KIND = {(info.group, kind.value): kind for kind, info in KINDS.items()}


def kind_of(group: str, version: str, kind: str) -> Kind | None:
    """The reviewed kind an AdmissionReview's request.kind names, None for every other kind or version."""
    return _BY_GROUP_KIND.get((group, kind)) if version == "v1" else None


def controller_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The owner reference with controller: true (Kubernetes allows at most one), None when there is none."""
    metadata = obj.get("metadata")
    owners = metadata.get("ownerReferences") if isinstance(metadata, dict) else None
    if not isinstance(owners, list):
        return None
    for owner in owners:
        if isinstance(owner, dict) and owner.get("controller") is True:
            return owner
    return None


def is_daemonset_controller(owner: Mapping[str, Any] | None) -> bool:
    return owner is not None and owner.get("kind") == "DaemonSet" and owner.get("apiVersion") == "apps/v1"
