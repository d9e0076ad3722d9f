"""The admission policy: a workload (plain dict) and a PolicyConfig in, a Decision out; docs/policy.md is the contract.
Stdlib and the leaf modules enums.py, workloads.py and catalog.py only: no HTTP, no Kubernetes client, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from webhook import catalog, workloads
from webhook.catalog import Catalog, Offender
from webhook.enums import Mode
from webhook.workloads import KINDS, Kind

CILIUM_TAINT_KEY = "node.cilium.io/agent-not-ready"
SKIP_ANNOTATION = "startupguard.io/skip"
STRIPPED_ANNOTATION = "startupguard.io/stripped-tolerations"
# Set beside STRIPPED_ANNOTATION when it could not record every distinct stripped toleration: how many were stripped.
STRIPPED_TOTAL_ANNOTATION = "startupguard.io/stripped-tolerations-total"
DEFAULT_GATE_CONDITION = "startupguard.io/cilium-ready"
DEFAULT_GATE_LABEL = "startupguard.io/gated"

# What a match-all toleration is narrowed to in strip mode: everything it tolerated except NoExecute.
NARROWED_TOLERATIONS: tuple[Mapping[str, str], ...] = (
    {"operator": "Exists", "effect": "NoSchedule"},
    {"operator": "Exists", "effect": "PreferNoSchedule"},
)

# Bounds on what one review costs and answers, whatever the object holds (docs/policy.md "Bounds").
# Past this many tolerations the review does no per-item work beyond finding the blanket ones: no per-field
# checks. A real pod spec has a few dozen at most; 1.5 MiB (etcd's object limit) holds about 25 000.
MAX_ITEMIZED_TOLERATIONS = 1000
# Blanket tolerations named one by one in warnings and denials; the rest are counted.
MAX_LISTED_TOLERATIONS = 5
# Distinct stripped tolerations recorded in STRIPPED_ANNOTATION (annotations share 256 KiB per object).
MAX_RECORDED_TOLERATIONS = 16

# json.dumps() with separators builds an encoder on every call; this one is built once.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
_BLANKET_EFFECTS = (None, "", "NoExecute")


class InjectAt(StrEnum):
    """Where the readiness gate is written: into each DaemonSet pod at creation, or into DaemonSet templates."""

    POD = "pod"
    TEMPLATE = "template"


class ExemptReason(StrEnum):
    """Why an object is left alone; when several apply, the first in this order is reported."""

    HOST_NETWORK = "hostNetwork"
    EXEMPTED = "exempted"
    TOLERATES_CILIUM_TAINT = "tolerates-cilium-taint"
    OPT_OUT = "opt-out"


class MalformedObject(ValueError):
    """The object does not have the shape of its kind where the policy has to read or patch it."""


@dataclass(frozen=True)
class Exemption:
    """Matches an object when every field that is set matches.

    Each label must equal the given value exactly, on the object or on its pod template.
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
DEFAULT_KINDS = frozenset({Kind.DAEMONSET})


@dataclass(frozen=True)
class PolicyConfig:
    mode: Mode = Mode.WARN
    exemptions: tuple[Exemption, ...] = DEFAULT_EXEMPTIONS
    allow_opt_out: bool = True
    readiness_gate: bool = True
    gate_condition_type: str = DEFAULT_GATE_CONDITION
    gate_label: str = DEFAULT_GATE_LABEL
    inject_at: InjectAt = InjectAt.POD
    cilium_taint_key: str = CILIUM_TAINT_KEY
    # Added in place of stripped tolerations: Kubernetes cannot say "every NoExecute taint but Cilium's",
    # so a cluster lists the NoExecute taints its workloads must still tolerate.
    replacement_tolerations: tuple[Mapping[str, Any], ...] = ()
    # The workload kinds reviewed for blanket tolerations. The readiness gate is for DaemonSet pods only.
    kinds: frozenset[Kind] = DEFAULT_KINDS
    catalog: Catalog = field(default_factory=catalog.builtin, repr=False)


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
    # For metrics only, so left out of equality: blanket tolerations on a non-exempt object, and how many of
    # them the edits strip.
    blanket_seen: int = field(default=0, compare=False)
    blanket_stripped: int = field(default=0, compare=False)


