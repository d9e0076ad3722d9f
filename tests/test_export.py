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
from webhook.admission import decide, parse_review, patch_operations
from webhook.catalog import Catalog
from webhook.enums import Endpoint, Mode
from webhook.export import (
    GATE_CONDITIONS,
    MAX_TOLERATIONS,
    WORKLOAD_CONDITIONS,
    Dialect,
    Form,
    NothingToExport,
    export,
    pod_gate_patch,
    workload_patch,
)
from webhook.policy import (
    CILIUM_TAINT_KEY,
    MAX_LISTED_TOLERATIONS,
    MAX_RECORDED_TOLERATIONS,
    STRIPPED_ANNOTATION,
    STRIPPED_TOTAL_ANNOTATION,
    Exemption,
    InjectAt,
    PolicyConfig,
)
from webhook.workloads import KINDS

FIXTURES = Path(__file__).parent / "fixtures"
# The VAP's messages are the webhook's without the known-chart fix (docs/policy-export.md): compare without it.
BARE = PolicyConfig(catalog=Catalog())

CONFIGS = {
    "defaults": BARE,
    "no-opt-out": replace(BARE, allow_opt_out=False),
    "exemptions": replace(BARE, exemptions=(
        Exemption(namespace="kube-system"), Exemption(name="fluent-bit"),
        Exemption(namespace="monitoring", labels=(("app.kubernetes.io/name", "node-exporter"),)),
        Exemption(labels=(("app", "istio-cni-node"), ("k8s-app", "istio-cni-node"))))),
    "replacements": replace(BARE, replacement_tolerations=(
        {"key": "example.com/maintenance", "operator": "Exists", "effect": "NoExecute"},
        {"operator": "Exists", "effect": "NoSchedule"})),
    "no-gate": replace(BARE, readiness_gate=False),
    "template-gate": replace(BARE, inject_at=InjectAt.TEMPLATE),
    "every-kind": replace(BARE, kinds=frozenset(KINDS)),
    "every-kind-template-gate": replace(BARE, kinds=frozenset(KINDS), inject_at=InjectAt.TEMPLATE),
    "other-gate-and-taint": replace(BARE, gate_condition_type="example.com/network-ready",
                                    gate_label="example.com/gated", cilium_taint_key="example.com/cni-not-ready"),
}


def requests() -> list[tuple[str, dict[str, Any]]]:
    return [(path.stem, json.loads(path.read_text())["request"]) for path in sorted(FIXTURES.glob("*.json"))]


