"""`review`: the webhook's policy run offline on manifests or recorded AdmissionReviews, as CI would.
Calls no Kubernetes API and imports no HTTP server; `--fix` applies the JSON Patch the webhook would return.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import jsonpatch
import yaml

from webhook import admission, policy
from webhook.errors import describe_yaml_error
from webhook.policy import PolicyConfig
from webhook.report import dump_json, format_columns

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


class ReviewInputError(Exception):
    """An input that cannot be read; the message names the file."""


@dataclass
class Document:
    """One YAML/JSON document; `daemonset` points into `content` when it holds a DaemonSet."""

    source: str
    content: Any
    daemonset: dict[str, Any] | None = None
    namespace: str = ""  # the AdmissionReview's request.namespace, when there is one


@dataclass(frozen=True)
class Result:
    source: str
    namespace: str
    name: str
    finding: bool = False
    exempt_reason: str | None = None
    blanket_tolerations: list[Mapping[str, Any]] = field(default_factory=list)
    gated: bool = False
    action: str | None = None  # what the webhook does about a finding in this mode: warn, strip or deny
    messages: list[str] = field(default_factory=list)
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "namespace": self.namespace, "name": self.name, "finding": self.finding,
            "exempt_reason": self.exempt_reason, "blanket_tolerations": self.blanket_tolerations,
            "gated": self.gated, "action": self.action, "messages": self.messages, "error": self.error,
        }


def load_documents(paths: list[str], stdin: TextIO) -> list[Document]:
    """Every document of the inputs; ReviewInputError when one cannot be read, or when none of them holds a
    Kubernetes object at all: an empty stdin (the command that renders the manifests failed) or an empty folder
    must not pass a CI check."""
    documents: list[Document] = []
    for name, text in _read_inputs(paths, stdin):
        try:
            parsed = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as err:
            raise ReviewInputError(f"{name}: {describe_yaml_error(err, 'YAML or JSON')}") from None
        for index, content in enumerate(parsed, start=1):
            source = name if len(parsed) == 1 else f"{name}#{index}"
            documents += _documents_in(source, content)
    if not any(_is_kubernetes_object(d.content) for d in documents):
        inputs = ", ".join("stdin" if p == "-" else p for p in paths)
        raise ReviewInputError(f"no Kubernetes object (a document with apiVersion and kind) in {inputs}; "
                               "was the input empty, or did the command that renders it fail?")
    return documents


def review_documents(documents: list[Document], config: PolicyConfig) -> list[Result]:
    return [_review(d, config) for d in documents if d.daemonset is not None]


def fix_documents(documents: list[Document], config: PolicyConfig) -> list[Any]:
    """Each document as it would be stored after /mutate: DaemonSets patched, the rest unchanged."""
    fixed: list[Any] = []
    for document in documents:
        if document.daemonset is None:
            if not _is_admission_review(document.content):
                fixed.append(document.content)
            continue
        try:
            decision = policy.mutate(document.daemonset, config, document.namespace)
        except policy.MalformedObject:
            fixed.append(document.daemonset)  # reported as an error by review_documents
            continue
        patch = jsonpatch.JsonPatch(admission.patch_operations(decision.edits))
        fixed.append(patch.apply(copy.deepcopy(document.daemonset)))
    return fixed


def render_table(results: list[Result], config: PolicyConfig) -> str:
    rows = [("SOURCE", "DAEMONSET", "RESULT", "DETAIL")]
    for r in results:
        ref = str(policy.ObjectRef(r.namespace, r.name))
        if r.error:
            rows.append((r.source, ref, "error", r.error))
        elif r.finding:
            rows += [(r.source, ref, "finding", message) for message in r.messages]
        elif r.exempt_reason:
            rows.append((r.source, ref, "exempt", r.exempt_reason))
        else:
            rows.append((r.source, ref, "ok", "gated" if r.gated else ""))
    lines = format_columns(rows)
    counts = _summary(results)
    lines.append(f"\n{counts['daemonsets']} DaemonSet(s) reviewed in mode {config.mode.value}: "
                 f"{counts['findings']} with a blanket NoExecute toleration, {counts['exempt']} exempt, "
                 f"{counts['errors']} unreadable")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def render_json(results: list[Result], config: PolicyConfig) -> str:
    report = {"mode": config.mode.value, "daemonsets": [r.as_json() for r in results],
              "summary": _summary(results)}
    return dump_json(report)


def exit_status(results: list[Result]) -> int:
    if any(r.error for r in results):
        return 2
    return 1 if any(r.finding for r in results) else 0


def _review(document: Document, config: PolicyConfig) -> Result:
    assert document.daemonset is not None
    metadata = document.daemonset.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    namespace = str(metadata.get("namespace") or document.namespace)
    name = str(metadata.get("name") or "")
    try:
        found = policy.assess(document.daemonset, config, document.namespace)
        decision = policy.validate(document.daemonset, config, document.namespace)
    except policy.MalformedObject as err:
        return Result(document.source, namespace, name, error=str(err))
    action = config.mode.value if found.finding else None
    return Result(
        source=document.source, namespace=namespace, name=name, finding=found.finding,
        exempt_reason=found.exempt_reason.value if found.exempt_reason else None,
        blanket_tolerations=[t for _, t in found.blanket], gated=found.gated, action=action,
        messages=[decision.message] if not decision.allowed else list(decision.warnings),
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
    if content.get("kind") == "List" and isinstance(content.get("items"), list):
        return [d for i, item in enumerate(content["items"]) for d in _documents_in(f"{source}[{i}]", item)]
    if _is_admission_review(content):
        request = content.get("request") or {}
        obj = request.get("object") if isinstance(request, dict) else None
        kind = request.get("kind") if isinstance(request, dict) else None
        if isinstance(obj, dict) and isinstance(kind, dict) and kind.get("kind") == "DaemonSet":
            return [Document(source, content, obj, str(request.get("namespace") or ""))]
        return [Document(source, content)]
    if content.get("kind") == "DaemonSet" and str(content.get("apiVersion", "")).split("/")[0] in (
            "apps", "extensions"):
        return [Document(source, content, content)]
    return [Document(source, content)]


def _is_kubernetes_object(content: Any) -> bool:
    return isinstance(content, dict) and isinstance(content.get("apiVersion"), str) and isinstance(
        content.get("kind"), str)


def _is_admission_review(content: Any) -> bool:
    return isinstance(content, dict) and content.get("kind") == admission.REVIEW_KIND and str(
        content.get("apiVersion", "")).startswith("admission.k8s.io/")


def _summary(results: list[Result]) -> dict[str, int]:
    return {
        "daemonsets": len(results),
        "findings": sum(r.finding for r in results),
        "exempt": sum(r.exempt_reason is not None for r in results),
        "errors": sum(r.error is not None for r in results),
    }