@dataclass(frozen=True)
class ObjectRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class Paths:
    """Where an object of one kind keeps what the policy reads and patches."""

    template_metadata: tuple[str, ...]
    pod_spec: tuple[str, ...]

    @property
    def tolerations(self) -> tuple[str, ...]:
        return (*self.pod_spec, "tolerations")

    @property
    def readiness_gates(self) -> tuple[str, ...]:
        return (*self.pod_spec, "readinessGates")

    @property
    def template_labels(self) -> tuple[str, ...]:
        return (*self.template_metadata, "labels")


PATHS: dict[Kind, Paths] = {
    kind: Paths((*info.template, "metadata"), (*info.template, "spec")) for kind, info in KINDS.items()
}


@dataclass(frozen=True)
class Assessment:
    """What the policy sees in one object, before any mode applies."""

    ref: ObjectRef
    exempt_reason: ExemptReason | None
    blanket: tuple[tuple[int, Mapping[str, Any]], ...]  # (index in tolerations, toleration)
    gated: bool  # the pod template (a Pod: the pod) already carries the readiness gate
    terminating: bool = False
    tolerations: tuple[Mapping[str, Any], ...] = field(default=(), repr=False)
    kind: Kind = Kind.DAEMONSET
    offender: Offender | None = None  # for a finding: the known chart or add-on it comes from, if the catalog knows it

    @property
    def finding(self) -> bool:
        return self.exempt_reason is None and bool(self.blanket)

    @property
    def subject(self) -> str:
        """How messages name the object: `DaemonSet kube-system/ebs-csi-node`."""
        return f"{self.kind.value} {self.ref}"


def is_blanket_noexecute(tol: Mapping[str, Any]) -> bool:
    # An empty effect matches every effect, NoExecute included.
    return tol.get("operator") == "Exists" and not tol.get("key") and tol.get("effect") in _BLANKET_EFFECTS


def is_match_all(tol: Mapping[str, Any]) -> bool:
    return is_blanket_noexecute(tol) and not tol.get("effect")


def is_reviewed(kind: Kind, obj: Mapping[str, Any], operation: str, config: PolicyConfig) -> bool:
    """Whether the blanket-toleration policy applies to this write at all (the gate aside)."""
    info = KINDS[kind]
    if kind not in config.kinds or (info.create_only and operation != "CREATE"):
        return False
    return not (info.judged_through_controller and workloads.controller_of(obj) is not None)


