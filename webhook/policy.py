"""The admission policy: a DaemonSet (plain dict) and a PolicyConfig in, a Decision out; docs/policy.md is the contract.
Stdlib and enums.py only: no HTTP, no Kubernetes client, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from webhook.enums import Mode

CILIUM_TAINT_KEY = "node.cilium.io/agent-not-ready"
SKIP_ANNOTATION = "startupguard.io/skip"
STRIPPED_ANNOTATION = "startupguard.io/stripped-tolerations"
DEFAULT_GATE_CONDITION = "startupguard.io/cilium-ready"
DEFAULT_GATE_LABEL = "startupguard.io/gated"

# What a match-all toleration is narrowed to in strip mode: everything it tolerated except NoExecute.
NARROWED_TOLERATIONS: tuple[Mapping[str, str], ...] = (
    {"operator": "Exists", "effect": "NoSchedule"},
    {"operator": "Exists", "effect": "PreferNoSchedule"},
)

# json.dumps() with separators builds an encoder on every call; this one is built once.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))

POD_SPEC_PATH = ("spec", "template", "spec")
TOLERATIONS_PATH = ("spec", "template", "spec", "tolerations")
READINESS_GATES_PATH = ("spec", "template", "spec", "readinessGates")
TEMPLATE_METADATA_PATH = ("spec", "template", "metadata")


class ExemptReason(StrEnum):
    """Why a DaemonSet is left alone; when several apply, the first in this order is reported."""

    HOST_NETWORK = "hostNetwork"
    EXEMPTED = "exempted"
    TOLERATES_CILIUM_TAINT = "tolerates-cilium-taint"
    OPT_OUT = "opt-out"


class MalformedObject(ValueError):
    """The object does not have the shape of a DaemonSet where the policy has to read or patch it."""


@dataclass(frozen=True)
class Exemption:
    """Matches a DaemonSet when every field that is set matches.

    Each label must equal the given value exactly, on the DaemonSet or on its pod template.
    """

    namespace: str | None = None
    name: str | None = None
    labels: tuple[tuple[str, str], ...] = ()

    def matches(self, ref: ObjectRef, ds_labels: Mapping[str, Any], template_labels: Mapping[str, Any]) -> bool:
        if self.namespace is not None and self.namespace != ref.namespace:
            return False
        if self.name is not None and self.name != ref.name:
            return False
        for key, value in self.labels:  # a loop, not all(<generator>): this runs for every exemption and review
            if ds_labels.get(key) != value and template_labels.get(key) != value:
                return False
        return True


DEFAULT_EXEMPTIONS: tuple[Exemption, ...] = tuple(
    Exemption(labels=(("k8s-app", app),)) for app in ("cilium", "cilium-envoy", "aws-node", "kube-proxy")
)


@dataclass(frozen=True)
class PolicyConfig:
    mode: Mode = Mode.WARN
    exemptions: tuple[Exemption, ...] = DEFAULT_EXEMPTIONS
    allow_opt_out: bool = True
    readiness_gate: bool = True
    gate_condition_type: str = DEFAULT_GATE_CONDITION
    gate_label: str = DEFAULT_GATE_LABEL
    cilium_taint_key: str = CILIUM_TAINT_KEY
    # Added in place of stripped tolerations: Kubernetes cannot say "every NoExecute taint but Cilium's",
    # so a cluster lists the NoExecute taints its DaemonSets must still tolerate.
    replacement_tolerations: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class Edit:
    """One JSON Patch operation; admission.py spells the path as a JSON Pointer."""

    op: Literal["add", "remove", "replace"]
    path: tuple[str | int, ...]
    value: Any = None


@dataclass(frozen=True)
class Decision:
    allowed: bool = True
    message: str = ""  # denial text, empty when allowed
    warnings: tuple[str, ...] = ()
    edits: tuple[Edit, ...] = ()
    # For metrics only, so left out of equality: blanket tolerations on a non-exempt DaemonSet, and how
    # many of them the edits strip.
    blanket_seen: int = field(default=0, compare=False)
    blanket_stripped: int = field(default=0, compare=False)


@dataclass(frozen=True)
class ObjectRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class Assessment:
    """What the policy sees in one DaemonSet, before any mode applies."""

    ref: ObjectRef
    exempt_reason: ExemptReason | None
    blanket: tuple[tuple[int, Mapping[str, Any]], ...]  # (index in tolerations, toleration)
    gated: bool  # the pod template already carries the readiness gate
    terminating: bool = False
    tolerations: tuple[Mapping[str, Any], ...] = field(default=(), repr=False)

    @property
    def finding(self) -> bool:
        return self.exempt_reason is None and bool(self.blanket)


def is_blanket_noexecute(tol: Mapping[str, Any]) -> bool:
    # An empty effect matches every effect, NoExecute included.
    return (
        tol.get("operator") == "Exists"
        and not tol.get("key")
        and tol.get("effect") in (None, "", "NoExecute")
    )


def is_match_all(tol: Mapping[str, Any]) -> bool:
    return is_blanket_noexecute(tol) and not tol.get("effect")


def assess(obj: Mapping[str, Any], config: PolicyConfig, namespace: str = "") -> Assessment:
    """Read the facts the policy needs; raise MalformedObject where the object has the wrong shape."""
    if not isinstance(obj, Mapping):
        raise MalformedObject(f"object: expected an object, got {_json_type(obj)}")
    metadata = _child(obj, "metadata", dict, "") or {}
    ref = ObjectRef(
        namespace=_child(metadata, "namespace", str, "metadata") or namespace,
        name=_child(metadata, "name", str, "metadata")
        or (_child(metadata, "generateName", str, "metadata") or "") + "<generated>",
    )
    ds_labels = _child(metadata, "labels", dict, "metadata") or {}
    annotations = _child(metadata, "annotations", dict, "metadata") or {}
    spec = _child(obj, "spec", dict, "") or {}
    template = _child(spec, "template", dict, "spec") or {}
    template_labels = _child(_child(template, "metadata", dict, "spec.template") or {}, "labels", dict,
                             "spec.template.metadata") or {}
    pod_spec = _child(template, "spec", dict, "spec.template") or {}
    tolerations = _tolerations(pod_spec)
    gates = _child(pod_spec, "readinessGates", list, "spec.template.spec") or []
    for i, gate in enumerate(gates):
        if not isinstance(gate, dict):
            raise MalformedObject(f"spec.template.spec.readinessGates[{i}]: expected an object, got "
                                  f"{_json_type(gate)}")

    if pod_spec.get("hostNetwork") is True:
        reason: ExemptReason | None = ExemptReason.HOST_NETWORK
    elif any(e.matches(ref, ds_labels, template_labels) for e in config.exemptions):
        reason = ExemptReason.EXEMPTED
    elif any(t.get("key") == config.cilium_taint_key for t in tolerations):
        reason = ExemptReason.TOLERATES_CILIUM_TAINT
    elif config.allow_opt_out and annotations.get(SKIP_ANNOTATION) == "true":
        reason = ExemptReason.OPT_OUT
    else:
        reason = None

    return Assessment(
        ref=ref,
        exempt_reason=reason,
        blanket=tuple((i, t) for i, t in enumerate(tolerations) if is_blanket_noexecute(t)),
        gated=any(g.get("conditionType") == config.gate_condition_type for g in gates),
        terminating=metadata.get("deletionTimestamp") is not None,
        tolerations=tuple(tolerations),
    )


def validate(obj: Mapping[str, Any], config: PolicyConfig, namespace: str = "") -> Decision:
    """What POST /validate answers: warn about, or in deny mode refuse, a blanket NoExecute toleration."""
    found = assess(obj, config, namespace)
    if not found.finding:
        return Decision()
    seen = len(found.blanket)
    if config.mode is Mode.DENY and not found.terminating:
        # A terminating DaemonSet is let through so that finalizers can still be removed.
        return Decision(allowed=False, message=_denial_message(found, config), blanket_seen=seen)
    return Decision(warnings=tuple(_finding_warning(found.ref, t, config) for _, t in found.blanket),
                    blanket_seen=seen)


def mutate(obj: Mapping[str, Any], config: PolicyConfig, namespace: str = "") -> Decision:
    """What POST /mutate answers: strip blanket tolerations (strip mode) and add the readiness gate."""
    found = assess(obj, config, namespace)
    if found.exempt_reason is not None or found.terminating:
        return Decision()
    edits: list[Edit] = []
    warnings: list[str] = []
    stripped = 0
    if config.mode is Mode.STRIP and found.blanket:
        edits += _strip_edits(obj, found, config)
        warnings.append(_strip_warning(found, config))
        stripped = len(found.blanket)
    # Without a pod spec there is nothing to gate, and a patch below it could not apply.
    if config.readiness_gate and isinstance(_lookup(obj, POD_SPEC_PATH), dict):
        edits += _gate_edits(obj, found, config)
    return Decision(warnings=tuple(warnings), edits=tuple(edits), blanket_seen=len(found.blanket),
                    blanket_stripped=stripped)


def _strip_edits(obj: Mapping[str, Any], found: Assessment, config: PolicyConfig) -> list[Edit]:
    tolerations = found.tolerations
    edits: list[Edit] = []
    # A match-all toleration becomes NARROWED_TOLERATIONS in place (minus any the list already has); work
    # from the highest index down so that earlier edits don't shift the paths of later ones.
    added_narrowings: dict[int, list[Mapping[str, Any]]] = {}
    seen: list[Mapping[str, Any]] = []
    for index, tol in found.blanket:
        if is_match_all(tol):
            fresh = [n for n in NARROWED_TOLERATIONS if n not in tolerations and n not in seen]
            seen += fresh
            added_narrowings[index] = fresh
    for index, _ in reversed(found.blanket):
        narrowed = added_narrowings.get(index, [])
        if not narrowed:
            edits.append(Edit("remove", (*TOLERATIONS_PATH, index)))
            continue
        edits.append(Edit("replace", (*TOLERATIONS_PATH, index), dict(narrowed[0])))
        edits += [Edit("add", (*TOLERATIONS_PATH, index + 1 + i), dict(n)) for i, n in enumerate(narrowed[1:])]
    for extra in config.replacement_tolerations:
        if extra not in tolerations and extra not in seen:
            seen.append(extra)
            edits.append(Edit("add", (*TOLERATIONS_PATH, "-"), dict(extra)))

    removed = _COMPACT_JSON.encode([t for _, t in found.blanket])
    edits.append(_set_map_entry(obj, ("metadata", "annotations"), STRIPPED_ANNOTATION, removed))
    return edits


def _gate_edits(obj: Mapping[str, Any], found: Assessment, config: PolicyConfig) -> list[Edit]:
    edits: list[Edit] = []
    gate = {"conditionType": config.gate_condition_type}
    if not found.gated:
        if _lookup(obj, READINESS_GATES_PATH) is None:
            edits.append(Edit("add", READINESS_GATES_PATH, [gate]))
        else:
            edits.append(Edit("add", (*READINESS_GATES_PATH, "-"), gate))
    labels = _lookup(obj, (*TEMPLATE_METADATA_PATH, "labels")) or {}
    if labels.get(config.gate_label) != "true":
        # The controller watches gated pods by this label; a gate without it would never be released.
        edits.append(_set_map_entry(obj, (*TEMPLATE_METADATA_PATH, "labels"), config.gate_label, "true"))
    return edits


def _set_map_entry(obj: Mapping[str, Any], map_path: tuple[str, ...], key: str, value: str) -> Edit:
    """Set one key of a string map, creating the map (and one missing parent) when absent."""
    if _lookup(obj, map_path) is not None:
        return Edit("add", (*map_path, key), value)
    if _lookup(obj, map_path[:-1]) is not None:
        return Edit("add", map_path, {key: value})
    return Edit("add", map_path[:-1], {map_path[-1]: {key: value}})


def _lookup(obj: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = obj
    for key in path:
        if not isinstance(node, dict):  # as _child: JSON objects below the top are dicts (and dict is fast)
            return None
        node = node.get(key)
    return node


def _tolerations(pod_spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    tolerations = _child(pod_spec, "tolerations", list, "spec.template.spec") or []
    for i, tol in enumerate(tolerations):
        where = f"spec.template.spec.tolerations[{i}]"
        if not isinstance(tol, dict):
            raise MalformedObject(f"{where}: expected an object, got {_json_type(tol)}")
        for key in ("key", "operator", "effect", "value"):
            _child(tol, key, str, where)
        # Tolerations are echoed into the patch, the annotation and warnings: all their fields are scalars
        # in Kubernetes, and a nested value (hundreds of levels deep) would break the encoders.
        for key, value in tol.items():
            if isinstance(value, dict | list):
                raise MalformedObject(f"{where}.{key}: expected a string or a number, got {_json_type(value)}")
    return tolerations


def _child(parent: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    """parent[key] when it has the expected JSON type; None when absent or null."""
    value = parent.get(key)
    if value is not None and not isinstance(value, kind):
        path = f"{where}.{key}" if where else key
        raise MalformedObject(f"{path}: expected {_TYPE_NAMES[kind]}, got {_json_type(value)}")
    return value


_TYPE_NAMES: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}


def _json_type(value: Any) -> str:
    for kind, name in ((bool, "a boolean"), (dict, "an object"), (list, "a list"), (str, "a string"),
                       (int, "a number"), (float, "a number")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


def describe_toleration(tol: Mapping[str, Any]) -> str:
    """Short YAML flow style, as users write tolerations: {operator: Exists, effect: NoExecute}."""
    parts = [f"{k}: {tol[k]}" for k in ("key", "operator", "value", "effect", "tolerationSeconds")
             if tol.get(k) not in (None, "")]
    return "{" + ", ".join(parts) + "}"


def _finding_warning(ref: ObjectRef, tol: Mapping[str, Any], config: PolicyConfig) -> str:
    return (f"DaemonSet {ref}: toleration {describe_toleration(tol)} also tolerates "
            f"{config.cilium_taint_key}; give it a key")


def _denial_message(found: Assessment, config: PolicyConfig) -> str:
    tols = ", ".join(describe_toleration(t) for _, t in found.blanket)
    message = (f"DaemonSet {found.ref}: toleration {tols} also tolerates {config.cilium_taint_key}, so its pods "
               f"can start before Cilium manages their network; give it a key, or limit it to effect NoSchedule")
    if config.allow_opt_out:
        message += f", or opt out with the annotation {SKIP_ANNOTATION}: \"true\""
    return message


def _strip_warning(found: Assessment, config: PolicyConfig) -> str:
    tols = ", ".join(describe_toleration(t) for _, t in found.blanket)
    return (f"DaemonSet {found.ref}: stripped NoExecute tolerance from {tols} so that pods wait for "
            f"{config.cilium_taint_key}; what was removed is in annotation {STRIPPED_ANNOTATION}")
