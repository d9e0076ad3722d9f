"""Property-based tests over random toleration lists: the strip patch against a plain reference model."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook.admission import patch_operations
from webhook.policy import (
    CILIUM_TAINT_KEY,
    DEFAULT_GATE_CONDITION,
    STRIPPED_ANNOTATION,
    InjectAt,
    Mode,
    PolicyConfig,
    is_blanket_noexecute,
    mutate,
    validate,
)

pytestmark = pytest.mark.slow  # hundreds of generated examples each

NARROWED = [{"operator": "Exists", "effect": "NoSchedule"}, {"operator": "Exists", "effect": "PreferNoSchedule"}]
REPLACEMENT = {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoExecute"}


@st.composite
def tolerations(draw: st.DrawFn) -> dict[str, Any]:
    tol: dict[str, Any] = {}
    key = draw(st.sampled_from([None, "", "CriticalAddonsOnly", "dedicated", "a/b", "x~y"]))
    if key is not None:
        tol["key"] = key
    operator = draw(st.sampled_from([None, "Exists", "Equal"]))
    if operator is not None:
        tol["operator"] = operator
    if operator == "Equal":
        tol["value"] = draw(st.sampled_from(["", "true", "gpu"]))
    effect = draw(st.sampled_from([None, "", "NoExecute", "NoSchedule", "PreferNoSchedule"]))
    if effect is not None:
        tol["effect"] = effect
    if effect == "NoExecute" and draw(st.booleans()):
        tol["tolerationSeconds"] = draw(st.integers(0, 3600))
    return tol


def reference_strip(tols: list[dict[str, Any]], replacements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The contract, written plainly: keep non-blanket ones in order, narrow a match-all in place."""
    result: list[dict[str, Any]] = []
    added: list[dict[str, Any]] = []
    for tol in tols:
        if not is_blanket_noexecute(tol):
            result.append(tol)
        elif not tol.get("effect"):
            fresh = [n for n in NARROWED if n not in tols and n not in added]
            added += fresh
            result += fresh
    if any(is_blanket_noexecute(t) for t in tols):
        result += [r for r in replacements if r not in tols and r not in added]
    return result


def daemonset(tols: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": "agent", "namespace": "default"},
            "spec": {"template": {"metadata": {"labels": {"app": "agent"}},
                                  "spec": {"containers": [], "tolerations": tols}}}}


def apply(obj: dict[str, Any], config: PolicyConfig) -> dict[str, Any]:
    return jsonpatch.JsonPatch(patch_operations(mutate(obj, config).edits)).apply(copy.deepcopy(obj))


def exempted(tols: list[dict[str, Any]]) -> bool:
    return any(t.get("key") == CILIUM_TAINT_KEY for t in tols)


@settings(max_examples=300, deadline=None)
@given(st.lists(tolerations(), max_size=8), st.booleans())
def test_strip_patch_matches_the_reference_model(tols: list[dict[str, Any]], with_replacement: bool) -> None:
    replacements = [REPLACEMENT] if with_replacement else []
    config = PolicyConfig(mode=Mode.STRIP, replacement_tolerations=tuple(replacements))
    result = apply(daemonset(tols), config)
    assert result["spec"]["template"]["spec"]["tolerations"] == reference_strip(tols, replacements)


@settings(max_examples=300, deadline=None)
@given(st.lists(tolerations(), max_size=8), st.sampled_from(list(Mode)))
def test_mutated_object_yields_no_second_patch(tols: list[dict[str, Any]], mode: Mode) -> None:
    config = PolicyConfig(mode=mode, replacement_tolerations=(REPLACEMENT,))
    once = apply(daemonset(tols), config)
    assert mutate(once, config).edits == ()
    if mode is Mode.STRIP:
        assert validate(once, config).warnings == ()


@settings(max_examples=300, deadline=None)
@given(st.lists(tolerations(), max_size=8))
def test_strip_leaves_no_blanket_toleration_and_records_each_removed_one_once(tols: list[dict[str, Any]]) -> None:
    result = apply(daemonset(tols), PolicyConfig(mode=Mode.STRIP))
    remaining = result["spec"]["template"]["spec"]["tolerations"]
    assert not any(is_blanket_noexecute(t) for t in remaining)
    blanket = [t for t in tols if is_blanket_noexecute(t)]
    annotations = result["metadata"].get("annotations", {})
    if blanket:
        distinct = [t for i, t in enumerate(blanket) if t not in blanket[:i]]
        assert json.loads(annotations[STRIPPED_ANNOTATION]) == distinct
    else:
        assert STRIPPED_ANNOTATION not in annotations


@settings(max_examples=200, deadline=None)
@given(st.lists(tolerations(), max_size=8), st.sampled_from(list(Mode)))
def test_gate_is_added_exactly_once(tols: list[dict[str, Any]], mode: Mode) -> None:
    result = apply(daemonset(tols), PolicyConfig(mode=mode, inject_at=InjectAt.TEMPLATE))
    gates = result["spec"]["template"]["spec"].get("readinessGates", [])
    assert gates == ([] if exempted(tols) else [{"conditionType": DEFAULT_GATE_CONDITION}])


@settings(max_examples=200, deadline=None)
@given(st.lists(tolerations(), max_size=8))
def test_deny_mode_refuses_exactly_when_warn_mode_warns(tols: list[dict[str, Any]]) -> None:
    warned = bool(validate(daemonset(tols), PolicyConfig()).warnings)
    denied = not validate(daemonset(tols), PolicyConfig(mode=Mode.DENY)).allowed
    assert warned == denied == (any(is_blanket_noexecute(t) for t in tols) and not exempted(tols))
