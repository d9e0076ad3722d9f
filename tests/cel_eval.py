"""Evaluates the CEL of exported admission policies the way kube-apiserver does, with the CEL reference runtime for
C++ (cel-expr-python) and its strings extension: `variables` in order, each seeing the ones before it, then the
validations (message included) or the JSON Patch mutation.

Kubernetes' CEL is cel-go with Kubernetes' libraries; the exported expressions keep to what both have (see
webhook/export.py). The MAP's JSONPatch{...} values are evaluated in their map-literal spelling.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cel_expr_python import cel
from cel_expr_python.ext.ext_strings import ExtStrings

from webhook.export import Dialect, patch_expression
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


def bind(policy: Mapping[str, Any], obj: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """The activation of one admission request: object, request, and every variable of the policy."""
    data: dict[str, Any] = {"object": obj, "oldObject": None, "request": {"namespace": namespace},
                            "variables": {}}
    for variable in policy["spec"].get("variables", []):
        data["variables"] = {**data["variables"], variable["name"]: evaluate(variable["expression"], data)}
    return data


@dataclass(frozen=True)
class Verdict:
    action: str  # "allow", or the binding's validationActions[0] of the failed validation: "Warn", "Deny"
    message: str = ""


def validate(policy: Mapping[str, Any], action: str, obj: Mapping[str, Any], namespace: str) -> Verdict:
    data = bind(policy, obj, namespace)
    for validation in policy["spec"]["validations"]:
        if evaluate(validation["expression"], data) is not True:
            return Verdict(action, evaluate(validation["messageExpression"], data))
    return Verdict("allow")


def mutation(policy: Mapping[str, Any], config: PolicyConfig, obj: Mapping[str, Any],
             namespace: str) -> list[dict[str, Any]]:
    """The JSON Patch the MAP applies, evaluated in its map-literal spelling (tests check the two spellings
    differ in nothing else)."""
    data = bind(policy, obj, namespace)
    operations = evaluate(patch_expression(config, Dialect.MAPS), data)
    assert isinstance(operations, list)
    return operations
