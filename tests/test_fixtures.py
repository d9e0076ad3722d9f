"""Recorded AdmissionReviews (tests/fixtures/) against their expected outcomes (tests/fixtures/expected/).

For every fixture and mode: the /validate answer, the /mutate patch applied with a JSON Patch library and the
resulting object checked, then a second pass over the result that must yield no patch.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jsonpatch
import pytest
import yaml

from tests.support import FIXTURES
from webhook.admission import build_response, decide, parse_review
from webhook.enums import Endpoint, Mode
from webhook.policy import DEFAULT_GATE_LABEL, STRIPPED_ANNOTATION, PolicyConfig, assess

REVIEWS = sorted(p.name for p in FIXTURES.glob("*.json"))
CASES = [(name, mode) for name in REVIEWS for mode in Mode]


def expected_for(name: str) -> dict[str, Any]:
    result: dict[str, Any] = yaml.safe_load((FIXTURES / "expected" / name.replace(".json", ".yaml")).read_text())
    return result


def answer(body: bytes, mode: Mode, endpoint: Endpoint) -> dict[str, Any]:
    review = parse_review(body)
    response: dict[str, Any] = build_response(review.uid, decide(review, PolicyConfig(mode=mode), endpoint),
                                              endpoint)["response"]
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


def test_there_are_enough_recorded_fixtures() -> None:
    assert len(REVIEWS) >= 12
    assert all((FIXTURES / "expected" / n.replace(".json", ".yaml")).exists() for n in REVIEWS)
    assert len({json.loads((FIXTURES / n).read_text())["request"]["uid"] for n in REVIEWS}) == len(REVIEWS)


@pytest.mark.parametrize("name", REVIEWS)
def test_assessment_matches_expected(name: str) -> None:
    expected = expected_for(name)
    review = parse_review((FIXTURES / name).read_bytes())
    if not review.is_daemonset_write:
        assert expected["finding"] is False
        return
    found = assess(review.obj, PolicyConfig(), review.namespace)
    assert found.finding is expected["finding"]
    assert (found.exempt_reason.value if found.exempt_reason else None) == expected["exempt_reason"]
    assert [t for _, t in found.blanket] == expected["blanket_tolerations"]


@pytest.mark.parametrize("name, mode", CASES)
def test_validate_matches_expected(name: str, mode: Mode) -> None:
    expected = expected_for(name)["validate"][mode.value]
    response = answer((FIXTURES / name).read_bytes(), mode, Endpoint.VALIDATE)
    assert response["allowed"] is expected["allowed"]
    assert bool(response.get("warnings")) is expected["warned"]
    assert "patch" not in response
    if not expected["allowed"]:
        assert response["status"]["code"] == 403


@pytest.mark.parametrize("name, mode", CASES)
def test_mutate_patch_applies_and_matches_expected(name: str, mode: Mode) -> None:
    expected = expected_for(name)["mutate"][mode.value]
    review = json.loads((FIXTURES / name).read_text())
    response = answer((FIXTURES / name).read_bytes(), mode, Endpoint.MUTATE)
    assert response["allowed"] is True
    assert bool(response.get("warnings")) is expected["warned"]
    assert ("patch" in response) is expected["patched"]
    if not expected["patched"]:
        assert "patchType" not in response
        return
    assert response["patchType"] == "JSONPatch"
    result = applied(review["request"]["object"], response)
    after = expected["after"]
    pod_spec = result["spec"]["template"]["spec"]
    assert pod_spec.get("tolerations", []) == after["tolerations"]
    assert pod_spec.get("readinessGates", []) == after["readinessGates"]
    labels = result["spec"]["template"].get("metadata", {}).get("labels", {})
    assert (labels.get(DEFAULT_GATE_LABEL) == "true") is after["gatedLabel"]
    annotation = result["metadata"].get("annotations", {}).get(STRIPPED_ANNOTATION)
    assert (json.loads(annotation) if annotation else None) == after["strippedAnnotation"]


@pytest.mark.parametrize("name, mode", CASES)
def test_second_pass_over_mutated_fixture_yields_no_patch(name: str, mode: Mode) -> None:
    review = json.loads((FIXTURES / name).read_text())
    first = answer((FIXTURES / name).read_bytes(), mode, Endpoint.MUTATE)
    if "patch" not in first:
        return
    second = answer(rewrap(review, applied(review["request"]["object"], first)), mode, Endpoint.MUTATE)
    assert "patch" not in second
    assert "patchType" not in second


@pytest.mark.parametrize("name", REVIEWS)
def test_patch_leaves_every_field_it_does_not_own(name: str) -> None:
    review = json.loads((FIXTURES / name).read_text())
    response = answer((FIXTURES / name).read_bytes(), Mode.STRIP, Endpoint.MUTATE)
    if "patch" not in response:
        return
    before, after = review["request"]["object"], applied(review["request"]["object"], response)
    owned_template = {"tolerations", "readinessGates"}
    assert {k: v for k, v in after["spec"]["template"]["spec"].items() if k not in owned_template} == {
        k: v for k, v in before["spec"]["template"]["spec"].items() if k not in owned_template}
    assert {k: v for k, v in after["spec"].items() if k != "template"} == {
        k: v for k, v in before["spec"].items() if k != "template"}
    assert after["spec"]["template"]["spec"]["containers"] == before["spec"]["template"]["spec"]["containers"]
