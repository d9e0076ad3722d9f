"""`review`: the webhook's policy run offline on manifests or recorded AdmissionReviews, as CI would, on the
configured kinds. Calls no Kubernetes API and imports no HTTP server; `--fix` applies the webhook's JSON Patch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import jsonpatch
import yaml

from webhook import admission, policy, workloads
from webhook.errors import describe_yaml_error
from webhook.policy import PolicyConfig
from webhook.report import dump_json, format_columns
from webhook.workloads import KINDS, Kind

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


class ReviewInputError(Exception):
    """An input that cannot be read; the message names the file."""


@dataclass
class Document:
    """One YAML/JSON document; `workload` points into `content` when it holds an object of a reviewed kind."""

    source: str
    content: Any
    workload: dict[str, Any] | None = None
    kind: Kind | None = None
    namespace: str = ""  # the AdmissionReview's request.namespace, when there is one
    operation: str = "CREATE"  # a manifest is reviewed as if created


@dataclass(frozen=True)
class Result:
    source: str
    namespace: str
    name: str
    kind: Kind = Kind.DAEMONSET
    finding: bool = False
    exempt_reason: str | None = None
    blanket_tolerations: list[Mapping[str, Any]] = field(default_factory=list)
    gated: bool = False
    action: str | None = None  # what the webhook does about a finding in this mode: warn, strip or deny
    messages: list[str] = field(default_factory=list)
    error: str | None = None
    fix: dict[str, Any] | None = None  # the catalog's fix for a finding, when it knows the chart

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "namespace": self.namespace, "name": self.name, "finding": self.finding,
            "exempt_reason": self.exempt_reason, "blanket_tolerations": self.blanket_tolerations,
            "gated": self.gated, "action": self.action, "messages": self.messages, "error": self.error,
            "fix": self.fix,
        }


def load_documents(paths: list[str], stdin: TextIO) -> list[Document]:
    """Every document of the inputs; ReviewInputError when one cannot be read, or when none of them holds a
    Kubernetes object at all: an empty stdin (the command that renders the manifests failed) or an empty folder
    must not pass a CI check."""
    documents: list[Document] = []
    any_object = False  # an empty List (`kubectl get ... -o yaml` of nothing) is an object, though it holds none
    for name, text in _read_inputs(paths, stdin):
        try:
            parsed = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as err:
            raise ReviewInputError(f"{name}: {describe_yaml_error(err, 'YAML or JSON')}") from None
        for index, content in enumerate(parsed, start=1):
            source = name if len(parsed) == 1 else f"{name}#{index}"
            documents += _documents_in(source, content)
            any_object = any_object or _is_kubernetes_object(content)
    if not any_object:
        inputs = ", ".join("stdin" if p == "-" else p for p in paths)
        raise ReviewInputError(f"no Kubernetes object (a document with apiVersion and kind) in {inputs}; "
                               "was the input empty, or did the command that renders it fail?")
    return documents


def review_documents(documents: list[Document], config: PolicyConfig) -> list[Result]:
    return [_review(d, config) for d in documents
            if d.workload is not None and d.kind is not None
            and policy.is_reviewed(d.kind, d.workload, d.operation, config)]


def fix_documents(documents: list[Document], config: PolicyConfig) -> list[Any]:
    """Each document as it would be stored after /mutate: reviewed objects patched, the rest unchanged."""
    fixed: list[Any] = []
    for document in documents:
        if document.workload is None or document.kind is None:
            if not _is_admission_review(document.content):
                fixed.append(document.content)
            continue
        try:
            decision = policy.mutate(document.workload, config, document.namespace, document.kind,
                                     document.operation)
        except policy.MalformedObject:
            fixed.append(document.workload)  # reported as an error by review_documents
            continue
        patch = jsonpatch.JsonPatch(admission.patch_operations(decision.edits))
        fixed.append(patch.apply(copy.deepcopy(document.workload)))
    return fixed


def render_table(results: list[Result], config: PolicyConfig) -> str:
    rows = [("SOURCE", "OBJECT", "RESULT", "DETAIL")]
    for r in results:
        ref = f"{r.kind.value} {policy.ObjectRef(r.namespace, r.name)}"
        if r.error:
            rows.append((r.source, ref, "error", r.error))
        elif r.finding:
            rows += [(r.source, ref, "finding", message) for message in r.messages]
        elif r.exempt_reason:
            rows.append((r.source, ref, "exempt", r.exempt_reason))
        else:
            rows.append((r.source, ref, "ok", "gated" if r.gated else ""))
    lines = format_columns(rows)
    counts = _summary(results, config)
    reviewed = ", ".join(f"{counts[KINDS[kind].plural]} {kind.value}(s)" for kind in _kinds(config))
    lines.append(f"\n{reviewed} reviewed in mode {config.mode.value}: "
                 f"{counts['findings']} with a blanket NoExecute toleration, {counts['exempt']} exempt, "
                 f"{counts['errors']} unreadable")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def render_json(results: list[Result], config: PolicyConfig) -> str:
    """`daemonsets` as it always was, then one array per other enabled kind (`deployments`, ...), same fields."""
    report: dict[str, Any] = {"mode": config.mode.value}
    for kind in _kinds(config):
        report[KINDS[kind].plural] = [r.as_json() for r in results if r.kind is kind]
    report["summary"] = _summary(results, config)
    return dump_json(report)


def exit_status(results: list[Result]) -> int:
    if any(r.error for r in results):
        return 2
    return 1 if any(r.finding for r in results) else 0


def _review(document: Document, config: PolicyConfig) -> Result:
    assert document.workload is not None and document.kind is not None
    metadata = document.workload.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    namespace = str(metadata.get("namespace") or document.namespace)
    name = str(metadata.get("name") or metadata.get("generateName") or "")
    try:
        found = policy.assess(document.workload, config, document.namespace, document.kind)
        decision = policy.judge(found, config)  # review_documents has asked is_reviewed already
    except policy.MalformedObject as err:
        return Result(document.source, namespace, name, document.kind, error=str(err))
    action = config.mode.value if found.finding else None
    return Result(
        source=document.source, namespace=namespace, name=name, kind=document.kind, finding=found.finding,
        exempt_reason=found.exempt_reason.value if found.exempt_reason else None,
        blanket_tolerations=[t for _, t in found.blanket], gated=found.gated, action=action,
        messages=[decision.message] if not decision.allowed else list(decision.warnings),
        fix=found.offender.as_json() if found.offender else None,
    )


def _read_inputs(paths: list[str], stdin: TextIO) -> Iterator[tuple[str, str]]:
    for given in paths:
        if given == "-":
            yield "<stdin>", stdin.read()
            continue
        path = Path(given)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
        elif path.exists():
            files = [path]
        else:
            raise ReviewInputError(f"{given}: no such file or directory")
        for file in files:
            try:
                yield str(file), file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise ReviewInputError(f"{file}: cannot read it: {err}") from None


def _documents_in(source: str, content: Any) -> list[Document]:
    if not isinstance(content, dict):
        return [Document(source, content)]
    if isinstance(content.get("items"), list):
        # A list of any kind (List, DaemonSetList, ...): what apimachinery's Unstructured.IsList calls one, and
        # so what `kubectl get -o yaml|json` prints and `kubectl apply` takes apart.
        return [d for i, item in enumerate(content["items"]) for d in _documents_in(f"{source}[{i}]", item)]
    if _is_admission_review(content):
        request = content.get("request") or {}
        obj = request.get("object") if isinstance(request, dict) else None
        kind = request.get("kind") if isinstance(request, dict) else None
        if isinstance(obj, dict) and isinstance(kind, dict):
            reviewed = _kind_named(str(kind.get("group") or ""), str(kind.get("kind") or ""))
            if reviewed is not None:
                return [Document(source, content, obj, reviewed, str(request.get("namespace") or ""),
                                 str(request.get("operation") or "CREATE"))]
        return [Document(source, content)]
    group = str(content.get("apiVersion", "")).rpartition("/")[0]
    reviewed = _kind_named(group, str(content.get("kind") or ""))
    return [Document(source, content, content if reviewed else None, reviewed)]


def _kind_named(group: str, kind: str) -> Kind | None:
    """Any version of a reviewed kind's group (a DaemonSet also under the old extensions group): a manifest that
    kube-apiserver would convert to the version the webhook sees."""
    found = workloads.kind_of(group, "v1", kind)
    if found is None and kind == Kind.DAEMONSET.value and group == "extensions":
        return Kind.DAEMONSET
    return found


def _is_kubernetes_object(content: Any) -> bool:
    return isinstance(content, dict) and isinstance(content.get("apiVersion"), str) and isinstance(
        content.get("kind"), str)


def _is_admission_review(content: Any) -> bool:
    return isinstance(content, dict) and content.get("kind") == admission.REVIEW_KIND and str(
        content.get("apiVersion", "")).startswith("admission.k8s.io/")


def _kinds(config: PolicyConfig) -> list[Kind]:
    """The enabled kinds in a fixed order, DaemonSet first."""
    return [kind for kind in Kind if kind in config.kinds]


def _summary(results: list[Result], config: PolicyConfig) -> dict[str, int]:
    counts = {KINDS[kind].plural: sum(r.kind is kind for r in results) for kind in _kinds(config)}
    return {
        **counts,
        "findings": sum(r.finding for r in results),
        "exempt": sum(r.exempt_reason is not None for r in results),
        "errors": sum(r.error is not None for r in results),
    }
