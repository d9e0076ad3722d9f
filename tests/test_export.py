"""`policy export`: the ValidatingAdmissionPolicy gives the webhook's verdict and message, the
MutatingAdmissionPolicy leaves every object as /mutate does, on every fixture and on generated toleration lists,
for several configurations. Every CEL expression is evaluated (tests/cel_eval.py); every exported object is
valid for the Kubernetes versions that serve it.
"""

from __future__ import annotations

import copy
import json
import string
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import cel_eval
from tests.manifest_render import ROOT, build
from tests.openapi import NEWEST
from tests.openapi import validate as validate_openapi
from webhook.admission import patch_operations
from webhook.export import MAX_TOLERATIONS, Dialect, Form, NothingToExport, export, patch_expression
from webhook.policy import (
    CILIUM_TAINT_KEY,
    STRIPPED_ANNOTATION,
    Exemption,
    Mode,
    PolicyConfig,
    mutate,
)
from webhook.policy import validate as webhook_validate

FIXTURES = Path(__file__).parent / "fixtures"

CONFIGS = {
    "defaults": PolicyConfig(),
    "no-opt-out": PolicyConfig(allow_opt_out=False),
    "exemptions": PolicyConfig(exemptions=(
        Exemption(namespace="kube-system"), Exemption(name="fluent-bit"),
        Exemption(namespace="monitoring", labels=(("app.kubernetes.io/name", "node-exporter"),)),
        Exemption(labels=(("app", "istio-cni-node"), ("k8s-app", "istio-cni-node"))))),
    "replacements": PolicyConfig(replacement_tolerations=(
        {"key": "example.com/maintenance", "operator": "Exists", "effect": "NoExecute"},
        {"operator": "Exists", "effect": "NoSchedule"},
        {"key": "example.com/maintenance", "operator": "Exists", "effect": "NoExecute"})),
    "no-gate": PolicyConfig(readiness_gate=False),
    "other-gate-and-taint": PolicyConfig(gate_condition_type="example.com/network-ready",
                                         gate_label="example.com/gated", cilium_taint_key="example.com/cni-not-ready"),
}


def reviews() -> list[tuple[str, dict[str, Any], str]]:
    result = []
    for path in sorted(FIXTURES.glob("daemonset_*.json")):
        request = json.loads(path.read_text())["request"]
        if request["operation"] in ("CREATE", "UPDATE"):
            result.append((path.stem, request["object"], request.get("namespace", "")))
    return result


