"""The pure policy, table-driven: no HTTP, no envelope."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import jsonpatch
import pytest

from webhook.admission import patch_operations
from webhook.policy import (
    CILIUM_TAINT_KEY,
    DEFAULT_GATE_CONDITION,
    DEFAULT_GATE_LABEL,
    SKIP_ANNOTATION,
    STRIPPED_ANNOTATION,
    Exemption,
    ExemptReason,
    InjectAt,
    MalformedObject,
    Mode,
    PolicyConfig,
    assess,
    is_blanket_noexecute,
    mutate,
    validate,
)

STRIP = PolicyConfig(mode=Mode.STRIP)
TEMPLATE = PolicyConfig(inject_at=InjectAt.TEMPLATE)
DENY = PolicyConfig(mode=Mode.DENY)
MATCH_ALL = {"operator": "Exists"}
NOEXECUTE_ALL = {"operator": "Exists", "effect": "NoExecute"}
NOSCHEDULE_ALL = {"operator": "Exists", "effect": "NoSchedule"}
PREFER_ALL = {"operator": "Exists", "effect": "PreferNoSchedule"}
CRITICAL = {"key": "CriticalAddonsOnly", "operator": "Exists"}
GATE = {"conditionType": DEFAULT_GATE_CONDITION}


def daemonset(tolerations: list[dict[str, Any]] | None = None, *, host_network: bool | None = None,
              labels: dict[str, str] | None = None, template_labels: dict[str, str] | None = None,
              annotations: dict[str, str] | None = None, readiness_gates: list[dict[str, str]] | None = None,
              name: str = "node-agent", namespace: str = "kube-system") -> dict[str, Any]:
    """A minimal DaemonSet as kube-apiserver sends it; None leaves a field out entirely."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels is not None:
        metadata["labels"] = labels
    if annotations is not None:
        metadata["annotations"] = annotations
    pod_spec: dict[str, Any] = {"containers": [{"name": "agent", "image": "example/agent:1"}]}
    if tolerations is not None:
        pod_spec["tolerations"] = tolerations
    if host_network is not None:
        pod_spec["hostNetwork"] = host_network
    if readiness_gates is not None:
        pod_spec["readinessGates"] = readiness_gates
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": metadata,
        "spec": {"selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": template_labels or {"app": name}}, "spec": pod_spec}},
    }


def apply(obj: dict[str, Any], config: PolicyConfig) -> dict[str, Any]:
    """The object as kube-apiserver stores it after our /mutate patch."""
    patch = jsonpatch.JsonPatch(patch_operations(mutate(obj, config).edits))
    return patch.apply(copy.deepcopy(obj))


