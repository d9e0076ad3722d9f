"""The policy as Kubernetes' own admission policies, from the PolicyConfig the webhook reads.

`vap`: a ValidatingAdmissionPolicy and its binding that warn about, or deny, a blanket NoExecute toleration on the
configured kinds exactly as /validate does, with the webhook's messages (without the known-chart fix). `map`:
MutatingAdmissionPolicies and bindings that leave every object as /mutate does: strip, and the readiness gate at
Pod CREATE or in DaemonSet templates. Pure: configuration in, objects (plain dicts) out; the CEL is text. Stdlib
imports only.

The expressions keep to what Kubernetes' CEL and a plain CEL runtime with the strings extension share: the
standard macros and functions, `join` and `replace`, no optional types and no Kubernetes-only library. Positions
in a list are not in that subset, so the strip walks a fixed list of indices: a toleration list longer than
MAX_TOLERATIONS is left as it is by the MAP (the webhook strips any length).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from webhook.enums import Mode
from webhook.policy import (
    MAX_LISTED_TOLERATIONS,
    MAX_RECORDED_TOLERATIONS,
    NARROWED_TOLERATIONS,
    SKIP_ANNOTATION,
    STRIPPED_ANNOTATION,
    STRIPPED_TOTAL_ANNOTATION,
    Exemption,
    InjectAt,
    PolicyConfig,
)
from webhook.workloads import KINDS, Kind

NAME = "cilium-startup-guard"
GATE_NAME = f"{NAME}-gate"
GROUP = "admissionregistration.k8s.io"
API_VERSIONS = ("v1", "v1beta1")
# The MAP finds positions by walking [0, 1, ..., MAX_TOLERATIONS - 1].
MAX_TOLERATIONS = 256
# Like the webhook's default failurePolicy: an expression that cannot be evaluated never blocks a write.
FAILURE_POLICY = "Ignore"

# The webhook configurations' matchConditions (manifests/base/webhook-configurations.yaml; a test keeps them equal).
WORKLOAD_CONDITIONS = [
    {"name": "not-made-by-a-controller",
     "expression": "!(request.resource.resource in ['pods', 'replicasets', 'jobs']) "
                   "|| !has(object.metadata.ownerReferences) "
                   "|| !object.metadata.ownerReferences.exists(r, has(r.controller) && r.controller)"},
    {"name": "pods-and-jobs-at-creation",
     "expression": "!(request.resource.resource in ['pods', 'jobs']) || request.operation == 'CREATE'"},
]
GATE_CONDITIONS = [
    {"name": "made-by-a-daemonset",
     "expression": "has(object.metadata.ownerReferences) "
                   "&& object.metadata.ownerReferences.exists(r, has(r.controller) && r.controller "
                   "&& r.kind == 'DaemonSet' && r.apiVersion == 'apps/v1')"},
    {"name": "not-on-the-host-network", "expression": "!has(object.spec.hostNetwork) || !object.spec.hostNetwork"},
]
GATE_RULES = [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"],
               "scope": "Namespaced"}]


class Form(StrEnum):
    VAP = "vap"
    MAP = "map"


class NothingToExport(ValueError):
    """The configuration asks for something this form cannot do; the message says what and what to use."""


class Dialect(StrEnum):
    """How a JSON Patch operation is spelled in a MAP's expression. Kubernetes types it as JSONPatch{...}; a plain
    CEL runtime has no such type, so tests evaluate the same expression with map literals."""

    KUBERNETES = "kubernetes"
    MAPS = "maps"


def export(config: PolicyConfig, form: Form, api_version: str = "v1") -> list[dict[str, Any]]:
    if api_version not in API_VERSIONS:
        raise NothingToExport(f"--api-version {api_version}: expected one of {', '.join(API_VERSIONS)}")
    if form is Form.VAP:
        return validating(config, api_version)
    return mutating(config, api_version)


def workload_rules(config: PolicyConfig) -> list[dict[str, Any]]:
    """The webhook's workload entry: the configured kinds, each group times each resource."""
    return [{"apiGroups": ["", "apps", "batch"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
             "resources": sorted(KINDS[kind].plural for kind in config.kinds), "scope": "Namespaced"}]


# --- ValidatingAdmissionPolicy ---------------------------------------------------------------------------------

def validating(config: PolicyConfig, api_version: str) -> list[dict[str, Any]]:
    if config.mode is Mode.STRIP:
        raise NothingToExport("strip mode changes objects, which a ValidatingAdmissionPolicy cannot do; "
                              "export --format map for strip, or --mode warn|deny for a ValidatingAdmissionPolicy")
    finding = "!variables.exempt && size(variables.blanket) > 0"
    terminating = "has(object.metadata.deletionTimestamp)"
    if config.mode is Mode.WARN:
        return _vap(NAME, f"!({finding})", _warnings_message(config), "Warn", config, api_version)
    # deny: a terminating object is let through with the warnings (finalizers must still be removable).
    return [*_vap(NAME, f"{terminating} || !({finding})", _denial_message(config), "Deny", config, api_version),
            *_vap(f"{NAME}-terminating", f"!{terminating} || !({finding})", _warnings_message(config), "Warn",
                  config, api_version)]


def _vap(name: str, expression: str, message: str, action: str, config: PolicyConfig,
         api_version: str) -> list[dict[str, Any]]:
    policy = _policy("ValidatingAdmissionPolicy", name, api_version, {
        "failurePolicy": FAILURE_POLICY,
        "matchConstraints": {"resourceRules": workload_rules(config)},
        "matchConditions": WORKLOAD_CONDITIONS,
        "variables": _workload_variables(config),
        "validations": [{"expression": expression, "messageExpression": message, "reason": "Forbidden"}],
    })
    binding = _policy("ValidatingAdmissionPolicyBinding", name, api_version,
                      {"policyName": name, "validationActions": [action]})
    return [policy, binding]


# --- MutatingAdmissionPolicy -----------------------------------------------------------------------------------

def mutating(config: PolicyConfig, api_version: str) -> list[dict[str, Any]]:
    template_gate = _gates_templates(config)
    result: list[dict[str, Any]] = []
    if config.mode is Mode.STRIP or template_gate:
        result += _map(NAME, api_version, {
            "matchConstraints": {"resourceRules": workload_rules(config)},
            "matchConditions": WORKLOAD_CONDITIONS,
            "variables": _workload_variables(config) + _strip_variables(config) + (
                _gate_variables(config) if template_gate else []),
            "expression": workload_patch(config, Dialect.KUBERNETES),
        })
    if config.readiness_gate and config.inject_at is InjectAt.POD:
        result += _map(GATE_NAME, api_version, {
            "matchConstraints": {"resourceRules": GATE_RULES},
            "matchConditions": GATE_CONDITIONS,
            "variables": _pod_gate_variables(config) + _gate_variables(config),
            "expression": pod_gate_patch(config, Dialect.KUBERNETES),
        })
    if not result:
        raise NothingToExport("nothing to mutate: strip is off and so is the readiness gate (or it goes into "
                              "DaemonSet templates and DaemonSet is not among the kinds); export --format vap for "
                              "warn or deny")
    return result


def _map(name: str, api_version: str, parts: dict[str, Any]) -> list[dict[str, Any]]:
    policy = _policy("MutatingAdmissionPolicy", name, api_version, {
        "failurePolicy": FAILURE_POLICY,
        "matchConstraints": parts["matchConstraints"],
        "matchConditions": parts["matchConditions"],
        # The patch is idempotent: a second run after another policy's change adds nothing.
        "reinvocationPolicy": "IfNeeded",
        "variables": parts["variables"],
        "mutations": [{"patchType": "JSONPatch", "jsonPatch": {"expression": parts["expression"]}}],
    })
    return [policy, _policy("MutatingAdmissionPolicyBinding", name, api_version, {"policyName": name})]


def _gates_templates(config: PolicyConfig) -> bool:
    return config.readiness_gate and config.inject_at is InjectAt.TEMPLATE and Kind.DAEMONSET in config.kinds


def workload_patch(config: PolicyConfig, dialect: Dialect) -> str:
    """The JSON Patch /mutate answers for a workload, as one CEL expression: a list of operations."""
    parts: list[str] = []
    if config.mode is Mode.STRIP:
        annotation = _map_entry(dialect, "object", "\"/metadata\"", "annotations", STRIPPED_ANNOTATION,
                                "variables.strippedRecord")
        total = _op(dialect, "add", _literal(f"/metadata/annotations/{_pointer(STRIPPED_TOTAL_ANNOTATION)}"),
                    "string(size(variables.blanket))")
        replace = _op(dialect, "replace", 'variables.specPath + "/tolerations"', "variables.stripped")
        strip = (f"[{replace}, {annotation}] + "
                 f"(size(variables.distinct) > {MAX_RECORDED_TOLERATIONS} ? [{total}] : [])")
        parts.append(f"(size(variables.blanket) > 0 && size(variables.tolerations) <= {MAX_TOLERATIONS} ? "
                     f"{strip} : [])")
    if _gates_templates(config):
        parts.append(f"(variables.kind == \"DaemonSet\" && variables.hasPodSpec ? "
                     f"{_gate_ops(config, dialect, 'object.spec.template', '/spec/template')} : [])")
    return f"variables.exempt || has(object.metadata.deletionTimestamp) ? [] : {' + '.join(parts)}"


def pod_gate_patch(config: PolicyConfig, dialect: Dialect) -> str:
    """The gate /mutate adds to a DaemonSet's pod at creation."""
    return f"variables.exempt || !variables.hasPodSpec ? [] : {_gate_ops(config, dialect, 'object', '')}"


def _gate_ops(config: PolicyConfig, dialect: Dialect, template: str, template_path: str) -> str:
    gates = f"{template_path}/spec/readinessGates"
    add = _op(dialect, "add", _literal(gates), _literal([{"conditionType": config.gate_condition_type}]))
    append = _op(dialect, "add", _literal(f"{gates}/-"), _literal({"conditionType": config.gate_condition_type}))
    label = _map_entry(dialect, template, _literal(f"{template_path}/metadata"), "labels", config.gate_label,
                       _literal("true"))
    return (f"(variables.gated ? [] : has(variables.podSpec.readinessGates) ? [{append}] : [{add}]) + "
            f"(variables.labelled ? [] : [{label}])")


def _op(dialect: Dialect, op: str, path: str, value: str) -> str:
    """One operation; path and value are CEL expressions."""
    if dialect is Dialect.KUBERNETES:
        return f"JSONPatch{{op: {_literal(op)}, path: {path}, value: {value}}}"
    return f"{{\"op\": {_literal(op)}, \"path\": {path}, \"value\": {value}}}"


def _map_entry(dialect: Dialect, base: str, base_path: str, field: str, key: str, value: str) -> str:
    """Set one key of the string map base.metadata.<field>, creating the map, and the metadata, when absent
    (policy._set_map_entry). base_path is a CEL expression for the JSON Pointer of base.metadata."""
    meta = f"{base}.metadata"
    entry = f"{{{_literal(key)}: {value}}}"
    in_map = _op(dialect, "add", base_path + " + " + _literal(f"/{field}/{_pointer(key)}"), value)
    new_map = _op(dialect, "add", base_path + " + " + _literal(f"/{field}"), entry)
    new_metadata = _op(dialect, "add", base_path, f"{{{_literal(field)}: {entry}}}")
    return f"(has({meta}) && has({meta}.{field}) ? {in_map} : has({meta}) ? {new_map} : {new_metadata})"


# --- variables: what the policy sees (policy.assess) -----------------------------------------------------------

def _workload_variables(config: PolicyConfig) -> list[dict[str, str]]:
    # Where each kind keeps its pod template (workloads.KINDS): a CronJob one level deeper, a Pod is its own.
    cronjob = ("has(object.spec) && has(object.spec.jobTemplate) && has(object.spec.jobTemplate.spec) && "
               "has(object.spec.jobTemplate.spec.template) ? object.spec.jobTemplate.spec.template : {}")
    templated = "has(object.spec) && has(object.spec.template) ? object.spec.template : {}"
    return [
        {"name": "kind", "expression": "request.kind.kind"},
        {"name": "template", "expression": f"variables.kind == \"Pod\" ? object : variables.kind == \"CronJob\" ? "
                                           f"({cronjob}) : ({templated})"},
        {"name": "specPath", "expression": "variables.kind == \"Pod\" ? \"/spec\" : variables.kind == \"CronJob\" ? "
                                           "\"/spec/jobTemplate/spec/template/spec\" : \"/spec/template/spec\""},
        *_spec_variables(),
        {"name": "namespace", "expression": _namespace()},
        {"name": "name", "expression": "has(object.metadata.name) && object.metadata.name != \"\" ? "
                                       "object.metadata.name : (has(object.metadata.generateName) ? "
                                       "object.metadata.generateName : \"\") + \"<generated>\""},
        {"name": "exempt", "expression": _exempt(config)},
    ]


def _pod_gate_variables(config: PolicyConfig) -> list[dict[str, str]]:
    # A DaemonSet's pod is exempt as its DaemonSet would be: exemption names match the DaemonSet's name.
    owner = ("object.metadata.ownerReferences.filter(r, has(r.controller) && r.controller && r.kind == 'DaemonSet' "
             "&& r.apiVersion == 'apps/v1')")
    return [
        {"name": "template", "expression": "object"},
        *_spec_variables(),
        {"name": "namespace", "expression": _namespace()},
        {"name": "name", "expression": f"{owner}.map(r, has(r.name) ? r.name : \"\")[0]"},
        {"name": "exempt", "expression": _exempt(config)},
    ]


def _spec_variables() -> list[dict[str, str]]:
    return [
        {"name": "hasPodSpec", "expression": "has(variables.template.spec)"},
        {"name": "podSpec", "expression": "variables.hasPodSpec ? variables.template.spec : {}"},
        {"name": "tolerations", "expression": "has(variables.podSpec.tolerations) ? variables.podSpec.tolerations "
                                              ": []"},
        {"name": "blanket", "expression": f"variables.tolerations.filter(t, {_is_blanket('t')})"},
    ]


def _strip_variables(config: PolicyConfig) -> list[dict[str, str]]:
    if config.mode is not Mode.STRIP:
        return []
    indices = "[" + ", ".join(str(i) for i in range(MAX_TOLERATIONS)) + "]"
    t = "variables.tolerations"
    b = "variables.blanket"
    kept = f"!({_is_blanket(f'{t}[i]')})"
    narrowed = _literal([dict(n) for n in NARROWED_TOLERATIONS])
    extras = _literal(_distinct([dict(e) for e in config.replacement_tolerations]))
    recorded = "[" + ", ".join(str(i) for i in range(MAX_RECORDED_TOLERATIONS)) + "]"
    return [
        {"name": "positions", "expression": f"{indices}.filter(i, i < size({t}))"},
        # A match-all toleration becomes the narrowed ones in its place (the first one; the list has them
        # afterwards), other blanket ones go; the replacement tolerations follow, each once.
        {"name": "matchAllAt", "expression": f"variables.positions.filter(i, {_is_match_all(f'{t}[i]')})"},
        {"name": "kept", "expression": (
            f"variables.positions.filter(i, (size(variables.matchAllAt) == 0 || i < variables.matchAllAt[0]) "
            f"&& {kept}).map(i, {t}[i]) + "
            f"(size(variables.matchAllAt) == 0 ? [] : {narrowed}.filter(n, !(n in {t}))) + "
            f"variables.positions.filter(i, size(variables.matchAllAt) > 0 && i > variables.matchAllAt[0] "
            f"&& {kept}).map(i, {t}[i])")},
        {"name": "stripped", "expression": f"variables.kept + {extras}.filter(e, !(e in variables.kept))"},
        # The distinct stripped tolerations in order, the first MAX_RECORDED_TOLERATIONS of them recorded as
        # compact JSON in Kubernetes' field order; past that the total is recorded as well.
        {"name": "blanketAt", "expression": f"{indices}.filter(i, i < size({b}))"},
        {"name": "distinct", "expression": f"variables.blanketAt.filter(i, !variables.blanketAt.exists(j, j < i && "
                                           f"{b}[j] == {b}[i]))"},
        {"name": "strippedRecord", "expression": (
            f"\"[\" + {recorded}.filter(k, k < size(variables.distinct)).map(k, "
            f"{_json_toleration(f'{b}[variables.distinct[k]]')}).join(\",\") + \"]\"")},
    ]


def _gate_variables(config: PolicyConfig) -> list[dict[str, str]]:
    labels = "variables.template.metadata.labels"
    return [
        {"name": "gated", "expression": (
            "has(variables.podSpec.readinessGates) && variables.podSpec.readinessGates.exists(g, "
            f"has(g.conditionType) && g.conditionType == {_literal(config.gate_condition_type)})")},
        {"name": "labelled", "expression": (
            f"has(variables.template.metadata) && has({labels}) && {_literal(config.gate_label)} in {labels} "
            f"&& {labels}[{_literal(config.gate_label)}] == \"true\"")},
    ]


def _namespace() -> str:
    return ("has(object.metadata.namespace) && object.metadata.namespace != \"\" ? object.metadata.namespace : "
            "request.namespace")


def _exempt(config: PolicyConfig) -> str:
    reasons = ["has(variables.podSpec.hostNetwork) && variables.podSpec.hostNetwork == true"]
    reasons += [f"({_exemption(e)})" for e in config.exemptions]
    reasons.append(f"variables.tolerations.exists(t, has(t.key) && t.key == {_literal(config.cilium_taint_key)})")
    if config.allow_opt_out:
        annotations = "object.metadata.annotations"
        reasons.append(f"has({annotations}) && {_literal(SKIP_ANNOTATION)} in {annotations} && "
                       f"{annotations}[{_literal(SKIP_ANNOTATION)}] == \"true\"")
    return " || ".join(reasons)


def _exemption(exemption: Exemption) -> str:
    terms = []
    if exemption.namespace is not None:
        terms.append(f"variables.namespace == {_literal(exemption.namespace)}")
    if exemption.name is not None:
        terms.append(f"variables.name == {_literal(exemption.name)}")
    for key, value in exemption.labels:
        on = [f"(has({m}.labels) && {_literal(key)} in {m}.labels && {m}.labels[{_literal(key)}] == {_literal(value)})"
              for m in ("object.metadata", "variables.template.metadata")]
        terms.append(f"({on[0]} || (has(variables.template.metadata) && {on[1]}))")
    return " && ".join(terms)


def _is_blanket(t: str) -> str:
    # policy.is_blanket_noexecute: operator Exists, no key, an effect that includes NoExecute.
    return (f"has({t}.operator) && {t}.operator == \"Exists\" && (!has({t}.key) || {t}.key == \"\") && "
            f"(!has({t}.effect) || {t}.effect == \"\" || {t}.effect == \"NoExecute\")")


def _is_match_all(t: str) -> str:
    return f"{_is_blanket(t)} && (!has({t}.effect) || {t}.effect == \"\")"


# --- messages (policy.finding_warnings, policy.denial_message) -------------------------------------------------

def _describe(t: str) -> str:
    """policy.describe_toleration: {key: k, operator: Exists, effect: NoExecute}."""
    fields = [f"(has({t}.{f}) && {t}.{f} != \"\" ? [\"{f}: \" + {t}.{f}] : [])"
              for f in ("key", "operator", "value", "effect")]
    fields.append(f"(has({t}.tolerationSeconds) ? [\"tolerationSeconds: \" + string({t}.tolerationSeconds)] : [])")
    return f"\"{{\" + ({' + '.join(fields)}).join(\", \") + \"}}\""


def _json_toleration(t: str) -> str:
    def text(field: str) -> str:
        escaped = f"{t}.{field}.replace(\"\\\\\", \"\\\\\\\\\").replace(\"\\\"\", \"\\\\\\\"\")"
        return f"(has({t}.{field}) ? [\"\\\"{field}\\\":\\\"\" + {escaped} + \"\\\"\"] : [])"

    fields = [text(f) for f in ("key", "operator", "value", "effect")]
    fields.append(f"(has({t}.tolerationSeconds) ? [\"\\\"tolerationSeconds\\\":\" + "
                  f"string({t}.tolerationSeconds)] : [])")
    return f"\"{{\" + ({' + '.join(fields)}).join(\",\") + \"}}\""


def _subject() -> str:
    return ("variables.kind + \" \" + (variables.namespace != \"\" ? variables.namespace + \"/\" : \"\") + "
            "variables.name")


def _listed() -> str:
    """The blanket tolerations messages name one by one."""
    indices = "[" + ", ".join(str(i) for i in range(MAX_LISTED_TOLERATIONS)) + "]"
    return f"{indices}.filter(i, i < size(variables.blanket)).map(i, variables.blanket[i])"


def _more() -> str:
    return f"size(variables.blanket) - {MAX_LISTED_TOLERATIONS}"


def _warnings_message(config: PolicyConfig) -> str:
    listed = (f"{_listed()}.map(t, {_subject()} + \": \" + {_describe('t')} + \" also tolerates \" + "
              f"{_literal(config.cilium_taint_key)} + \"; give it a key\")")
    more = (f"({_more()} > 0 ? [{_subject()} + \": \" + string({_more()}) + "
            f"\" more blanket NoExecute tolerations not listed\"] : [])")
    return f"({listed} + {more}).join(\"; \")"


def _denial_message(config: PolicyConfig) -> str:
    tail = "give it a key, or limit it to effect NoSchedule"
    if config.allow_opt_out:
        tail += f", or opt out with the annotation {SKIP_ANNOTATION}: \"true\""
    tolerations = (f"{_listed()}.map(t, {_describe('t')}).join(\", \") + "
                   f"({_more()} > 0 ? \" and \" + string({_more()}) + \" more\" : \"\")")
    return (f"{_subject()} + \": toleration \" + {tolerations} + \" also tolerates \" + "
            f"{_literal(config.cilium_taint_key)} + "
            f"\", so its pods can start before Cilium manages their network; \" + {_literal(tail)}")


# --- spelling ---------------------------------------------------------------------------------------------------

def _policy(kind: str, name: str, api_version: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{api_version}", "kind": kind,
            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": NAME}},
            "spec": spec}


def _literal(value: Any) -> str:
    """A CEL literal for a JSON value: CEL's string escapes and list and map syntax accept JSON's."""
    return json.dumps(value, ensure_ascii=True)


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _distinct(items: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    result: list[Mapping[str, Any]] = []
    for item in items:
        if item not in result:
            result.append(item)
    return result
