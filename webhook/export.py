"""The policy as Kubernetes' own admission policies, from the PolicyConfig the webhook reads.

`vap`: a ValidatingAdmissionPolicy and its binding that warn about, or deny, a blanket NoExecute toleration exactly
as /validate does, with the webhook's messages. `map`: a MutatingAdmissionPolicy and its binding that leave the
object as /mutate does (strip and readiness gate). Pure: configuration in, objects (plain dicts) out; the CEL is
text. Stdlib imports only.

The expressions keep to what Kubernetes' CEL and a plain CEL runtime with the strings extension share: the
standard macros and functions, `join` and `replace`, no optional types and no Kubernetes-only library. Positions
in a list are not in that subset, so the strip expression walks a fixed list of indices: tolerations lists longer
than MAX_TOLERATIONS are left as they are by the MAP (the webhook strips any length).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from webhook.enums import Mode
from webhook.policy import (
    NARROWED_TOLERATIONS,
    SKIP_ANNOTATION,
    STRIPPED_ANNOTATION,
    Exemption,
    PolicyConfig,
)

NAME = "cilium-startup-guard"
GROUP = "admissionregistration.k8s.io"
API_VERSIONS = ("v1", "v1beta1")
# The MAP finds positions by walking [0, 1, ..., MAX_TOLERATIONS - 1].
MAX_TOLERATIONS = 256
# What both forms review: the webhook's registration.
RESOURCE_RULES = [{"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                   "resources": ["daemonsets"], "scope": "Namespaced"}]
# Like the webhook's default failurePolicy: an expression that cannot be evaluated never blocks a write.
FAILURE_POLICY = "Ignore"


class Form(StrEnum):
    VAP = "vap"
    MAP = "map"


class NothingToExport(ValueError):
    """The configuration asks for something this form cannot do; the message says what and what to use."""


class Dialect(StrEnum):
    """How a JSON Patch operation is spelled in the MAP's expression. Kubernetes types it as JSONPatch{...};
    a plain CEL runtime has no such type, so tests evaluate the same expression with map literals."""

    KUBERNETES = "kubernetes"
    MAPS = "maps"


def export(config: PolicyConfig, form: Form, api_version: str = "v1") -> list[dict[str, Any]]:
    if api_version not in API_VERSIONS:
        raise NothingToExport(f"--api-version {api_version}: expected one of {', '.join(API_VERSIONS)}")
    if form is Form.VAP:
        return validating(config, api_version)
    return mutating(config, api_version)


# --- ValidatingAdmissionPolicy ---------------------------------------------------------------------------------

def validating(config: PolicyConfig, api_version: str) -> list[dict[str, Any]]:
    if config.mode is Mode.STRIP:
        raise NothingToExport("strip mode changes objects, which a ValidatingAdmissionPolicy cannot do; "
                              "export --format map for strip, or --mode warn|deny for a ValidatingAdmissionPolicy")
    finding = "!variables.exempt && size(variables.blanket) > 0"
    terminating = "has(object.metadata.deletionTimestamp)"
    if config.mode is Mode.WARN:
        return [*_vap(f"{NAME}", f"!({finding})", _warnings_message(config), "Warn", config, api_version)]
    # deny: a terminating object is let through with the warnings (finalizers must still be removable).
    return [*_vap(f"{NAME}", f"{terminating} || !({finding})", _denial_message(config), "Deny", config,
                  api_version),
            *_vap(f"{NAME}-terminating", f"!{terminating} || !({finding})", _warnings_message(config), "Warn",
                  config, api_version)]


def _vap(name: str, expression: str, message: str, action: str, config: PolicyConfig,
         api_version: str) -> list[dict[str, Any]]:
    policy = {
        "apiVersion": f"{GROUP}/{api_version}", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name, "labels": _labels()},
        "spec": {
            "failurePolicy": FAILURE_POLICY,
            "matchConstraints": {"resourceRules": RESOURCE_RULES},
            "variables": _variables(config),
            "validations": [{"expression": expression, "messageExpression": message, "reason": "Forbidden"}],
        },
    }
    binding = {
        "apiVersion": f"{GROUP}/{api_version}", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name, "labels": _labels()},
        "spec": {"policyName": name, "validationActions": [action]},
    }
    return [policy, binding]


# --- MutatingAdmissionPolicy -----------------------------------------------------------------------------------

def mutating(config: PolicyConfig, api_version: str) -> list[dict[str, Any]]:
    if config.mode is not Mode.STRIP and not config.readiness_gate:
        raise NothingToExport("with the readiness gate off, only strip mode changes objects; export "
                              "--format vap for warn or deny")
    policy = {
        "apiVersion": f"{GROUP}/{api_version}", "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": NAME, "labels": _labels()},
        "spec": {
            "failurePolicy": FAILURE_POLICY,
            "matchConstraints": {"resourceRules": RESOURCE_RULES},
            # The patch is idempotent: a second run after another policy's change adds nothing.
            "reinvocationPolicy": "IfNeeded",
            "variables": _variables(config) + _mutation_variables(config),
            "mutations": [{"patchType": "JSONPatch",
                           "jsonPatch": {"expression": patch_expression(config, Dialect.KUBERNETES)}}],
        },
    }
    binding = {
        "apiVersion": f"{GROUP}/{api_version}", "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": NAME, "labels": _labels()},
        "spec": {"policyName": NAME},
    }
    return [policy, binding]


def patch_expression(config: PolicyConfig, dialect: Dialect) -> str:
    """The JSON Patch /mutate would answer, as one CEL expression: a list of operations."""
    parts: list[str] = []
    if config.mode is Mode.STRIP:
        strip = [_op(dialect, "replace", "/spec/template/spec/tolerations", "variables.stripped"),
                 _map_entry(dialect, "object", "metadata", "annotations", STRIPPED_ANNOTATION,
                            "variables.strippedRecord")]
        parts.append(f"(size(variables.blanket) > 0 && size(variables.tolerations) <= {MAX_TOLERATIONS} ? "
                     f"[{', '.join(strip)}] : [])")
    if config.readiness_gate:
        gate = _op(dialect, "add", "/spec/template/spec/readinessGates",
                   _literal([{"conditionType": config.gate_condition_type}]))
        append_gate = _op(dialect, "add", "/spec/template/spec/readinessGates/-",
                          _literal({"conditionType": config.gate_condition_type}))
        gates = f"(variables.gated ? [] : has(variables.podSpec.readinessGates) ? [{append_gate}] : [{gate}])"
        entry = _map_entry(dialect, "object.spec.template", "metadata", "labels", config.gate_label,
                           _literal("true"))
        label = f"(variables.labelled ? [] : [{entry}])"
        parts.append(f"(variables.hasPodSpec ? {gates} + {label} : [])")
    return f"variables.exempt || has(object.metadata.deletionTimestamp) ? [] : {' + '.join(parts)}"


def _op(dialect: Dialect, op: str, path: str, value: str) -> str:
    if dialect is Dialect.KUBERNETES:
        return f"JSONPatch{{op: {_literal(op)}, path: {_literal(path)}, value: {value}}}"
    return f"{{\"op\": {_literal(op)}, \"path\": {_literal(path)}, \"value\": {value}}}"


def _map_entry(dialect: Dialect, base: str, parent: str, field: str, key: str, value: str) -> str:
    """Set one key of the string map base.parent.field, creating the map, and the parent, when absent
    (policy._set_map_entry)."""
    path = "/" + "/".join([*base.split(".")[1:], parent, field])
    entry = f"{{{_literal(key)}: {value}}}"
    return (f"(has({base}.{parent}) && has({base}.{parent}.{field}) ? "
            f"{_op(dialect, 'add', f'{path}/{_pointer(key)}', value)} : has({base}.{parent}) ? "
            f"{_op(dialect, 'add', path, entry)} : "
            f"{_op(dialect, 'add', path.rpartition('/')[0], f'{{{_literal(field)}: {entry}}}')})")


def _mutation_variables(config: PolicyConfig) -> list[dict[str, str]]:
    result: list[dict[str, str]] = []
    if config.mode is Mode.STRIP:
        indices = "[" + ", ".join(str(i) for i in range(MAX_TOLERATIONS)) + "]"
        t = "variables.tolerations"
        kept = f"!({_is_blanket(f'{t}[i]')})"
        narrowed = _literal([dict(n) for n in NARROWED_TOLERATIONS])
        extras = _literal(_distinct([dict(e) for e in config.replacement_tolerations]))
        result += [
            {"name": "positions", "expression": f"{indices}.filter(i, i < size({t}))"},
            # A match-all toleration becomes the narrowed ones in its place (the first one; the list has them
            # afterwards), other blanket ones go; the replacement tolerations follow, each once.
            {"name": "matchAllAt",
             "expression": f"variables.positions.filter(i, {_is_match_all(f'{t}[i]')})"},
            {"name": "kept", "expression": (
                f"variables.positions.filter(i, (size(variables.matchAllAt) == 0 || i < variables.matchAllAt[0]) "
                f"&& {kept}).map(i, {t}[i]) + "
                f"(size(variables.matchAllAt) == 0 ? [] : {narrowed}.filter(n, !(n in {t}))) + "
                f"variables.positions.filter(i, size(variables.matchAllAt) > 0 && i > variables.matchAllAt[0] "
                f"&& {kept}).map(i, {t}[i])")},
            {"name": "stripped", "expression": f"variables.kept + {extras}.filter(e, !(e in variables.kept))"},
            # The annotation records what was stripped, as compact JSON in Kubernetes' field order.
            {"name": "strippedRecord",
             "expression": f"\"[\" + variables.blanket.map(t, {_json_toleration('t')}).join(\",\") + \"]\""},
        ]
    if config.readiness_gate:
        labels = "object.spec.template.metadata.labels"
        result += [
            {"name": "gated", "expression": (
                "has(variables.podSpec.readinessGates) && variables.podSpec.readinessGates.exists(g, "
                f"has(g.conditionType) && g.conditionType == {_literal(config.gate_condition_type)})")},
            {"name": "labelled", "expression": (
                f"has(object.spec.template.metadata) && has({labels}) && {_literal(config.gate_label)} in {labels} "
                f"&& {labels}[{_literal(config.gate_label)}] == \"true\"")},
        ]
    return result


# --- shared: what the policy sees (policy.assess) ---------------------------------------------------------------

def _variables(config: PolicyConfig) -> list[dict[str, str]]:
    return [
        {"name": "hasPodSpec", "expression": "has(object.spec) && has(object.spec.template) && "
                                             "has(object.spec.template.spec)"},
        {"name": "podSpec", "expression": "variables.hasPodSpec ? object.spec.template.spec : {}"},
        {"name": "tolerations", "expression": "has(variables.podSpec.tolerations) ? variables.podSpec.tolerations "
                                              ": []"},
        {"name": "blanket", "expression": f"variables.tolerations.filter(t, {_is_blanket('t')})"},
        {"name": "namespace", "expression": "has(object.metadata.namespace) && object.metadata.namespace != \"\" ? "
                                            "object.metadata.namespace : request.namespace"},
        {"name": "name", "expression": "has(object.metadata.name) && object.metadata.name != \"\" ? "
                                       "object.metadata.name : (has(object.metadata.generateName) ? "
                                       "object.metadata.generateName : \"\") + \"<generated>\""},
        {"name": "exempt", "expression": _exempt(config)},
    ]


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
              for m in ("object.metadata", "object.spec.template.metadata")]
        terms.append(f"({on[0]} || (variables.hasPodSpec && has(object.spec.template.metadata) && {on[1]}))")
    return " && ".join(terms)


def _is_blanket(t: str) -> str:
    # policy.is_blanket_noexecute: operator Exists, no key, an effect that includes NoExecute.
    return (f"has({t}.operator) && {t}.operator == \"Exists\" && (!has({t}.key) || {t}.key == \"\") && "
            f"(!has({t}.effect) || {t}.effect == \"\" || {t}.effect == \"NoExecute\")")


def _is_match_all(t: str) -> str:
    return f"{_is_blanket(t)} && (!has({t}.effect) || {t}.effect == \"\")"


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


def _ref() -> str:
    return "(variables.namespace != \"\" ? variables.namespace + \"/\" : \"\") + variables.name"


def _warnings_message(config: PolicyConfig) -> str:
    # policy._finding_warning, one per blanket toleration, joined.
    return (f"variables.blanket.map(t, \"DaemonSet \" + {_ref()} + \": toleration \" + {_describe('t')} + "
            f"\" also tolerates \" + {_literal(config.cilium_taint_key)} + \"; give it a key\").join(\"; \")")


def _denial_message(config: PolicyConfig) -> str:
    # policy._denial_message.
    tail = ("so its pods can start before Cilium manages their network; give it a key, or limit it to effect "
            "NoSchedule")
    if config.allow_opt_out:
        tail += f", or opt out with the annotation {SKIP_ANNOTATION}: \"true\""
    return (f"\"DaemonSet \" + {_ref()} + \": toleration \" + variables.blanket.map(t, {_describe('t')})"
            f".join(\", \") + \" also tolerates \" + {_literal(config.cilium_taint_key)} + \", \" + {_literal(tail)}")


# --- spelling ---------------------------------------------------------------------------------------------------

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


def _labels() -> dict[str, str]:
    return {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": NAME}