REQUESTS = requests()
# A DaemonSet with a blanket toleration, being deleted: let through in deny mode, with the warnings.
_EBS = next(r for name, r in REQUESTS if name == "daemonset_ebs_csi_node")
TERMINATING = ("terminating_ebs_csi_node", {**_EBS, "object": {**_EBS["object"], "metadata": {
    **_EBS["object"]["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}}})
CASES = [*REQUESTS, TERMINATING]


def policies(config: PolicyConfig, form: Form) -> list[tuple[dict[str, Any], str]]:
    """(policy, action of its binding) pairs, in the order kube-apiserver reports them."""
    objects = export(config, form)
    bindings = {o["spec"]["policyName"]: o for o in objects if o["kind"].endswith("Binding")}
    return [(o, bindings[o["metadata"]["name"]]["spec"].get("validationActions", [""])[0])
            for o in objects if not o["kind"].endswith("Binding")]


def review(request: dict[str, Any]) -> Any:
    return parse_review(json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                    "request": request}).encode())


def webhook_verdict(request: dict[str, Any], config: PolicyConfig) -> cel_eval.Verdict:
    decision = decide(review(request), config, Endpoint.VALIDATE)
    if not decision.allowed:
        return cel_eval.Verdict("Deny", decision.message)
    if decision.warnings:
        return cel_eval.Verdict("Warn", "; ".join(decision.warnings))
    return cel_eval.Verdict("allow")


def vap_verdict(request: dict[str, Any], config: PolicyConfig) -> cel_eval.Verdict:
    for policy, action in policies(config, Form.VAP):
        verdict = cel_eval.validate(policy, action, request)
        if verdict.action != "allow":
            return verdict
    return cel_eval.Verdict("allow")


def webhook_result(request: dict[str, Any], config: PolicyConfig) -> dict[str, Any]:
    operations = patch_operations(decide(review(request), config, Endpoint.MUTATE).edits)
    obj = request["object"]
    return comparable(jsonpatch.apply_patch(obj, operations) if operations else copy.deepcopy(obj))


def map_operations(request: dict[str, Any], config: PolicyConfig) -> list[dict[str, Any]]:
    # kube-apiserver runs the MAPs one after the other, each on the object as the one before left it.
    operations: list[dict[str, Any]] = []
    for policy, _ in policies(config, Form.MAP):
        obj = jsonpatch.apply_patch(request["object"], operations) if operations else request["object"]
        operations += cel_eval.mutation(policy, config, {**request, "object": obj})
    return operations


def map_result(request: dict[str, Any], config: PolicyConfig) -> dict[str, Any]:
    operations = map_operations(request, config)
    obj = request["object"]
    return comparable(jsonpatch.apply_patch(obj, operations) if operations else copy.deepcopy(obj))


def comparable(obj: Any) -> Any:
    if not isinstance(obj, dict):
        return obj  # a DELETE carries no object
    # The record of stripped tolerations is the same JSON; the webhook keeps the request's key order, the MAP
    # writes Kubernetes' field order (the order kube-apiserver itself serializes them in).
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    if STRIPPED_ANNOTATION in annotations:
        annotations[STRIPPED_ANNOTATION] = json.loads(annotations[STRIPPED_ANNOTATION])
    return obj


def configured(name: str, mode: Mode) -> PolicyConfig:
    return replace(CONFIGS[name], mode=mode)


def mutates(config: PolicyConfig) -> bool:
    try:
        export(config, Form.MAP)
    except NothingToExport:
        return False
    return True


# --- ValidatingAdmissionPolicy ---------------------------------------------------------------------------------

def config_params() -> list[Any]:
    """Every configuration; the fast lane takes the defaults only."""
    return [pytest.param(name, marks=() if name == "defaults" else pytest.mark.slow) for name in CONFIGS]


@pytest.mark.parametrize("config_name", config_params())
@pytest.mark.parametrize("mode", [Mode.WARN, Mode.DENY])
def test_vap_gives_the_webhooks_verdict_and_message_on_every_fixture(mode, config_name):
    config = configured(config_name, mode)
    differing = [name for name, request in CASES if vap_verdict(request, config) != webhook_verdict(request, config)]
    assert differing == []


@pytest.mark.parametrize("mode", [Mode.WARN, Mode.DENY])
def test_vap_names_as_many_tolerations_as_the_webhook_and_counts_the_rest(mode):
    request = copy.deepcopy(_EBS)
    request["object"]["spec"]["template"]["spec"]["tolerations"] = [
        {"operator": "Exists", "tolerationSeconds": i} for i in range(MAX_LISTED_TOLERATIONS + 2)]
    config = replace(BARE, mode=mode)
    verdict = vap_verdict(request, config)
    assert verdict == webhook_verdict(request, config)
    assert "2 more" in verdict.message


def test_vap_actions_follow_the_mode():
    assert [a for _, a in policies(replace(BARE, mode=Mode.WARN), Form.VAP)] == ["Warn"]
    # deny: denied, except a terminating object, which is warned about as the webhook does.
    assert [a for _, a in policies(replace(BARE, mode=Mode.DENY), Form.VAP)] == ["Deny", "Warn"]


def test_strip_mode_has_no_vap():
    with pytest.raises(NothingToExport, match="--format map"):
        export(PolicyConfig(mode=Mode.STRIP), Form.VAP)


# --- MutatingAdmissionPolicy -----------------------------------------------------------------------------------

MAP_CONFIGS = [(name, mode) for name in CONFIGS for mode in (Mode.STRIP, Mode.WARN)
               if mutates(configured(name, mode))]


@pytest.mark.parametrize("config_name, mode", [
    pytest.param(n, m, id=f"{n}-{m}", marks=() if n == "defaults" else pytest.mark.slow) for n, m in MAP_CONFIGS])
def test_map_leaves_every_fixture_as_mutate_does(config_name, mode):
    config = configured(config_name, mode)
    differing = [name for name, request in CASES if map_result(request, config) != webhook_result(request, config)]
    assert differing == []


def test_map_patch_applies_once():
    # reinvocationPolicy IfNeeded: a second run over its own result must change nothing.
    config = replace(CONFIGS["replacements"], mode=Mode.STRIP, kinds=frozenset(KINDS))
    patched = 0
    for name, request in CASES:
        operations = map_operations(request, config)
        patched += bool(operations)
        once = jsonpatch.apply_patch(request["object"], operations) if operations else request["object"]
        assert map_operations({**request, "object": once}, config) == [], name
    assert patched >= 10


def test_map_spells_patches_as_kubernetes_types_them_and_nothing_else_differs():
    for config in CONFIGS.values():
        strip = replace(config, mode=Mode.STRIP)
        for patch in (workload_patch, pod_gate_patch):
            typed = patch(strip, Dialect.KUBERNETES)
            assert "JSONPatch{op: " in typed
            plain = (typed.replace("JSONPatch{op: ", "{\"op\": ").replace(", path: ", ", \"path\": ")
                     .replace(", value: ", ", \"value\": "))
            assert plain == patch(strip, Dialect.MAPS)
    ((policy, _), (gate, _)) = policies(replace(BARE, mode=Mode.STRIP), Form.MAP)
    assert policy["spec"]["mutations"] == [{"patchType": "JSONPatch", "jsonPatch": {
        "expression": workload_patch(replace(BARE, mode=Mode.STRIP), Dialect.KUBERNETES)}}]
    assert gate["spec"]["mutations"][0]["jsonPatch"]["expression"] == pod_gate_patch(BARE, Dialect.KUBERNETES)


def test_map_leaves_lists_longer_than_it_can_walk():
    request = copy.deepcopy(_EBS)
    request["object"]["spec"]["template"]["spec"]["tolerations"] = [{"operator": "Exists"}] * (MAX_TOLERATIONS + 1)
    assert map_operations(request, replace(BARE, mode=Mode.STRIP, readiness_gate=False)) == []


@pytest.mark.parametrize("distinct", [MAX_RECORDED_TOLERATIONS, MAX_RECORDED_TOLERATIONS + 1])
def test_map_records_the_stripped_tolerations_as_the_webhook_does_around_its_bound(distinct):
    request = copy.deepcopy(_EBS)
    blanket = [{"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": i} for i in range(distinct)]
    request["object"]["spec"]["template"]["spec"]["tolerations"] = blanket + blanket[:3]
    config = replace(BARE, mode=Mode.STRIP)
    result = map_result(request, config)
    assert result == webhook_result(request, config)
    assert (STRIPPED_TOTAL_ANNOTATION in result["metadata"]["annotations"]) is (distinct > MAX_RECORDED_TOLERATIONS)


def test_map_needs_strip_or_the_gate():
    with pytest.raises(NothingToExport, match="--format vap"):
        export(replace(BARE, mode=Mode.DENY, readiness_gate=False), Form.MAP)


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


TEMPLATES = {name: next(r for n, r in REQUESTS if n == name)
             for name in ("daemonset_ebs_csi_node", "cronjob_linkerd_heartbeat", "pod_bare_generate_name",
                          "pod_daemonset_ebs_csi_node")}
POD_SPEC = {"daemonset_ebs_csi_node": ("spec", "template", "spec"),
            "cronjob_linkerd_heartbeat": ("spec", "jobTemplate", "spec", "template", "spec"),
            "pod_bare_generate_name": ("spec",), "pod_daemonset_ebs_csi_node": ("spec",)}


def generated(template: str, tols: list[dict[str, Any]], labels: dict[str, str],
              annotations: dict[str, str]) -> dict[str, Any]:
    request = copy.deepcopy(TEMPLATES[template])
    metadata = request["object"]["metadata"]
    metadata["labels"] = labels
    metadata["annotations"] = annotations
    spec = request["object"]
    for key in POD_SPEC[template]:
        spec = spec[key]
    spec["tolerations"] = tols
    return request


GENERATED = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LABELS = st.dictionaries(st.sampled_from(["k8s-app", "app"]), st.sampled_from(["cilium", "istio-cni-node", "x"]),
                         max_size=2)
ANNOTATIONS = st.dictionaries(st.just("startupguard.io/skip"), st.sampled_from(["true", "false"]), max_size=1)
GENERATED_CONFIGS = ("defaults", "every-kind", "every-kind-template-gate", "exemptions", "replacements")


@pytest.mark.slow
@GENERATED
@given(template=st.sampled_from(sorted(TEMPLATES)), tols=tolerations(), labels=LABELS, annotations=ANNOTATIONS,
       mode=st.sampled_from([Mode.WARN, Mode.DENY]), config_name=st.sampled_from(GENERATED_CONFIGS))
def test_vap_agrees_with_the_webhook_on_generated_tolerations(template, tols, labels, annotations, mode,
                                                              config_name):
    request = generated(template, tols, labels, annotations)
    config = configured(config_name, mode)
    assert vap_verdict(request, config) == webhook_verdict(request, config)


@pytest.mark.slow
@GENERATED
@given(template=st.sampled_from(sorted(TEMPLATES)), tols=tolerations(), labels=LABELS, annotations=ANNOTATIONS,
       config_name=st.sampled_from(GENERATED_CONFIGS))
def test_map_agrees_with_the_webhook_on_generated_tolerations(template, tols, labels, annotations, config_name):
    request = generated(template, tols, labels, annotations)
    config = configured(config_name, Mode.STRIP)
    assert map_result(request, config) == webhook_result(request, config)


# --- the objects themselves -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("form, mode, api_version, versions", [
    pytest.param(Form.VAP, Mode.WARN, "v1", ("1.30", NEWEST), id="vap-v1"),
    pytest.param(Form.VAP, Mode.DENY, "v1beta1", ("1.30",), id="vap-v1beta1"),
    pytest.param(Form.MAP, Mode.STRIP, "v1beta1", ("1.34",), id="map-v1beta1"),
    pytest.param(Form.MAP, Mode.STRIP, "v1", ("1.36", NEWEST), id="map-v1"),
])
def test_exported_objects_are_valid_for_the_kubernetes_versions_that_serve_them(form, mode, api_version, versions):
    for obj in export(replace(BARE, mode=mode, kinds=frozenset(KINDS)), form, api_version):
        for version in versions:
            validate_openapi(obj, version)


def test_every_exported_policy_matches_what_the_webhook_is_registered_for():
    objects = build(ROOT / "manifests" / "overlays" / "cert-manager")
    hooks = {h["name"]: h for o in objects if o["kind"].endswith("WebhookConfiguration") for h in o["webhooks"]}
    assert hooks["validate.startupguard.io"]["matchConditions"] == WORKLOAD_CONDITIONS
    assert hooks["mutate.startupguard.io"]["matchConditions"] == WORKLOAD_CONDITIONS
    assert hooks["gate.startupguard.io"]["matchConditions"] == GATE_CONDITIONS
    (vap, _) = export(replace(BARE, mode=Mode.WARN), Form.VAP)
    strip, _, gate, _ = export(replace(BARE, mode=Mode.STRIP), Form.MAP)
    for policy in (vap, strip):
        assert policy["spec"]["matchConstraints"]["resourceRules"] == hooks["validate.startupguard.io"]["rules"]
    assert gate["spec"]["matchConstraints"]["resourceRules"] == hooks["gate.startupguard.io"]["rules"]