def assess(obj: Mapping[str, Any], config: PolicyConfig, namespace: str = "", kind: Kind = Kind.DAEMONSET,
           owner_name: str | None = None, *, name_the_fix: bool = True) -> Assessment:
    """Read the facts the policy needs; raise MalformedObject where the object has the wrong shape.

    `owner_name`: the name exemptions match instead of the object's own (a DaemonSet pod's DaemonSet).
    `name_the_fix`: look a finding up in the known-offender catalog (callers that never name the fix skip it).
    """
    if not isinstance(obj, Mapping):
        raise MalformedObject(f"object: expected an object, got {_json_type(obj)}")
    paths = PATHS[kind]
    metadata = _child(obj, "metadata", dict, "") or {}
    name = _child(metadata, "name", str, "metadata") or ""
    ref = ObjectRef(
        namespace=_child(metadata, "namespace", str, "metadata") or namespace,
        name=name or (_child(metadata, "generateName", str, "metadata") or "") + "<generated>",
    )
    labels = _child(metadata, "labels", dict, "metadata") or {}
    annotations = _child(metadata, "annotations", dict, "metadata") or {}
    template_metadata = _descend(obj, paths.template_metadata)
    template_labels = _child(template_metadata, "labels", dict, _dotted(paths.template_metadata)) or {}
    pod_spec = _descend(obj, paths.pod_spec)
    tolerations = _tolerations(pod_spec, _dotted(paths.tolerations))
    gates = _child(pod_spec, "readinessGates", list, _dotted(paths.pod_spec)) or []
    for i, gate in enumerate(gates):
        if not isinstance(gate, dict):
            raise MalformedObject(f"{_dotted(paths.readiness_gates)}[{i}]: expected an object, got "
                                  f"{_json_type(gate)}")

    exempt_ref = ref if owner_name is None else ObjectRef(ref.namespace, owner_name)
    if pod_spec.get("hostNetwork") is True:
        reason: ExemptReason | None = ExemptReason.HOST_NETWORK
    elif any(e.matches(exempt_ref, labels, template_labels) for e in config.exemptions):
        reason = ExemptReason.EXEMPTED
    elif any(t.get("key") == config.cilium_taint_key for t in tolerations):
        reason = ExemptReason.TOLERATES_CILIUM_TAINT
    elif config.allow_opt_out and annotations.get(SKIP_ANNOTATION) == "true":
        reason = ExemptReason.OPT_OUT
    else:
        reason = None

    # One list comprehension, no call per item: this is the only pass over a long toleration list.
    blanket = [(i, t) for i, t in enumerate(tolerations)
               if t.get("operator") == "Exists" and not t.get("key") and t.get("effect") in _BLANKET_EFFECTS]
    return Assessment(
        ref=ref,
        exempt_reason=reason,
        blanket=tuple(blanket),
        gated=any(g.get("conditionType") == config.gate_condition_type for g in gates),
        terminating=metadata.get("deletionTimestamp") is not None,
        tolerations=tuple(tolerations),
        kind=kind,
        offender=config.catalog.find(kind, name, labels, template_labels, pod_spec)
        if name_the_fix and blanket and reason is None else None,
    )


def validate(obj: Mapping[str, Any], config: PolicyConfig, namespace: str = "", kind: Kind = Kind.DAEMONSET,
             operation: str = "CREATE") -> Decision:
    """What POST /validate answers: warn about, or in deny mode refuse, a blanket NoExecute toleration."""
    if not is_reviewed(kind, obj, operation, config):
        return Decision()
    return judge(assess(obj, config, namespace, kind), config)


def judge(found: Assessment, config: PolicyConfig) -> Decision:
    """validate's answer from an assessment: nothing, the warnings, or in deny mode the refusal."""
    if not found.finding:
        return Decision()
    seen = len(found.blanket)
    if config.mode is Mode.DENY and not found.terminating:
        # A terminating object is let through so that finalizers can still be removed.
        return Decision(allowed=False, message=denial_message(found, config), blanket_seen=seen)
    return Decision(warnings=finding_warnings(found, config), blanket_seen=seen)


def mutate(obj: Mapping[str, Any], config: PolicyConfig, namespace: str = "", kind: Kind = Kind.DAEMONSET,
           operation: str = "CREATE") -> Decision:
    """What POST /mutate answers: strip blanket tolerations (strip mode); add the readiness gate to a DaemonSet
    pod at creation (injectAt: pod) or to a DaemonSet's template (injectAt: template)."""
    gate = _gate_decision(obj, config, namespace, kind, operation)
    if not is_reviewed(kind, obj, operation, config):
        return gate
    found = assess(obj, config, namespace, kind, name_the_fix=config.mode is Mode.STRIP)  # else /validate names it
    if found.exempt_reason is not None or found.terminating:
        return gate
    edits: list[Edit] = list(gate.edits)
    warnings: list[str] = []
    stripped = 0
    if config.mode is Mode.STRIP and found.blanket:
        edits += _strip_edits(obj, found, config)
        warnings += strip_warnings(found, config)
        stripped = len(found.blanket)
    if (kind is Kind.DAEMONSET and config.readiness_gate and config.inject_at is InjectAt.TEMPLATE
            and isinstance(_lookup(obj, PATHS[kind].pod_spec), dict)):
        # Without a pod spec there is nothing to gate, and a patch below it could not apply.
        edits += _gate_edits(obj, found, config, PATHS[kind])
    return Decision(warnings=tuple(warnings), edits=tuple(edits), blanket_seen=len(found.blanket),
                    blanket_stripped=stripped)