REVIEWS = reviews()
# A DaemonSet with a blanket toleration, being deleted: let through in deny mode, with the warnings.
_, _EBS, _EBS_NAMESPACE = next(r for r in REVIEWS if r[0] == "daemonset_ebs_csi_node")
TERMINATING = ("terminating_ebs_csi_node",
               {**_EBS, "metadata": {**_EBS["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}},
               _EBS_NAMESPACE)


def policies(config: PolicyConfig, form: Form) -> list[tuple[dict[str, Any], str]]:
    """(policy, action of its binding) pairs, in the order kube-apiserver reports them."""
    objects = export(config, form)
    bindings = {o["spec"]["policyName"]: o for o in objects if o["kind"].endswith("Binding")}
    return [(o, bindings[o["metadata"]["name"]]["spec"].get("validationActions", [""])[0])
            for o in objects if not o["kind"].endswith("Binding")]


def webhook_verdict(obj: dict[str, Any], config: PolicyConfig, namespace: str) -> cel_eval.Verdict:
    decision = webhook_validate(obj, config, namespace)
    if not decision.allowed:
        return cel_eval.Verdict("Deny", decision.message)
    if decision.warnings:
        return cel_eval.Verdict("Warn", "; ".join(decision.warnings))
    return cel_eval.Verdict("allow")


def vap_verdict(obj: dict[str, Any], config: PolicyConfig, namespace: str) -> cel_eval.Verdict:
    for policy, action in policies(config, Form.VAP):
        verdict = cel_eval.validate(policy, action, obj, namespace)
        if verdict.action != "allow":
            return verdict
    return cel_eval.Verdict("allow")


def webhook_result(obj: dict[str, Any], config: PolicyConfig, namespace: str) -> dict[str, Any]:
    operations = patch_operations(mutate(obj, config, namespace).edits)
    return comparable(jsonpatch.apply_patch(obj, operations) if operations else copy.deepcopy(obj))


def map_operations(obj: dict[str, Any], config: PolicyConfig, namespace: str) -> list[dict[str, Any]]:
    ((policy, _),) = policies(config, Form.MAP)
    return cel_eval.mutation(policy, config, obj, namespace)


def map_result(obj: dict[str, Any], config: PolicyConfig, namespace: str) -> dict[str, Any]:
    operations = map_operations(obj, config, namespace)
    return comparable(jsonpatch.apply_patch(obj, operations) if operations else copy.deepcopy(obj))


def comparable(obj: dict[str, Any]) -> dict[str, Any]:
    # The record of stripped tolerations is the same JSON; the webhook keeps the request's key order, the MAP
    # writes Kubernetes' field order (the order kube-apiserver itself serializes them in).
    annotations = obj.get("metadata", {}).get("annotations", {})
    if STRIPPED_ANNOTATION in annotations:
        annotations[STRIPPED_ANNOTATION] = json.loads(annotations[STRIPPED_ANNOTATION])
    return obj


def configured(name: str, mode: Mode) -> PolicyConfig:
    return replace(CONFIGS[name], mode=mode)


CASES = [*REVIEWS, TERMINATING]


# --- ValidatingAdmissionPolicy ---------------------------------------------------------------------------------

def config_params() -> list[Any]:
    """Every configuration; the fast lane takes the defaults only."""
    return [pytest.param(name, marks=() if name == "defaults" else pytest.mark.slow) for name in CONFIGS]


@pytest.mark.parametrize("config_name", config_params())
@pytest.mark.parametrize("mode", [Mode.WARN, Mode.DENY])
def test_vap_gives_the_webhooks_verdict_and_message_on_every_fixture(mode, config_name):
    config = configured(config_name, mode)
    differing = [name for name, obj, namespace in CASES
                 if vap_verdict(obj, config, namespace) != webhook_verdict(obj, config, namespace)]
    assert differing == []


def test_vap_actions_follow_the_mode():
    assert [a for _, a in policies(PolicyConfig(mode=Mode.WARN), Form.VAP)] == ["Warn"]
    # deny: denied, except a terminating object, which is warned about as the webhook does.
    assert [a for _, a in policies(PolicyConfig(mode=Mode.DENY), Form.VAP)] == ["Deny", "Warn"]


def test_strip_mode_has_no_vap():
    with pytest.raises(NothingToExport, match="--format map"):
        export(PolicyConfig(mode=Mode.STRIP), Form.VAP)


# --- MutatingAdmissionPolicy -----------------------------------------------------------------------------------

# warn and deny mutate only to add the gate, so without the gate there is no MAP to compare.
MAP_CONFIGS = [(name, mode) for name in CONFIGS for mode in (Mode.STRIP, Mode.WARN)
               if mode is Mode.STRIP or CONFIGS[name].readiness_gate]


@pytest.mark.parametrize("config_name, mode", [
    pytest.param(n, m, id=f"{n}-{m}", marks=() if n == "defaults" else pytest.mark.slow) for n, m in MAP_CONFIGS])
def test_map_leaves_every_fixture_as_mutate_does(config_name, mode):
    config = configured(config_name, mode)
    differing = [name for name, obj, namespace in CASES
                 if map_result(obj, config, namespace) != webhook_result(obj, config, namespace)]
    assert differing == []


def test_map_patch_applies_once():
    # reinvocationPolicy IfNeeded: a second run over its own result must change nothing.
    config = PolicyConfig(mode=Mode.STRIP, replacement_tolerations=CONFIGS["replacements"].replacement_tolerations)
    patched = 0
    for name, obj, namespace in CASES:
        operations = map_operations(obj, config, namespace)
        patched += bool(operations)
        once = jsonpatch.apply_patch(obj, operations) if operations else obj
        assert map_operations(once, config, namespace) == [], name
    assert patched >= 5


def test_map_spells_patches_as_kubernetes_types_them_and_nothing_else_differs():
    for config in CONFIGS.values():
        strip = replace(config, mode=Mode.STRIP)
        typed = patch_expression(strip, Dialect.KUBERNETES)
        assert "JSONPatch{op: " in typed
        plain = (typed.replace("JSONPatch{op: ", "{\"op\": ").replace(", path: ", ", \"path\": ")
                 .replace(", value: ", ", \"value\": "))
        assert plain == patch_expression(strip, Dialect.MAPS)
    ((policy, _),) = policies(PolicyConfig(mode=Mode.STRIP), Form.MAP)
    assert policy["spec"]["mutations"] == [{"patchType": "JSONPatch", "jsonPatch": {
        "expression": patch_expression(PolicyConfig(mode=Mode.STRIP), Dialect.KUBERNETES)}}]


def test_map_leaves_lists_longer_than_it_can_walk():
    obj = copy.deepcopy(REVIEWS[0][1])
    obj["spec"]["template"]["spec"]["tolerations"] = [{"operator": "Exists"}] * (MAX_TOLERATIONS + 1)
    operations = map_operations(obj, PolicyConfig(mode=Mode.STRIP, readiness_gate=False), "default")
    assert operations == []


def test_map_needs_strip_or_the_gate():
    with pytest.raises(NothingToExport, match="--format vap"):
        export(PolicyConfig(mode=Mode.DENY, readiness_gate=False), Form.MAP)


# --- generated toleration lists -------------------------------------------------------------------------------------

def tolerations() -> st.SearchStrategy[list[dict[str, Any]]]:
    # Kubernetes' field order and no null values: what kube-apiserver sends.
    text = st.text(alphabet=string.ascii_letters + "\"\\ /-.", max_size=4)
    toleration = st.fixed_dictionaries({}, optional={
        "key": st.sampled_from(["", "example.com/a", CILIUM_TAINT_KEY]),
        "operator": st.sampled_from(["Exists", "Equal"]),
        "value": text,
        "effect": st.sampled_from(["", "NoExecute", "NoSchedule", "PreferNoSchedule"]),
        "tolerationSeconds": st.integers(-5, 10**6),
    }).map(lambda t: {k: t[k] for k in ("key", "operator", "value", "effect", "tolerationSeconds") if k in t})
    narrowed = st.sampled_from([{"operator": "Exists", "effect": "NoSchedule"},
                                {"operator": "Exists", "effect": "PreferNoSchedule"}, {"operator": "Exists"}])
    return st.lists(st.one_of(toleration, narrowed), max_size=8)


def daemonset(tols: list[dict[str, Any]], labels: dict[str, str], annotations: dict[str, str]) -> dict[str, Any]:
    base = copy.deepcopy(dict(REVIEWS[0][1]))
    base["metadata"] = {"name": "agent", "namespace": "kube-system", "labels": labels, "annotations": annotations}
    base["spec"]["template"]["spec"]["tolerations"] = tols
    return base


GENERATED = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LABELS = st.dictionaries(st.sampled_from(["k8s-app", "app"]), st.sampled_from(["cilium", "istio-cni-node", "x"]),
                         max_size=2)
ANNOTATIONS = st.dictionaries(st.just("startupguard.io/skip"), st.sampled_from(["true", "false"]), max_size=1)


@pytest.mark.slow
@GENERATED
@given(tols=tolerations(), labels=LABELS, annotations=ANNOTATIONS,
       mode=st.sampled_from([Mode.WARN, Mode.DENY]), config_name=st.sampled_from(sorted(CONFIGS)))
def test_vap_agrees_with_the_webhook_on_generated_tolerations(tols, labels, annotations, mode, config_name):
    obj = daemonset(tols, labels, annotations)
    config = configured(config_name, mode)
    assert vap_verdict(obj, config, "kube-system") == webhook_verdict(obj, config, "kube-system")


@pytest.mark.slow
@GENERATED
@given(tols=tolerations(), labels=LABELS, annotations=ANNOTATIONS, config_name=st.sampled_from(sorted(CONFIGS)))
def test_map_agrees_with_the_webhook_on_generated_tolerations(tols, labels, annotations, config_name):
    obj = daemonset(tols, labels, annotations)
    config = configured(config_name, Mode.STRIP)
    assert map_result(obj, config, "kube-system") == webhook_result(obj, config, "kube-system")


# --- the objects themselves -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("form, mode, api_version, versions", [
    pytest.param(Form.VAP, Mode.WARN, "v1", ("1.30", NEWEST), id="vap-v1"),
    pytest.param(Form.VAP, Mode.DENY, "v1beta1", ("1.30",), id="vap-v1beta1"),
    pytest.param(Form.MAP, Mode.STRIP, "v1beta1", ("1.34",), id="map-v1beta1"),
    pytest.param(Form.MAP, Mode.STRIP, "v1", ("1.36", NEWEST), id="map-v1"),
])
def test_exported_objects_are_valid_for_the_kubernetes_versions_that_serve_them(form, mode, api_version, versions):
    for obj in export(PolicyConfig(mode=mode), form, api_version):
        for version in versions:
            validate_openapi(obj, version)


def test_every_exported_policy_matches_what_the_webhook_is_registered_for():
    objects = build(ROOT / "manifests" / "overlays" / "cert-manager")
    registered = [h["rules"] for o in objects if o["kind"].endswith("WebhookConfiguration") for h in o["webhooks"]]
    for form, mode in ((Form.VAP, Mode.DENY), (Form.MAP, Mode.STRIP)):
        for obj in export(PolicyConfig(mode=mode), form):
            if not obj["kind"].endswith("Binding"):
                assert [obj["spec"]["matchConstraints"]["resourceRules"]] * 2 == registered
