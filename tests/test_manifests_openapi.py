"""Every rendered object, validated strictly (an unknown field fails) against Kubernetes' own OpenAPI schemas as
bundled by kubernetes-validate, for the oldest and the newest Kubernetes version the project supports.

Oldest: 1.30, where matchConditions and ValidatingAdmissionPolicy are GA. Newest: the newest the package
bundles. Custom resources (cert-manager, prometheus-operator) are not in those schemas; tests/crd_shapes.py
checks them against the part of their CRDs' schemas that the installs use.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.crd_shapes import check_shape, is_custom_resource
from tests.installs import names
from tests.openapi import NEWEST, OLDEST_SUPPORTED, validate

KUBERNETES_VERSIONS = (OLDEST_SUPPORTED, NEWEST)


@pytest.fixture(scope="module")
def installs(rendered_installs) -> dict[str, list[dict[str, Any]]]:
    """Every install (kustomize overlays, Helm chart variants with their optional objects on) by name."""
    return rendered_installs


def distinct(installs: dict[str, list[dict[str, Any]]]) -> dict[str, tuple[str, dict[str, Any]]]:
    """The installs share most objects: validate each distinct one once, remembering one install it is from."""
    result: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, objects in installs.items():
        for obj in objects:
            result.setdefault(json.dumps(obj, sort_keys=True), (name, obj))
    return result


@pytest.mark.parametrize("install", names())
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_builtin_object_is_valid_strictly_for_the_kubernetes_version(installs, version, install):
    problems = []
    for name, obj in distinct({install: installs[install]}).values():
        if is_custom_resource(obj):
            continue
        try:
            validate(obj, version)
        except kubernetes_validate.SchemaNotFoundError as err:
            problems.append(f"{name}: {err.message}")
        except kubernetes_validate.ValidationError as err:
            where = "/".join(str(p) for p in err.absolute_path)
            problems.append(f"{name}: {obj['kind']}/{obj['metadata']['name']} at {where}: {err.message}")
    assert problems == []


@pytest.mark.parametrize("install", names())
def test_every_custom_resource_has_its_crds_shape(installs, install):
    problems = []
    for name, obj in distinct({install: installs[install]}).values():
        if is_custom_resource(obj):
            try:
                check_shape(obj)
            except jsonschema.ValidationError as err:
                where = "/".join(str(p) for p in err.absolute_path)
                problems.append(f"{name}: {obj['kind']}/{obj['metadata']['name']} at {where}: {err.message}")
    assert problems == []


def test_the_oldest_supported_version_is_bundled():
    assert OLDEST_SUPPORTED in {v.rpartition(".")[0] for v in kubernetes_validate.utils.all_versions()}


# The checks above are only worth something if they refuse what kube-apiserver refuses.

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_strict_validation_refuses_an_unknown_field(installs, version):
    deployment = next(o for o in installs["cert-manager"] if o["kind"] == "Deployment")
    typo = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(typo, version)


def test_validation_knows_which_kinds_the_oldest_version_lacks():
    # ValidatingAdmissionPolicy is GA in 1.30; MutatingAdmissionPolicy v1 came later.
    configuration = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "example"},
        "spec": {"validations": [{"expression": "true"}], "failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                                                         "operations": ["CREATE"], "resources": ["daemonsets"]}]}},
    }
    validate(configuration, OLDEST_SUPPORTED)
    mutating = {**configuration, "kind": "MutatingAdmissionPolicy"}
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate(mutating, OLDEST_SUPPORTED)
    validate({**mutating, "spec": {k: v for k, v in configuration["spec"].items() if k != "validations"}
              | {"mutations": [{"patchType": "JSONPatch", "jsonPatch": {"expression": "[]"}}],
                 "reinvocationPolicy": "Never"}}, NEWEST)


@pytest.mark.parametrize("field, value", [
    pytest.param("secretNmae", "x", id="unknown-field"),
    pytest.param("isCA", "yes", id="wrong-type"),
])
def test_crd_shape_refuses_a_typo_or_a_wrong_type(installs, field, value):
    certificate = next(o for o in installs["cert-manager"] if o["kind"] == "Certificate")
    with pytest.raises(jsonschema.ValidationError):
        check_shape({**certificate, "spec": {**certificate["spec"], field: value}})