def _gate_decision(obj: Mapping[str, Any], config: PolicyConfig, namespace: str, kind: Kind,
                   operation: str) -> Decision:
    """The readiness gate for a DaemonSet's pod at its creation: the pod's own gate and label, each if absent."""
    if kind is not Kind.POD or operation != "CREATE" or not config.readiness_gate \
            or config.inject_at is not InjectAt.POD:
        return Decision()
    owner = workloads.controller_of(obj)
    if not workloads.is_daemonset_controller(owner):
        return Decision()
    assert owner is not None
    owner_name = owner.get("name")
    found = assess(obj, config, namespace, Kind.POD, owner_name if isinstance(owner_name, str) else "",
                   name_the_fix=False)
    if found.exempt_reason is not None or not isinstance(_lookup(obj, PATHS[Kind.POD].pod_spec), dict):
        return Decision()
    return Decision(edits=tuple(_gate_edits(obj, found, config, PATHS[Kind.POD])))


def _strip_edits(obj: Mapping[str, Any], found: Assessment, config: PolicyConfig) -> list[Edit]:
    """One `replace` of the whole toleration list, however many are stripped, and the annotation."""
    tolerations = found.tolerations
    blanket_at = {index for index, _ in found.blanket}
    present = [t for i, t in enumerate(tolerations) if i not in blanket_at]
    # A match-all toleration becomes NARROWED_TOLERATIONS in its place (those the list does not have yet).
    narrowed = [n for n in NARROWED_TOLERATIONS if n not in present]
    kept: list[Any] = []
    for index, tol in enumerate(tolerations):
        if index not in blanket_at:
            kept.append(tol)
        elif is_match_all(tol):
            kept += [dict(n) for n in narrowed]
            narrowed = []
    for extra in config.replacement_tolerations:  # a loop: one listed twice in the config is added once
        if extra not in kept:
            kept.append(dict(extra))
    edits = [Edit("replace", PATHS[found.kind].tolerations, kept)]

    # The distinct stripped tolerations, as many as MAX_RECORDED_TOLERATIONS; past that, the total as well.
    recorded: list[Mapping[str, Any]] = []
    for _, tol in found.blanket:
        if tol not in recorded:
            if len(recorded) == MAX_RECORDED_TOLERATIONS:
                edits.append(Edit("add", ("metadata", "annotations", STRIPPED_TOTAL_ANNOTATION),
                                  str(len(found.blanket))))
                break
            recorded.append(tol)
    edits.insert(1, _set_map_entry(obj, ("metadata", "annotations"), STRIPPED_ANNOTATION,
                                   _COMPACT_JSON.encode(recorded)))
    return edits


def _gate_edits(obj: Mapping[str, Any], found: Assessment, config: PolicyConfig, paths: Paths) -> list[Edit]:
    edits: list[Edit] = []
    gate = {"conditionType": config.gate_condition_type}
    if not found.gated:
        if _lookup(obj, paths.readiness_gates) is None:
            edits.append(Edit("add", paths.readiness_gates, [gate]))
        else:
            edits.append(Edit("add", (*paths.readiness_gates, "-"), gate))
    labels = _lookup(obj, paths.template_labels) or {}
    if labels.get(config.gate_label) != "true":
        # The controller watches gated pods by this label; a gate without it would never be released.
        edits.append(_set_map_entry(obj, paths.template_labels, config.gate_label, "true"))
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


def _descend(obj: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any]:
    """The object at path, {} where absent; MalformedObject where a step is not an object."""
    node: Mapping[str, Any] = obj
    for depth, key in enumerate(path):
        node = _child(node, key, dict, _dotted(path[:depth])) or {}
    return node