def tolerations_of(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return obj["spec"]["template"]["spec"].get("tolerations", [])


@pytest.mark.parametrize("tol, expected", [
    pytest.param({"operator": "Exists"}, True, id="match-all"),
    pytest.param({"operator": "Exists", "effect": "NoExecute"}, True, id="noexecute"),
    pytest.param({"operator": "Exists", "effect": ""}, True, id="empty-effect"),
    pytest.param({"operator": "Exists", "key": "", "effect": "NoExecute"}, True, id="empty-key"),
    pytest.param({"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}, True, id="seconds"),
    pytest.param({"operator": "Exists", "effect": "NoSchedule"}, False, id="noschedule"),
    pytest.param({"operator": "Exists", "effect": "PreferNoSchedule"}, False, id="prefernoschedule"),
    pytest.param({"operator": "Exists", "key": CILIUM_TAINT_KEY}, False, id="keyed-cilium"),
    pytest.param({"operator": "Exists", "key": "CriticalAddonsOnly"}, False, id="keyed"),
    pytest.param({"key": "dedicated", "operator": "Equal", "value": "x", "effect": "NoExecute"}, False,
                 id="equal"),
    pytest.param({"effect": "NoExecute"}, False, id="no-operator-means-equal"),
    pytest.param({}, False, id="empty"),
])
def test_is_blanket_noexecute(tol: dict[str, Any], expected: bool) -> None:
    assert is_blanket_noexecute(tol) is expected


@pytest.mark.parametrize("obj, config, reason", [
    pytest.param(daemonset([MATCH_ALL], host_network=True), PolicyConfig(), ExemptReason.HOST_NETWORK,
                 id="host-network"),
    pytest.param(daemonset([MATCH_ALL], labels={"k8s-app": "cilium"}), PolicyConfig(), ExemptReason.EXEMPTED,
                 id="cilium-label-on-daemonset"),
    pytest.param(daemonset([MATCH_ALL], template_labels={"k8s-app": "cilium-envoy"}), PolicyConfig(),
                 ExemptReason.EXEMPTED, id="cilium-envoy-label-on-template"),
    pytest.param(daemonset([MATCH_ALL], labels={"k8s-app": "aws-node"}), PolicyConfig(), ExemptReason.EXEMPTED,
                 id="aws-node"),
    pytest.param(daemonset([MATCH_ALL], labels={"k8s-app": "kube-proxy"}), PolicyConfig(), ExemptReason.EXEMPTED,
                 id="kube-proxy"),
    pytest.param(daemonset([MATCH_ALL, {"key": CILIUM_TAINT_KEY, "operator": "Exists", "effect": "NoExecute"}]),
                 PolicyConfig(), ExemptReason.TOLERATES_CILIUM_TAINT, id="tolerates-cilium-taint"),
    pytest.param(daemonset([MATCH_ALL], annotations={SKIP_ANNOTATION: "true"}), PolicyConfig(),
                 ExemptReason.OPT_OUT, id="opt-out"),
    pytest.param(daemonset([MATCH_ALL], host_network=True, labels={"k8s-app": "cilium"},
                           annotations={SKIP_ANNOTATION: "true"}), PolicyConfig(), ExemptReason.HOST_NETWORK,
                 id="first-reason-wins"),
    pytest.param(daemonset([MATCH_ALL], labels={"k8s-app": "cilium"}, annotations={SKIP_ANNOTATION: "true"}),
                 PolicyConfig(), ExemptReason.EXEMPTED, id="exempted-before-opt-out"),
    pytest.param(daemonset([MATCH_ALL], name="logs", namespace="observability"),
                 PolicyConfig(exemptions=(Exemption(namespace="observability", name="logs"),)),
                 ExemptReason.EXEMPTED, id="configured-namespace-and-name"),
    pytest.param(daemonset([{"key": "node.example.com/not-ready", "operator": "Exists"}, MATCH_ALL]),
                 PolicyConfig(cilium_taint_key="node.example.com/not-ready"),
                 ExemptReason.TOLERATES_CILIUM_TAINT, id="configured-taint-key"),
])
def test_exempt_reason(obj: dict[str, Any], config: PolicyConfig, reason: ExemptReason) -> None:
    assert assess(obj, config).exempt_reason is reason


@pytest.mark.parametrize("obj, config", [
    pytest.param(daemonset([MATCH_ALL], labels={"k8s-app": "aws-node-termination-handler"}), PolicyConfig(),
                 id="label-prefix-is-not-a-match"),
    pytest.param(daemonset([MATCH_ALL], labels={"app": "cilium"}), PolicyConfig(), id="other-label-key"),
    pytest.param(daemonset([MATCH_ALL], host_network=False), PolicyConfig(), id="host-network-false"),
    pytest.param(daemonset([MATCH_ALL], annotations={SKIP_ANNOTATION: "true"}),
                 PolicyConfig(allow_opt_out=False), id="opt-out-not-allowed"),
    pytest.param(daemonset([MATCH_ALL], annotations={SKIP_ANNOTATION: "yes"}), PolicyConfig(),
                 id="opt-out-needs-true"),
    pytest.param(daemonset([MATCH_ALL], name="logs", namespace="default"),
                 PolicyConfig(exemptions=(Exemption(namespace="observability", name="logs"),)),
                 id="configured-exemption-other-namespace"),
    pytest.param(daemonset([MATCH_ALL], labels={"k8s-app": "cilium"}), PolicyConfig(exemptions=()),
                 id="exemptions-emptied"),
])
def test_not_exempt(obj: dict[str, Any], config: PolicyConfig) -> None:
    found = assess(obj, config)
    assert found.exempt_reason is None
    assert found.finding


def test_exempt_daemonset_gets_no_warning_patch_or_gate() -> None:
    obj = daemonset([MATCH_ALL], host_network=True)
    for mode in Mode:
        config = PolicyConfig(mode=mode)
        assert validate(obj, config).warnings == ()
        assert validate(obj, config).allowed
        assert mutate(obj, config).edits == ()


def test_warn_mode_validate_warns_once_per_blanket_toleration() -> None:
    decision = validate(daemonset([MATCH_ALL, CRITICAL, NOEXECUTE_ALL]), PolicyConfig())
    assert decision.allowed
    assert decision.warnings == (
        f"DaemonSet kube-system/node-agent: {{operator: Exists}} also tolerates {CILIUM_TAINT_KEY}; "
        "give it a key",
        f"DaemonSet kube-system/node-agent: {{operator: Exists, effect: NoExecute}} also tolerates "
        f"{CILIUM_TAINT_KEY}; give it a key",
    )


def test_warnings_stay_under_the_api_server_truncation_limit() -> None:
    obj = daemonset([NOEXECUTE_ALL], name="a" * 63, namespace="b" * 63)
    assert all(len(w) <= 256 for w in validate(obj, PolicyConfig()).warnings)


def test_deny_mode_refuses_with_a_message_naming_object_problem_and_fix() -> None:
    decision = validate(daemonset([NOEXECUTE_ALL]), DENY)
    assert not decision.allowed
    assert "DaemonSet kube-system/node-agent" in decision.message
    assert "{operator: Exists, effect: NoExecute}" in decision.message
    assert CILIUM_TAINT_KEY in decision.message
    assert "give it a key" in decision.message
    assert SKIP_ANNOTATION in decision.message


def test_deny_message_leaves_out_opt_out_when_not_allowed() -> None:
    decision = validate(daemonset([NOEXECUTE_ALL]), PolicyConfig(mode=Mode.DENY, allow_opt_out=False))
    assert SKIP_ANNOTATION not in decision.message


def test_deny_mode_allows_clean_daemonset() -> None:
    assert validate(daemonset([CRITICAL, NOSCHEDULE_ALL]), DENY) == validate(daemonset([]), DENY)
    assert validate(daemonset([CRITICAL]), DENY).allowed


def test_deny_mode_lets_a_terminating_daemonset_through() -> None:
    obj = daemonset([MATCH_ALL])
    obj["metadata"]["deletionTimestamp"] = "2026-11-26T08:00:00Z"
    assert validate(obj, DENY).allowed


@pytest.mark.parametrize("mode", [Mode.WARN, Mode.DENY])
def test_mutate_adds_only_the_gate_outside_strip_mode(mode: Mode) -> None:
    config = PolicyConfig(mode=mode, inject_at=InjectAt.TEMPLATE)
    obj = daemonset([MATCH_ALL])
    decision = mutate(obj, config)
    assert decision.warnings == ()
    result = apply(obj, config)
    assert tolerations_of(result) == [MATCH_ALL]
    assert result["spec"]["template"]["spec"]["readinessGates"] == [GATE]
    assert result["spec"]["template"]["metadata"]["labels"][DEFAULT_GATE_LABEL] == "true"


@pytest.mark.parametrize("mode", [Mode.WARN, Mode.DENY])
def test_gate_at_pod_creation_leaves_daemonset_templates_alone(mode: Mode) -> None:
    assert mutate(daemonset([MATCH_ALL]), PolicyConfig(mode=mode)).edits == ()


def test_gate_at_pod_creation_never_removes_a_template_gate() -> None:
    gated = apply(daemonset([MATCH_ALL], annotations={}), TEMPLATE)
    result = apply(gated, STRIP)
    assert result["spec"]["template"]["spec"]["readinessGates"] == [GATE]
    assert result["spec"]["template"]["metadata"]["labels"][DEFAULT_GATE_LABEL] == "true"


def test_strip_replaces_match_all_with_noschedule_and_prefernoschedule() -> None:
    result = apply(daemonset([MATCH_ALL]), STRIP)
    assert tolerations_of(result) == [NOSCHEDULE_ALL, PREFER_ALL]


def test_strip_removes_noexecute_blanket_and_keeps_others_in_order() -> None:
    tolerations = [NOSCHEDULE_ALL, CRITICAL, NOEXECUTE_ALL, {"key": "b", "operator": "Exists"}]
    result = apply(daemonset(tolerations), STRIP)
    assert tolerations_of(result) == [NOSCHEDULE_ALL, CRITICAL, {"key": "b", "operator": "Exists"}]


def test_strip_narrows_match_all_in_place_between_keyed_tolerations() -> None:
    keyed_a = {"key": "a", "operator": "Exists"}
    keyed_b = {"key": "b", "operator": "Equal", "value": "x", "effect": "NoSchedule"}
    result = apply(daemonset([keyed_a, MATCH_ALL, keyed_b, NOEXECUTE_ALL]), STRIP)
    assert tolerations_of(result) == [keyed_a, NOSCHEDULE_ALL, PREFER_ALL, keyed_b]


def test_strip_does_not_duplicate_an_existing_noschedule_toleration() -> None:
    result = apply(daemonset([MATCH_ALL, NOSCHEDULE_ALL]), STRIP)
    assert tolerations_of(result) == [PREFER_ALL, NOSCHEDULE_ALL]


def test_strip_records_removed_tolerations_in_annotation() -> None:
    removed = [MATCH_ALL, {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
    result = apply(daemonset([removed[0], CRITICAL, removed[1]]), STRIP)
    assert json.loads(result["metadata"]["annotations"][STRIPPED_ANNOTATION]) == removed


def test_strip_annotation_is_added_beside_existing_annotations() -> None:
    result = apply(daemonset([MATCH_ALL], annotations={"team": "storage"}), STRIP)
    assert result["metadata"]["annotations"]["team"] == "storage"
    assert STRIPPED_ANNOTATION in result["metadata"]["annotations"]


def test_strip_annotation_key_is_escaped_in_the_json_pointer() -> None:
    ops = patch_operations(mutate(daemonset([MATCH_ALL], annotations={}), STRIP).edits)
    assert {"op": "add", "path": "/metadata/annotations/startupguard.io~1stripped-tolerations",
            "value": '[{"operator":"Exists"}]'} in ops


def test_strip_adds_configured_replacement_tolerations_once() -> None:
    dedicated = {"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}
    config = PolicyConfig(mode=Mode.STRIP, replacement_tolerations=(dedicated,))
    result = apply(daemonset([MATCH_ALL, NOEXECUTE_ALL]), config)
    assert tolerations_of(result) == [NOSCHEDULE_ALL, PREFER_ALL, dedicated]
    assert apply(daemonset([CRITICAL]), config)["spec"]["template"]["spec"]["tolerations"] == [CRITICAL]


def test_strip_adds_a_replacement_listed_twice_in_the_config_once() -> None:
    dedicated = {"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}
    config = PolicyConfig(mode=Mode.STRIP, replacement_tolerations=(dedicated, dedicated))
    assert tolerations_of(apply(daemonset([MATCH_ALL]), config)) == [NOSCHEDULE_ALL, PREFER_ALL, dedicated]


def test_strip_warns_what_it_removed() -> None:
    (warning,) = mutate(daemonset([MATCH_ALL]), STRIP).warnings
    assert "DaemonSet kube-system/node-agent" in warning
    assert "{operator: Exists}" in warning
    assert STRIPPED_ANNOTATION in warning
    assert len(warning) <= 256


def test_gate_creates_absent_readiness_gates_and_labels() -> None:
    obj = daemonset([])
    del obj["spec"]["template"]["metadata"]
    result = apply(obj, TEMPLATE)
    assert result["spec"]["template"]["spec"]["readinessGates"] == [GATE]
    assert result["spec"]["template"]["metadata"] == {"labels": {DEFAULT_GATE_LABEL: "true"}}


def test_gate_is_appended_to_existing_readiness_gates() -> None:
    other = {"conditionType": "example.com/ready"}
    result = apply(daemonset([], readiness_gates=[other]), TEMPLATE)
    assert result["spec"]["template"]["spec"]["readinessGates"] == [other, GATE]


def test_gate_label_key_is_escaped_in_the_json_pointer() -> None:
    ops = patch_operations(mutate(daemonset([]), TEMPLATE).edits)
    assert {"op": "add", "path": "/spec/template/metadata/labels/startupguard.io~1gated", "value": "true"} in ops


def test_gate_uses_configured_condition_type_and_label() -> None:
    config = PolicyConfig(gate_condition_type="example.com/net-ready", gate_label="example.com/wait",
                          inject_at=InjectAt.TEMPLATE)
    result = apply(daemonset([]), config)
    assert result["spec"]["template"]["spec"]["readinessGates"] == [{"conditionType": "example.com/net-ready"}]
    assert result["spec"]["template"]["metadata"]["labels"]["example.com/wait"] == "true"


def test_gate_disabled_leaves_clean_daemonset_untouched() -> None:
    assert mutate(daemonset([CRITICAL]), PolicyConfig(readiness_gate=False, inject_at=InjectAt.TEMPLATE)).edits == ()


@pytest.mark.parametrize("inject_at", list(InjectAt))
@pytest.mark.parametrize("mode", list(Mode))
def test_second_pass_over_mutated_object_yields_no_patch(mode: Mode, inject_at: InjectAt) -> None:
    config = PolicyConfig(mode=mode, replacement_tolerations=({"key": "d", "operator": "Exists"},),
                          inject_at=inject_at)
    once = apply(daemonset([CRITICAL, MATCH_ALL, NOEXECUTE_ALL], annotations={}), config)
    assert mutate(once, config).edits == ()


def test_strip_is_one_replace_of_the_toleration_list_whatever_it_holds() -> None:
    ops = patch_operations(mutate(daemonset([NOEXECUTE_ALL, CRITICAL, NOEXECUTE_ALL] * 50), STRIP).edits)
    assert [(op["op"], op["path"]) for op in ops] == [
        ("replace", "/spec/template/spec/tolerations"),
        ("add", "/metadata/annotations"),
    ]
    assert ops[0]["value"] == [CRITICAL] * 50


@pytest.mark.parametrize("obj, where", [
    pytest.param({"metadata": [], "spec": {}}, "metadata", id="metadata-list"),
    pytest.param({"spec": {"template": {"spec": {"tolerations": "Exists"}}}}, "spec.template.spec.tolerations",
                 id="tolerations-string"),
    pytest.param({"spec": {"template": {"spec": {"tolerations": [None]}}}}, "spec.template.spec.tolerations[0]",
                 id="toleration-null"),
    pytest.param({"spec": {"template": {"spec": {"tolerations": [{"operator": 1}]}}}},
                 "spec.template.spec.tolerations[0].operator", id="operator-number"),
    pytest.param({"spec": {"template": {"spec": {"readinessGates": {}}}}}, "spec.template.spec.readinessGates",
                 id="gates-object"),
    pytest.param({"spec": {"template": {"metadata": {"labels": ["a"]}}}}, "spec.template.metadata.labels",
                 id="labels-list"),
    pytest.param({"spec": "x"}, "spec", id="spec-string"),
])
def test_malformed_object_names_the_field(obj: dict[str, Any], where: str) -> None:
    with pytest.raises(MalformedObject, match="^" + re.escape(where) + ":"):
        mutate(obj, PolicyConfig())


def test_missing_name_uses_generate_name_and_request_namespace() -> None:
    obj = daemonset([MATCH_ALL])
    obj["metadata"] = {"generateName": "agent-"}
    (warning,) = validate(obj, PolicyConfig(), namespace="monitoring").warnings
    assert warning.startswith("DaemonSet monitoring/agent-<generated>:")
