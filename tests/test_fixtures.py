"""Recorded AdmissionReviews (tests/fixtures/) against their expected outcomes (tests/fixtures/expected/).

For every fixture and mode: the /validate answer, the /mutate patch applied with a JSON Patch library and the
resulting object checked, then a second pass over the result that must yield no patch. `mutate` is the outcome with
the readiness gate injected at pod creation (the default), `mutate_template` with `injectAt: template`.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
from typing import Any

import jsonpatch
import pytest

from tests import yamltext
from tests.support import FIXTURES
from webhook.admission import build_response, decide, parse_review
from webhook.enums import Endpoint, Mode
from webhook.policy import (
    DEFAULT_GATE_LABEL,
    PATHS,
    STRIPPED_ANNOTATION,
    InjectAt,
    PolicyConfig,
    assess,
    is_reviewed,
)
from webhook.workloads import Kind

REVIEWS = sorted(p.name for p in FIXTURES.glob("*.json"))
VARIANTS = {"mutate": InjectAt.POD, "mutate_template": InjectAt.TEMPLATE}
CASES = [(name, mode) for name in REVIEWS for mode in Mode]
@functools.cache
def expected_for(name: str) -> dict[str, Any]:
    result: dict[str, Any] = yamltext.load((FIXTURES / "expected" / name.replace(".json", ".yaml")).read_text())
    return result


MUTATE_CASES = [(name, mode, variant) for name in REVIEWS for mode in Mode for variant in VARIANTS
                if variant in expected_for(name)]


def config_for(name: str, mode: Mode = Mode.WARN, inject_at: InjectAt = InjectAt.POD) -> PolicyConfig:
    """The default configuration, with the kinds the expected file names (DaemonSet alone by default)."""
    kinds = frozenset(Kind(k) for k in expected_for(name).get("kinds", ["DaemonSet"]))
    return PolicyConfig(mode=mode, kinds=kinds, inject_at=inject_at)


def answer(body: bytes, config: PolicyConfig, endpoint: Endpoint) -> dict[str, Any]:
    review = parse_review(body)
    response: dict[str, Any] = build_response(review.uid, decide(review, config, endpoint), endpoint)["response"]
    assert response["uid"] == review.uid
    return response


def applied(obj: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    patch = json.loads(base64.b64decode(response["patch"]))
    result: dict[str, Any] = jsonpatch.JsonPatch(patch).apply(copy.deepcopy(obj))
    return result


def rewrap(review: dict[str, Any], obj: dict[str, Any]) -> bytes:
    again = copy.deepcopy(review)
    again["request"]["object"] = obj
    return json.dumps(again).encode()


def at(obj: dict[str, Any], path: tuple[str, ...], default: Any) -> Any:
    for key in path:
        obj = obj.get(key, {}) if isinstance(obj, dict) else {}
    return obj or default


def test_there_are_enough_recorded_fixtures() -> None:
    assert len(REVIEWS) >= 12
    assert all((FIXTURES / "expected" / n.replace(".json", ".yaml")).exists() for n in REVIEWS)
    assert len({json.loads((FIXTURES / n).read_text())["request"]["uid"] for n in REVIEWS}) == len(REVIEWS)


@pytest.mark.parametrize("name", REVIEWS)
def test_assessment_matches_expected(name: str) -> None:
    expected = expected_for(name)
    review = parse_review((FIXTURES / name).read_bytes())
    config = config_for(name)
    kind = review.workload_kind
    if kind is None or not is_reviewed(kind, review.obj, review.operation, config):
        assert expected["finding"] is False
        assert expected["fix"] is None
        return
    found = assess(review.obj, config, review.namespace, kind)
    assert found.finding is expected["finding"]
    assert (found.exempt_reason.value if found.exempt_reason else None) == expected["exempt_reason"]
    assert [t for _, t in found.blanket] == expected["blanket_tolerations"]
    assert (found.offender.id if found.offender else None) == expected["fix"]


@pytest.mark.parametrize("name, mode", CASES)
def test_validate_matches_expected(name: str, mode: Mode) -> None:
    expected = expected_for(name)["validate"][mode.value]
    response = answer((FIXTURES / name).read_bytes(), config_for(name, mode), Endpoint.VALIDATE)
    assert response["allowed"] is expected["allowed"]
    assert bool(response.get("warnings")) is expected["warned"]
    assert "patch" not in response
    if not expected["allowed"]:
        assert response["status"]["code"] == 403


@pytest.mark.parametrize("name, mode, variant", MUTATE_CASES)
def test_mutate_patch_applies_and_matches_expected(name: str, mode: Mode, variant: str) -> None:
    expected = expected_for(name)[variant][mode.value]
    review = json.loads((FIXTURES / name).read_text())
    response = answer((FIXTURES / name).read_bytes(), config_for(name, mode, VARIANTS[variant]), Endpoint.MUTATE)
    assert response["allowed"] is True
    assert bool(response.get("warnings")) is expected["warned"]
    assert ("patch" in response) is expected["patched"]
    if not expected["patched"]:
        assert "patchType" not in response
        return
    assert response["patchType"] == "JSONPatch"
    result = applied(review["request"]["object"], response)
    after = expected["after"]
    paths = PATHS[Kind(review["request"]["kind"]["kind"])]
    assert at(result, paths.tolerations, []) == after["tolerations"]
    assert at(result, paths.readiness_gates, []) == after["readinessGates"]
    assert (at(result, paths.template_labels, {}).get(DEFAULT_GATE_LABEL) == "true") is after["gatedLabel"]
    annotation = result["metadata"].get("annotations", {}).get(STRIPPED_ANNOTATION)
    assert (json.loads(annotation) if annotation else None) == after["strippedAnnotation"]


@pytest.mark.parametrize("name, mode, variant", MUTATE_CASES)
def test_second_pass_over_mutated_fixture_yields_no_patch(name: str, mode: Mode, variant: str) -> None:
    review = json.loads((FIXTURES / name).read_text())
    config = config_for(name, mode, VARIANTS[variant])
    first = answer((FIXTURES / name).read_bytes(), config, Endpoint.MUTATE)
    if "patch" not in first:
        return
    second = answer(rewrap(review, applied(review["request"]["object"], first)), config, Endpoint.MUTATE)
    assert "patch" not in second
    assert "patchType" not in second


@pytest.mark.parametrize("name, variant", [(n, v) for n, m, v in MUTATE_CASES if m is Mode.STRIP])
def test_patch_leaves_every_field_it_does_not_own(name: str, variant: str) -> None:
    review = json.loads((FIXTURES / name).read_text())
    response = answer((FIXTURES / name).read_bytes(), config_for(name, Mode.STRIP, VARIANTS[variant]),
                      Endpoint.MUTATE)
    if "patch" not in response:
        return
    paths = PATHS[Kind(review["request"]["kind"]["kind"])]
    before, after = review["request"]["object"], applied(review["request"]["object"], response)
    owned = {"tolerations", "readinessGates"}
    pod_before, pod_after = at(before, paths.pod_spec, {}), at(after, paths.pod_spec, {})
    assert {k: v for k, v in pod_after.items() if k not in owned} == {
        k: v for k, v in pod_before.items() if k not in owned}
    assert pod_after["containers"] == pod_before["containers"]
    assert {k: v for k, v in after.items() if k != "metadata" and k != "spec"} == {
        k: v for k, v in before.items() if k != "metadata" and k != "spec"}
    labels = dict(at(after, paths.template_labels, {}))
    labels.pop(DEFAULT_GATE_LABEL, None)
    assert labels == {k: v for k, v in at(before, paths.template_labels, {}).items() if k != DEFAULT_GATE_LABEL}