def _tolerations(pod_spec: Mapping[str, Any], where: str) -> Sequence[Any]:
    tolerations: list[Any] = _child(pod_spec, "tolerations", list, where.rpartition(".")[0]) or []
    if len(tolerations) > MAX_ITEMIZED_TOLERATIONS:
        # No per-field checks past the bound: only whole items that are not objects are refused. Blanket ones
        # are still found (assess reads only operator, key and effect), so warn, deny and strip still apply.
        if not all(type(t) is dict for t in tolerations):
            raise MalformedObject(f"{where}: every toleration must be an object")
        return tolerations
    for i, tol in enumerate(tolerations):
        at = f"{where}[{i}]"
        if not isinstance(tol, dict):
            raise MalformedObject(f"{at}: expected an object, got {_json_type(tol)}")
        for key in ("key", "operator", "effect", "value"):
            _child(tol, key, str, at)
        # Tolerations are echoed into the patch, the annotation and warnings: all their fields are scalars
        # in Kubernetes, and a nested value (hundreds of levels deep) would break the encoders.
        for key, value in tol.items():
            if isinstance(value, dict | list):
                raise MalformedObject(f"{at}.{key}: expected a string or a number, got {_json_type(value)}")
    return tolerations


def _child(parent: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    """parent[key] when it has the expected JSON type; None when absent or null."""
    value = parent.get(key)
    if value is not None and not isinstance(value, kind):
        path = f"{where}.{key}" if where else key
        raise MalformedObject(f"{path}: expected {_TYPE_NAMES[kind]}, got {_json_type(value)}")
    return value


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path)


_TYPE_NAMES: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}


def _json_type(value: Any) -> str:
    for kind, name in ((bool, "a boolean"), (dict, "an object"), (list, "a list"), (str, "a string"),
                       (int, "a number"), (float, "a number")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


# --- messages: each names the object, the problem and the fix; their number and length are bounded ---------


def describe_toleration(tol: Mapping[str, Any]) -> str:
    """Short YAML flow style, as users write tolerations: {operator: Exists, effect: NoExecute}."""
    parts = [f"{k}: {tol[k]}" for k in ("key", "operator", "value", "effect", "tolerationSeconds")
             if tol.get(k) not in (None, "")]
    return "{" + ", ".join(parts) + "}"


def describe_some(blanket: Sequence[tuple[int, Mapping[str, Any]]], limit: int) -> str:
    """The first `limit` tolerations, then how many more: a message stays short whatever the object holds."""
    listed = ", ".join(describe_toleration(t) for _, t in blanket[:limit])
    more = len(blanket) - limit
    return f"{listed} and {more} more" if more > 0 else listed


def fix_line(found: Assessment) -> str | None:
    """The catalog's fix as a warning of its own, in the chart's terms."""
    if found.offender is None:
        return None
    return f"{found.subject}: {found.offender.chart} chart values: {found.offender.fix}"


def finding_warnings(found: Assessment, config: PolicyConfig) -> tuple[str, ...]:
    """One warning per blanket toleration up to MAX_LISTED_TOLERATIONS, a count of the rest, the known fix."""
    warnings = [f"{found.subject}: {describe_toleration(t)} also tolerates {config.cilium_taint_key}; give it a key"
                for _, t in found.blanket[:MAX_LISTED_TOLERATIONS]]
    more = len(found.blanket) - MAX_LISTED_TOLERATIONS
    if more > 0:
        warnings.append(f"{found.subject}: {more} more blanket NoExecute tolerations not listed")
    fix = fix_line(found)
    if fix:
        warnings.append(fix)
    return tuple(warnings)


def denial_message(found: Assessment, config: PolicyConfig) -> str:
    tols = describe_some(found.blanket, MAX_LISTED_TOLERATIONS)
    message = (f"{found.subject}: toleration {tols} also tolerates {config.cilium_taint_key}, so its pods "
               f"can start before Cilium manages their network; ")
    if found.offender is not None:
        message += f"in the {found.offender.chart} chart's values, {found.offender.fix}; or "
    message += "give it a key, or limit it to effect NoSchedule"
    if config.allow_opt_out:
        message += f", or opt out with the annotation {SKIP_ANNOTATION}: \"true\""
    return message


def strip_warnings(found: Assessment, config: PolicyConfig) -> list[str]:
    tols = describe_some(found.blanket, 2)
    warnings = [f"{found.subject}: stripped NoExecute tolerance from {tols} so that pods wait for "
                f"{config.cilium_taint_key}; what was removed is in annotation {STRIPPED_ANNOTATION}"]
    fix = fix_line(found)
    if fix:
        warnings.append(fix)
    return warnings
