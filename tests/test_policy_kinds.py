"""The policy on every workload kind and on DaemonSet pods at creation: pure, table-driven, no HTTP."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest

from webhook.admission import patch_operations
from webhook.policy import (
    DEFAULT_GATE_CONDITION,
    DEFAULT_GATE_LABEL,
    PATHS,
    SKIP_ANNOTATION,
    Exemption,
    ExemptReason,
    InjectAt,
    Mode,
    PolicyConfig,
    assess,
    is_reviewed,
    mutate,
    validate,
)
from webhook.workloads import Kind, controller_of, kind_of

MATCH_ALL = {"operator": "Exists"}
CRITICAL = {"key": "CriticalAddonsOnly", "operator": "Exists"}
GATE = {"conditionType": DEFAULT_GATE_CONDITION}
ALL_KINDS = frozenset(Kind)
DS_OWNER = {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "node-agent", "uid": "u-1", "controller": True,
            "blockOwnerDeletion": True}
RS_OWNER = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d4f", "uid": "u-2", "controller": True,
            "blockOwnerDeletion": True}


def pod_spec(tolerations: list[dict[str, Any]], host_network: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "agent", "image": "example/agent:1"}],
                            "tolerations": tolerations}
    if host_network:
        spec["hostNetwork"] = True
    return spec


def workload(kind: Kind, tolerations: list[dict[str, Any]], owner: dict[str, Any] | None = None,
             **pod: Any) -> dict[str, Any]:
    """A minimal object of `kind` whose pod template holds the tolerations."""
    metadata: dict[str, Any] = {"name": "web", "namespace": "default", "labels": {"app": "web"}}
    if owner:
        metadata["ownerReferences"] = [owner]
    template = {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec(tolerations, **pod)}
    group = {Kind.JOB: "batch/v1", Kind.CRONJOB: "batch/v1", Kind.POD: "v1"}.get(kind, "apps/v1")
    if kind is Kind.POD:
        return {"apiVersion": group, "kind": "Pod", "metadata": metadata, "spec": template["spec"]}
    if kind is Kind.CRONJOB:
        return {"apiVersion": group, "kind": kind.value, "metadata": metadata,
                "spec": {"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": template}}}}
    return {"apiVersion": group, "kind": kind.value, "metadata": metadata, "spec": {"template": template}}


def daemonset_pod(tolerations: list[dict[str, Any]] | None = None, *, host_network: bool = False,
                  labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
                  readiness_gates: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """A pod as the DaemonSet controller sends it: generateName, no name, its controller reference."""
    metadata: dict[str, Any] = {"generateName": "node-agent-", "namespace": "kube-system",
                                "labels": labels if labels is not None else {"app": "node-agent"},
                                "ownerReferences": [DS_OWNER]}
    if annotations is not None:
        metadata["annotations"] = annotations
    spec = pod_spec(tolerations or [], host_network)
    if readiness_gates is not None:
        spec["readinessGates"] = readiness_gates
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def apply(obj: dict[str, Any], config: PolicyConfig, kind: Kind) -> dict[str, Any]:
    patch = jsonpatch.JsonPatch(patch_operations(mutate(obj, config, kind=kind).edits))
    return patch.apply(copy.deepcopy(obj))


def at(obj: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


# --- kinds ---


@pytest.mark.parametrize("group, version, kind, expected", [
    pytest.param("apps", "v1", "DaemonSet", Kind.DAEMONSET, id="daemonset"),
    pytest.param("apps", "v1", "StatefulSet", Kind.STATEFULSET, id="statefulset"),
    pytest.param("batch", "v1", "CronJob", Kind.CRONJOB, id="cronjob"),
    pytest.param("", "v1", "Pod", Kind.POD, id="pod"),
    pytest.param("apps", "v1beta2", "DaemonSet", None, id="old-version"),
    pytest.param("extensions", "v1", "Deployment", None, id="other-group"),
    pytest.param("", "v1", "ConfigMap", None, id="other-kind"),
])
def test_kind_of_a_request(group: str, version: str, kind: str, expected: Kind | None) -> None:
    assert kind_of(group, version, kind) is expected


def test_controller_is_the_owner_with_controller_true() -> None:
    assert controller_of(workload(Kind.POD, [], {**RS_OWNER, "controller": False})) is None
    assert controller_of(workload(Kind.POD, [], RS_OWNER)) == RS_OWNER


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_warns_about_a_blanket_toleration_in_its_pod_template(kind: Kind) -> None:
    (warning, *_) = validate(workload(kind, [MATCH_ALL]), PolicyConfig(kinds=ALL_KINDS), kind=kind).warnings
    assert warning.startswith(f"{kind.value} default/web: {{operator: Exists}} also tolerates")


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_is_stripped_in_its_own_pod_template(kind: Kind) -> None:
    result = apply(workload(kind, [CRITICAL, MATCH_ALL]), PolicyConfig(mode=Mode.STRIP, kinds=ALL_KINDS), kind)
    assert at(result, PATHS[kind].tolerations) == [
        CRITICAL, {"operator": "Exists", "effect": "NoSchedule"}, {"operator": "Exists", "effect": "PreferNoSchedule"}]


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_is_denied_in_deny_mode(kind: Kind) -> None:
    decision = validate(workload(kind, [MATCH_ALL]), PolicyConfig(mode=Mode.DENY, kinds=ALL_KINDS), kind=kind)
    assert not decision.allowed
    assert decision.message.startswith(f"{kind.value} default/web:")


@pytest.mark.parametrize("kind", [k for k in Kind if k is not Kind.DAEMONSET])
def test_a_kind_not_enabled_is_allowed_unchanged(kind: Kind) -> None:
    obj = workload(kind, [MATCH_ALL])
    assert validate(obj, PolicyConfig(mode=Mode.DENY), kind=kind).allowed
    assert mutate(obj, PolicyConfig(mode=Mode.STRIP), kind=kind).edits == ()


@pytest.mark.parametrize("kind", [Kind.DEPLOYMENT, Kind.STATEFULSET, Kind.CRONJOB])
def test_exemptions_apply_to_every_kind(kind: Kind) -> None:
    obj = workload(kind, [MATCH_ALL], host_network=True)
    assert assess(obj, PolicyConfig(kinds=ALL_KINDS), kind=kind).exempt_reason is ExemptReason.HOST_NETWORK
    obj = workload(kind, [MATCH_ALL])
    obj["metadata"]["annotations"] = {SKIP_ANNOTATION: "true"}
    assert assess(obj, PolicyConfig(kinds=ALL_KINDS), kind=kind).exempt_reason is ExemptReason.OPT_OUT


@pytest.mark.parametrize("kind", [Kind.REPLICASET, Kind.JOB, Kind.POD])
def test_a_controlled_object_is_judged_through_its_controller_only(kind: Kind) -> None:
    owner = {**RS_OWNER, "kind": "Deployment"} if kind is Kind.REPLICASET else RS_OWNER
    obj = workload(kind, [MATCH_ALL], owner)
    config = PolicyConfig(mode=Mode.STRIP, kinds=ALL_KINDS)
    assert not is_reviewed(kind, obj, "CREATE", config)
    assert mutate(obj, config, kind=kind).edits == ()
    assert validate(obj, PolicyConfig(mode=Mode.DENY, kinds=ALL_KINDS), kind=kind).allowed


@pytest.mark.parametrize("kind", [Kind.DEPLOYMENT, Kind.STATEFULSET, Kind.DAEMONSET])
def test_an_operator_managed_workload_is_still_reviewed(kind: Kind) -> None:
    owner = {"apiVersion": "example.com/v1", "kind": "Agent", "name": "a", "uid": "u", "controller": True}
    assert is_reviewed(kind, workload(kind, [MATCH_ALL], owner), "UPDATE", PolicyConfig(kinds=ALL_KINDS))


@pytest.mark.parametrize("kind", [Kind.JOB, Kind.POD])
def test_immutable_templates_are_reviewed_at_create_only(kind: Kind) -> None:
    obj = workload(kind, [MATCH_ALL])
    config = PolicyConfig(mode=Mode.DENY, kinds=ALL_KINDS)
    assert not validate(obj, config, kind=kind, operation="CREATE").allowed
    assert validate(obj, config, kind=kind, operation="UPDATE").allowed


def test_a_bare_pod_without_name_is_named_by_its_generate_name() -> None:
    obj = workload(Kind.POD, [MATCH_ALL])
    obj["metadata"] = {"generateName": "debug-", "namespace": "default"}
    (warning, *_) = validate(obj, PolicyConfig(kinds=ALL_KINDS), kind=Kind.POD).warnings
    assert warning.startswith("Pod default/debug-<generated>:")


# --- the readiness gate at Pod CREATE ---


def test_daemonset_pod_gets_the_gate_and_the_label_at_creation() -> None:
    result = apply(daemonset_pod(), PolicyConfig(), Kind.POD)
    assert result["spec"]["readinessGates"] == [GATE]
    assert result["metadata"]["labels"][DEFAULT_GATE_LABEL] == "true"


def test_daemonset_pod_gate_is_appended_and_labels_created() -> None:
    other = {"conditionType": "example.com/ready"}
    pod = daemonset_pod(readiness_gates=[other])
    del pod["metadata"]["labels"]
    result = apply(pod, PolicyConfig(), Kind.POD)
    assert result["spec"]["readinessGates"] == [other, GATE]
    assert result["metadata"]["labels"] == {DEFAULT_GATE_LABEL: "true"}


def test_daemonset_pod_already_gated_by_its_template_is_left_alone() -> None:
    pod = daemonset_pod(readiness_gates=[GATE], labels={"app": "node-agent", DEFAULT_GATE_LABEL: "true"})
    assert mutate(pod, PolicyConfig(), kind=Kind.POD).edits == ()


def test_daemonset_pod_gated_but_unlabelled_gets_the_label_only() -> None:
    ops = patch_operations(mutate(daemonset_pod(readiness_gates=[GATE]), PolicyConfig(), kind=Kind.POD).edits)
    assert ops == [{"op": "add", "path": "/metadata/labels/startupguard.io~1gated", "value": "true"}]


@pytest.mark.parametrize("pod, config", [
    pytest.param(daemonset_pod(host_network=True), PolicyConfig(), id="host-network"),
    pytest.param(daemonset_pod(labels={"k8s-app": "cilium"}), PolicyConfig(), id="exemption-label-on-pod"),
    pytest.param(daemonset_pod(), PolicyConfig(exemptions=(Exemption(namespace="kube-system", name="node-agent"),)),
                 id="exemption-by-daemonset-name"),
    pytest.param(daemonset_pod(annotations={SKIP_ANNOTATION: "true"}), PolicyConfig(), id="opt-out-annotation"),
    pytest.param(daemonset_pod([{"key": "node.cilium.io/agent-not-ready", "operator": "Exists"}]), PolicyConfig(),
                 id="tolerates-cilium-taint"),
    pytest.param(daemonset_pod(), PolicyConfig(inject_at=InjectAt.TEMPLATE), id="inject-at-template"),
    pytest.param(daemonset_pod(), PolicyConfig(readiness_gate=False), id="gate-disabled"),
])
def test_daemonset_pod_is_not_gated(pod: dict[str, Any], config: PolicyConfig) -> None:
    assert mutate(pod, config, kind=Kind.POD).edits == ()


def test_a_pod_of_another_controller_is_not_gated() -> None:
    pod = daemonset_pod()
    pod["metadata"]["ownerReferences"] = [RS_OWNER]
    assert mutate(pod, PolicyConfig(kinds=ALL_KINDS), kind=Kind.POD).edits == ()


def test_a_daemonset_pod_is_gated_at_create_only() -> None:
    assert mutate(daemonset_pod(), PolicyConfig(), kind=Kind.POD, operation="UPDATE").edits == ()


def test_a_daemonset_pod_with_a_blanket_toleration_is_gated_but_never_stripped() -> None:
    # Judged through its DaemonSet: no second warning, no pod-level strip, even with Pod among the kinds.
    config = PolicyConfig(mode=Mode.STRIP, kinds=ALL_KINDS)
    decision = mutate(daemonset_pod([MATCH_ALL]), config, kind=Kind.POD)
    assert decision.warnings == ()
    assert apply(daemonset_pod([MATCH_ALL]), config, Kind.POD)["spec"]["tolerations"] == [MATCH_ALL]
    assert validate(daemonset_pod([MATCH_ALL]), PolicyConfig(mode=Mode.DENY, kinds=ALL_KINDS), kind=Kind.POD).allowed


def test_second_pass_over_a_gated_pod_yields_no_patch() -> None:
    once = apply(daemonset_pod(), PolicyConfig(), Kind.POD)
    assert mutate(once, PolicyConfig(), kind=Kind.POD).edits == ()
