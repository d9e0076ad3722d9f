"""Bounded answers and bounded work: whatever an object holds, the answer and the patch stay small, and a blanket
toleration among many is still reported, refused or stripped."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jsonpatch
import orjson
import pytest

from tests.support import daemonset_review
from webhook.admission import (
    MAX_WARNING_LENGTH,
    MAX_WARNINGS,
    build_response,
    decide,
    parse_review,
    patch_operations,
)
from webhook.enums import Endpoint
from webhook.policy import (
    MAX_ITEMIZED_TOLERATIONS,
    MAX_LISTED_TOLERATIONS,
    MAX_RECORDED_TOLERATIONS,
    STRIPPED_ANNOTATION,
    STRIPPED_TOTAL_ANNOTATION,
    Decision,
    MalformedObject,
    Mode,
    PolicyConfig,
    is_blanket_noexecute,
    mutate,
    validate,
)

KEYED = {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoExecute"}


def distinct_blanket(n: int) -> list[dict[str, Any]]:
    return [{"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": i} for i in range(n)]


def review_body(tolerations: list[dict[str, Any]]) -> bytes:
    return orjson.dumps(daemonset_review(uid="b0a1d7e2-0000-4000-8000-000000000001", tolerations=tolerations))


def answer(tolerations: list[dict[str, Any]], mode: Mode, endpoint: Endpoint) -> bytes:
    review = parse_review(review_body(tolerations))
    return orjson.dumps(build_response(review.uid, decide(review, PolicyConfig(mode=mode), endpoint), endpoint))


def daemonset(tolerations: list[dict[str, Any]]) -> dict[str, Any]:
    """A DaemonSet the catalog does not know: no fix line among the warnings."""
    obj: dict[str, Any] = daemonset_review(tolerations=tolerations)["request"]["object"]
    obj["spec"]["template"]["spec"]["containers"][0]["image"] = "example.com/node-agent:1"
    obj["metadata"]["labels"] = obj["spec"]["template"]["metadata"]["labels"] = {"app": "node-agent"}
    return obj


@pytest.mark.parametrize("mode, endpoint", [(m, e) for m in Mode for e in Endpoint])
def test_answer_to_five_thousand_blanket_tolerations_stays_under_four_kib(mode: Mode, endpoint: Endpoint) -> None:
    assert len(answer(distinct_blanket(5_000), mode, endpoint)) < 4096


def test_warnings_name_five_tolerations_and_count_the_rest() -> None:
    warnings = validate(daemonset(distinct_blanket(40)), PolicyConfig()).warnings
    assert len(warnings) == MAX_LISTED_TOLERATIONS + 1
    assert warnings[-1] == "DaemonSet kube-system/ebs-csi-node: 35 more blanket NoExecute tolerations not listed"


def test_the_answer_caps_warnings_and_says_how_many_were_omitted() -> None:
    response = build_response("u", Decision(warnings=tuple(f"warning {i}" for i in range(20))), Endpoint.VALIDATE)
    warnings = response["response"]["warnings"]
    assert len(warnings) == MAX_WARNINGS
    assert warnings[-1] == "cilium-startup-guard: 13 more warnings omitted"


def test_each_warning_is_cut_to_256_characters() -> None:
    response = build_response("u", Decision(warnings=("x" * 1000,)), Endpoint.VALIDATE)
    assert [len(w) for w in response["response"]["warnings"]] == [MAX_WARNING_LENGTH]


def test_the_usual_warning_keeps_to_120_characters() -> None:
    (warning,) = validate(daemonset([{"operator": "Exists"}]), PolicyConfig()).warnings
    assert len(warning) <= 120


def test_denial_of_many_names_five_and_counts_the_rest() -> None:
    message = validate(daemonset(distinct_blanket(1000)), PolicyConfig(mode=Mode.DENY)).message
    assert "and 995 more" in message
    assert len(message) < 1024


@pytest.mark.parametrize("count", [3, 20_000])
def test_strip_of_many_is_one_replace_and_one_annotation(count: int) -> None:
    obj = daemonset([KEYED, *distinct_blanket(count), {"operator": "Exists"}])
    ops = patch_operations(mutate(obj, PolicyConfig(mode=Mode.STRIP)).edits)
    assert [op["op"] for op in ops if op["path"].startswith("/spec")] == ["replace"]
    assert len(ops) <= 3
    result = jsonpatch.JsonPatch(ops).apply(copy.deepcopy(obj))
    assert result["spec"]["template"]["spec"]["tolerations"] == [
        KEYED, {"operator": "Exists", "effect": "NoSchedule"}, {"operator": "Exists", "effect": "PreferNoSchedule"}]


def test_strip_annotation_records_sixteen_distinct_tolerations_and_the_total() -> None:
    obj = daemonset(distinct_blanket(100))
    result = jsonpatch.JsonPatch(patch_operations(mutate(obj, PolicyConfig(mode=Mode.STRIP)).edits)).apply(obj)
    annotations = result["metadata"]["annotations"]
    assert json.loads(annotations[STRIPPED_ANNOTATION]) == distinct_blanket(MAX_RECORDED_TOLERATIONS)
    assert annotations[STRIPPED_TOTAL_ANNOTATION] == "100"


def test_strip_annotation_records_repeated_tolerations_once_without_a_total() -> None:
    obj = daemonset([{"operator": "Exists"}] * 1000)
    result = jsonpatch.JsonPatch(patch_operations(mutate(obj, PolicyConfig(mode=Mode.STRIP)).edits)).apply(obj)
    assert json.loads(result["metadata"]["annotations"][STRIPPED_ANNOTATION]) == [{"operator": "Exists"}]
    assert STRIPPED_TOTAL_ANNOTATION not in result["metadata"]["annotations"]


def many_keyed_and_one_blanket() -> list[dict[str, Any]]:
    tolerations = [{"key": f"k{i}", "operator": "Exists"} for i in range(MAX_ITEMIZED_TOLERATIONS + 10)]
    tolerations.insert(700, {"operator": "Exists", "effect": "NoExecute"})
    return tolerations


def test_past_the_bound_warn_still_reports_the_blanket_toleration() -> None:
    (warning,) = validate(daemonset(many_keyed_and_one_blanket()), PolicyConfig()).warnings
    assert "{operator: Exists, effect: NoExecute}" in warning


def test_past_the_bound_deny_still_refuses() -> None:
    assert not validate(daemonset(many_keyed_and_one_blanket()), PolicyConfig(mode=Mode.DENY)).allowed


def test_past_the_bound_strip_still_strips() -> None:
    obj = daemonset(many_keyed_and_one_blanket())
    result = jsonpatch.JsonPatch(patch_operations(mutate(obj, PolicyConfig(mode=Mode.STRIP)).edits)).apply(obj)
    remaining = result["spec"]["template"]["spec"]["tolerations"]
    assert len(remaining) == MAX_ITEMIZED_TOLERATIONS + 10
    assert not any(is_blanket_noexecute(t) for t in remaining)


def test_past_the_bound_an_item_that_is_not_an_object_is_still_refused() -> None:
    with pytest.raises(MalformedObject, match="every toleration must be an object"):
        validate(daemonset([*many_keyed_and_one_blanket(), "Exists"]), PolicyConfig())


def test_the_patch_is_valid_base64_json() -> None:
    response = json.loads(answer(distinct_blanket(20), Mode.STRIP, Endpoint.MUTATE))["response"]
    assert [op["op"] for op in json.loads(base64.b64decode(response["patch"]))] == ["replace", "add", "add"]
