"""Evaluates exported admission policies the way kube-apiserver does, with the CEL reference runtime for C++
(cel-expr-python) and its strings extension: the resource rules, the matchConditions, then the `variables` in
order (each seeing the ones before it), then the validations (message included) or the JSON Patch mutation.

Kubernetes' CEL is cel-go with Kubernetes' libraries; the exported expressions keep to what both have (see
webhook/export.py). A MAP's JSONPatch{...} values are evaluated in their map-literal spelling.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cel_expr_python import cel
from cel_expr_python.ext.ext_strings import ExtStrings

from webhook.export import GATE_NAME, NAME, Dialect, pod_gate_patch, workload_patch
from webhook.policy import PolicyConfig

ROOTS = ("object", "oldObject", "request", "variables")


@functools.cache
def _env() -> Any:
    return cel.NewEnv(variables={name: cel.Type.DYN for name in ROOTS}, extensions=[ExtStrings()])


@functools.cache
def compiled(expression: str) -> Any:
    return _env().compile(expression)


def evaluate(expression: str, data: Mapping[str, Any]) -> Any:
    return compiled(expression).eval(data=dict(data)).plain_value()


def activation(request: Mapping[str, Any]) -> dict[str, Any]:
    return {"object": request.get("object"), "oldObject": request.get("oldObject"),
            "request": {k: v for k, v in request.items() if k not in ("object", "oldObject")}, "variables": {}}


def applies(policy: Mapping[str, Any], request: Mapping[str, Any]) -> bool:
    """matchConstraints.resourceRules (no subresources, exact names) and every matchCondition."""
    resource = request["resource"]
    if request.get("subResource"):
        return False
    if not any(resource["group"] in rule["apiGroups"] and resource["version"] in rule["apiVersions"]
               and resource["resource"] in rule["resources"] and request["operation"] in rule["operations"]
               for rule in policy["spec"]["matchConstraints"]["resourceRules"]):
        return False
    data = activation(request)
    return all(evaluate(c["expression"], data) is True for c in policy["spec"].get("matchConditions", []))


def bind(policy: Mapping[str, Any], request: Mapping[str, Any]) -> dict[str, Any]:
    data = activation(request)
    for variable in policy["spec"].get("variables", []):
        data["variables"] = {**data["variables"], variable["name"]: evaluate(variable["expression"], data)}
    return data


@dataclass(frozen=True)
class Verdict:
    action: str  # "allow", or the binding's validationActions[0] of the failed validation: "Warn", "Deny"
    message: str = ""


def validate(policy: Mapping[str, Any], action: str, request: Mapping[str, Any]) -> Verdict:
    if not applies(policy, request):
        return Verdict("allow")
    data = bind(policy, request)
    for validation in policy["spec"]["validations"]:
        if evaluate(validation["expression"], data) is not True:
            return Verdict(action, evaluate(validation["messageExpression"], data))
    return Verdict("allow")


def mutation(policy: Mapping[str, Any], config: PolicyConfig, request: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The JSON Patch one MAP applies, evaluated in its map-literal spelling (tests check the two spellings differ
    in nothing else)."""
    if not applies(policy, request):
        return []
    expression = {NAME: workload_patch, GATE_NAME: pod_gate_patch}[policy["metadata"]["name"]](config, Dialect.MAPS)
    operations = evaluate(expression, bind(policy, request))
    assert isinstance(operations, list)
    return operations
