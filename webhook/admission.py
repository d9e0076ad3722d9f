"""The AdmissionReview envelope: parse a request, answer it, spell policy Edits as a base64 JSON Patch.

Bytes in, plain dicts out. No FastAPI and no Kubernetes client; decisions come from policy.py.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from webhook import policy, workloads
from webhook.enums import Endpoint, Outcome
from webhook.policy import Decision, Edit, PolicyConfig
from webhook.workloads import Kind

API_VERSION = "admission.k8s.io/v1"
REVIEW_KIND = "AdmissionReview"
OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})
MAX_UID_LENGTH = 256
# kube-apiserver's warning recorder keeps 4096 characters of warnings per request in all (every webhook's and its
# own together); past that it cuts each to 256 and drops the rest (truncateAtTotalRunes, truncateItemRunes in
# https://github.com/kubernetes/kubernetes/blob/master/staging/src/k8s.io/apiserver/pkg/endpoints/filters/warning.go).
# The AdmissionResponse documentation asks for at most 120 characters each where possible. So an answer carries at
# most MAX_WARNINGS of at most MAX_WARNING_LENGTH characters (2 KiB), the last saying how many more were omitted.
MAX_WARNING_LENGTH = 256
MAX_WARNINGS = 8
MAX_MESSAGE_LENGTH = 1024


class BadReview(ValueError):
    """A request that cannot be reviewed. With a uid it is answered as an AdmissionReview, else as HTTP 400."""

    def __init__(self, message: str, uid: str | None = None) -> None:
        super().__init__(message)
        self.uid = uid


@dataclass(frozen=True)
class Review:
    uid: str
    group: str
    version: str
    kind: str
    operation: str
    namespace: str
    name: str
    sub_resource: str
    dry_run: bool
    obj: Any
    old_obj: Any

    @property
    def workload_kind(self) -> Kind | None:
        """The reviewed kind of a CREATE or UPDATE of the object itself (not of a subresource), else None."""
        if self.operation not in ("CREATE", "UPDATE") or self.sub_resource:
            return None  # status and other subresource writes carry no pod template to review
        return workloads.kind_of(self.group, self.version, self.kind)

    @property
    def display_name(self) -> str:
        """The name for logs: kube-apiserver sends a pod its controller named by generateName with no name yet."""
        if self.name or not isinstance(self.obj, dict):
            return self.name
        metadata = self.obj.get("metadata")
        generate_name = metadata.get("generateName") if isinstance(metadata, dict) else None
        return generate_name if isinstance(generate_name, str) else ""


def parse_review(body: bytes) -> Review:
    """The one parser for request bodies; every problem is a BadReview with a message safe to return."""
    if not body.strip():
        raise BadReview("request body is empty; expected an admission.k8s.io/v1 AdmissionReview")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise BadReview(f"request body is not valid JSON: {err}") from None
    if not isinstance(document, dict):
        raise BadReview("request body must be a JSON object (an AdmissionReview)")
    if document.get("apiVersion") != API_VERSION or document.get("kind") != REVIEW_KIND:
        raise BadReview(
            f"expected apiVersion {API_VERSION} and kind {REVIEW_KIND}, got apiVersion "
            f"{_quote(document.get('apiVersion'))} and kind {_quote(document.get('kind'))}; "
            "set admissionReviewVersions: [v1] in the webhook configuration"
        )
    request = document.get("request")
    if not isinstance(request, dict):
        raise BadReview("AdmissionReview has no request object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid or len(uid) > MAX_UID_LENGTH:
        raise BadReview(f"request.uid must be a non-empty string of at most {MAX_UID_LENGTH} characters")

    kind = request.get("kind")
    if not isinstance(kind, dict):
        raise BadReview("request.kind must be an object with group, version and kind", uid)
    operation = request.get("operation")
    if not isinstance(operation, str) or operation not in OPERATIONS:  # a list or object is unhashable
        raise BadReview(f"request.operation must be one of {', '.join(sorted(OPERATIONS))}, "
                        f"got {_quote(operation)}", uid)
    for key in ("object", "oldObject"):
        if not isinstance(request.get(key), dict | None):
            raise BadReview(f"request.{key} must be an object or null", uid)
    if not isinstance(request.get("dryRun", False), bool | None):
        raise BadReview("request.dryRun must be a boolean", uid)
    return Review(
        uid=uid,
        group=_string(kind, "group", "request.kind", uid),
        version=_string(kind, "version", "request.kind", uid, required=True),
        kind=_string(kind, "kind", "request.kind", uid, required=True),
        operation=operation,
        namespace=_string(request, "namespace", "request", uid),
        name=_string(request, "name", "request", uid),
        sub_resource=_string(request, "subResource", "request", uid),
        dry_run=bool(request.get("dryRun")),
        obj=request.get("object"),
        old_obj=request.get("oldObject"),
    )


def decide(review: Review, config: PolicyConfig, endpoint: Endpoint) -> Decision:
    """Apply the policy to a review: writes of the reviewed kinds are looked at, the rest is allowed as is."""
    kind = review.workload_kind
    if kind is None:
        return Decision()
    if not isinstance(review.obj, dict):
        raise BadReview(f"request.object must hold the {review.kind} for {review.operation}", review.uid)
    try:
        if endpoint is Endpoint.MUTATE:
            return policy.mutate(review.obj, config, review.namespace, kind, review.operation)
        return policy.validate(review.obj, config, review.namespace, kind, review.operation)
    except policy.MalformedObject as err:
        ref = policy.ObjectRef(review.namespace, review.display_name)
        raise BadReview(f"{review.kind} {ref}: {err}", review.uid) from None


def outcome_of(decision: Decision, endpoint: Endpoint) -> Outcome:
    if not decision.allowed:
        return Outcome.DENIED
    if decision.edits and endpoint is Endpoint.MUTATE:
        return Outcome.PATCHED
    return Outcome.WARNED if decision.warnings else Outcome.ALLOWED


def build_response(uid: str, decision: Decision, endpoint: Endpoint) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": decision.allowed}
    if decision.warnings:
        response["warnings"] = _clean_warnings(decision.warnings)
    if not decision.allowed:
        response["status"] = _status(403, "Forbidden", decision.message)
    elif decision.edits and endpoint is Endpoint.MUTATE:
        # kube-apiserver refuses a patch from a validating webhook, and a patchType without a patch.
        response["patchType"] = "JSONPatch"
        response["patch"] = encode_patch(decision.edits)
    return _envelope(response)


def error_response(uid: str, message: str) -> dict[str, Any]:
    """The answer to a request with a readable uid that cannot be reviewed: refused as a bad request."""
    return _envelope({"uid": uid, "allowed": False, "status": _status(400, "BadRequest", message)})


def internal_error_response(uid: str, allow: bool) -> dict[str, Any]:
    """The answer when the webhook itself failed; `allow` mirrors failurePolicy: Ignore."""
    if allow:
        return _envelope({"uid": uid, "allowed": True, "warnings": [
            "cilium-startup-guard failed to review this request (internal error); it was allowed unchanged"]})
    return _envelope({"uid": uid, "allowed": False, "status": _status(
        500, "InternalError", "cilium-startup-guard failed to review this request (internal error)")})


def patch_operations(edits: Iterable[Edit]) -> list[dict[str, Any]]:
    operations: list[dict[str, Any]] = []
    for edit in edits:
        operation: dict[str, Any] = {"op": edit.op, "path": json_pointer(edit.path)}
        if edit.op != "remove":
            operation["value"] = edit.value
        operations.append(operation)
    return operations


def encode_patch(edits: Iterable[Edit]) -> str:
    return base64.b64encode(orjson.dumps(patch_operations(edits))).decode("ascii")


@functools.lru_cache(maxsize=1024)
def json_pointer(path: tuple[str | int, ...]) -> str:
    # Cached: the policy edits the same few paths over and over (keys from the configuration, list indices).
    # RFC 6901: "~" first, so that the "~1" made from "/" is not escaped again.
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def _envelope(response: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": REVIEW_KIND, "response": response}


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"status": "Failure", "code": code, "reason": reason, "message": _printable(message, MAX_MESSAGE_LENGTH)}


def _clean_warnings(warnings: Sequence[str]) -> list[str]:
    unique = list(dict.fromkeys(_printable(w, MAX_WARNING_LENGTH) for w in warnings[:MAX_WARNINGS * 4]))
    if len(unique) <= MAX_WARNINGS:
        return unique
    omitted = len(warnings) - min(len(warnings), MAX_WARNINGS * 4) + len(unique) - MAX_WARNINGS + 1
    return [*unique[:MAX_WARNINGS - 1], f"cilium-startup-guard: {omitted} more warnings omitted"]


def _printable(text: str, limit: int) -> str:
    # Object content reaches messages before the API server has validated it: no control characters.
    if not text.isprintable():  # one C call for the usual case; the loop below only for the rare one
        text = "".join(c if c.isprintable() else " " for c in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _string(parent: dict[str, Any], key: str, where: str, uid: str, required: bool = False) -> str:
    value = parent.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise BadReview(f"{where}.{key} must be a {'non-empty ' if required else ''}string", uid)
    return value


def _quote(value: Any) -> str:
    if isinstance(value, str):
        return repr(value[:64])
    return "none" if value is None else f"a {type(value).__name__}"
