"""The AdmissionReview envelope: parsing bad input, answering per kube-apiserver's rules, patch spelling."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from webhook.admission import (
    BadReview,
    Endpoint,
    build_response,
    decide,
    error_response,
    internal_error_response,
    json_pointer,
    parse_review,
)
from webhook.enums import Mode
from webhook.policy import Decision, Edit, PolicyConfig
from webhook.workloads import Kind


def review_body(**request: Any) -> bytes:
    base: dict[str, Any] = {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "apps", "version": "v1", "kind": "DaemonSet"},
        "operation": "CREATE", "namespace": "kube-system", "name": "agent",
        "object": {"metadata": {"name": "agent"}, "spec": {"template": {"spec": {
            "tolerations": [{"operator": "Exists"}]}}}},
    }
    base.update(request)
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": base}).encode()


@pytest.mark.parametrize("body, message", [
    pytest.param(b"", "request body is empty", id="empty"),
    pytest.param(b"   \n", "request body is empty", id="whitespace"),
    pytest.param(b"{not json", "not valid JSON", id="bad-json"),
    pytest.param(b"\xff\xfe", "not valid JSON", id="not-utf8"),
    pytest.param(b"[1, 2]", "must be a JSON object", id="array"),
    pytest.param(b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "a"}}',
                 "expected apiVersion admission.k8s.io/v1", id="v1beta1"),
    pytest.param(b'{"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}', "kind AdmissionReview", id="wrong-kind"),
    pytest.param(b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', "no request", id="no-request"),
    pytest.param(review_body(uid=""), "request.uid", id="empty-uid"),
    pytest.param(review_body(uid=7), "request.uid", id="number-uid"),
    pytest.param(review_body(uid="u" * 300), "request.uid", id="huge-uid"),
    pytest.param(b"[" * 5000 + b"]" * 5000, "not valid JSON", id="deep-nesting"),
])
def test_unreadable_review_has_no_uid(body: bytes, message: str) -> None:
    with pytest.raises(BadReview, match=message) as caught:
        parse_review(body)
    assert caught.value.uid is None


@pytest.mark.parametrize("request_fields, message", [
    pytest.param({"kind": "DaemonSet"}, "request.kind", id="kind-string"),
    pytest.param({"kind": {"group": "apps", "kind": "DaemonSet"}}, "request.kind.version", id="kind-no-version"),
    pytest.param({"operation": "PATCH"}, "request.operation", id="unknown-operation"),
    pytest.param({"operation": None}, "request.operation", id="no-operation"),
    pytest.param({"object": []}, "request.object", id="object-list"),
    pytest.param({"oldObject": "x"}, "request.oldObject", id="old-object-string"),
    pytest.param({"dryRun": "yes"}, "request.dryRun", id="dry-run-string"),
    pytest.param({"namespace": 3}, "request.namespace", id="namespace-number"),
])
def test_incomplete_review_keeps_its_uid(request_fields: dict[str, Any], message: str) -> None:
    with pytest.raises(BadReview, match=message) as caught:
        parse_review(review_body(**request_fields))
    assert caught.value.uid == "705ab4f5-6393-11e8-b7cc-42010a800002"


def test_parse_reads_the_request() -> None:
    review = parse_review(review_body(dryRun=True, subResource=""))
    assert (review.uid, review.group, review.version, review.kind) == (
        "705ab4f5-6393-11e8-b7cc-42010a800002", "apps", "v1", "DaemonSet")
    assert review.dry_run
    assert review.workload_kind is Kind.DAEMONSET


@pytest.mark.parametrize("request_fields", [
    pytest.param({"operation": "DELETE", "object": None}, id="delete"),
    pytest.param({"operation": "CONNECT"}, id="connect"),
    pytest.param({"kind": {"group": "apps", "version": "v1", "kind": "Deployment"}}, id="deployment"),
    pytest.param({"kind": {"group": "", "version": "v1", "kind": "Pod"}}, id="pod"),
    pytest.param({"kind": {"group": "apps", "version": "v1beta2", "kind": "DaemonSet"}}, id="other-version"),
    pytest.param({"operation": "UPDATE", "subResource": "status"}, id="status-subresource"),
])
def test_non_daemonset_writes_are_allowed_unchanged(request_fields: dict[str, Any]) -> None:
    review = parse_review(review_body(**request_fields))
    for endpoint in Endpoint:
        assert decide(review, PolicyConfig(mode=Mode.DENY), endpoint) == Decision()


def test_daemonset_create_without_object_is_a_bad_review() -> None:
    review = parse_review(review_body(object=None))
    with pytest.raises(BadReview, match=r"request\.object") as caught:
        decide(review, PolicyConfig(), Endpoint.MUTATE)
    assert caught.value.uid == review.uid


def test_malformed_daemonset_is_a_bad_review_naming_the_field() -> None:
    review = parse_review(review_body(object={"spec": {"template": {"spec": {"tolerations": {}}}}}))
    with pytest.raises(BadReview, match=r"DaemonSet kube-system/agent: spec.template.spec.tolerations"):
        decide(review, PolicyConfig(), Endpoint.VALIDATE)


def test_response_echoes_uid_and_carries_the_v1_envelope() -> None:
    answer = build_response("abc", Decision(), Endpoint.VALIDATE)
    assert answer == {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                      "response": {"uid": "abc", "allowed": True}}


def test_no_change_means_no_patch_keys() -> None:
    response = build_response("abc", Decision(warnings=("w",)), Endpoint.MUTATE)["response"]
    assert "patch" not in response
    assert "patchType" not in response


def test_patch_is_base64_json_patch() -> None:
    decision = Decision(edits=(Edit("add", ("metadata", "labels", "a/b"), "x"),))
    response = build_response("abc", decision, Endpoint.MUTATE)["response"]
    assert response["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(response["patch"])) == [
        {"op": "add", "path": "/metadata/labels/a~1b", "value": "x"}]


def test_validating_answer_never_carries_a_patch() -> None:
    decision = Decision(edits=(Edit("add", ("a",), 1),), warnings=("w",))
    response = build_response("abc", decision, Endpoint.VALIDATE)["response"]
    assert "patch" not in response
    assert "patchType" not in response


def test_denial_carries_status_403_with_message() -> None:
    response = build_response("abc", Decision(allowed=False, message="fix it"), Endpoint.VALIDATE)["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 403
    assert response["status"]["message"] == "fix it"


def test_warnings_are_deduplicated_clipped_and_printable() -> None:
    decision = Decision(warnings=("same", "same", "x" * 400, "line\nbreak\x1b[31m"))
    warnings = build_response("abc", decision, Endpoint.VALIDATE)["response"]["warnings"]
    assert warnings[0] == "same"
    assert len(warnings) == 3
    assert len(warnings[1]) == 256
    assert warnings[2] == "line break [31m"


def test_error_response_refuses_with_400() -> None:
    response = error_response("abc", "bad")["response"]
    assert response == {"uid": "abc", "allowed": False,
                        "status": {"status": "Failure", "code": 400, "reason": "BadRequest", "message": "bad"}}


@pytest.mark.parametrize("allow", [True, False])
def test_internal_error_follows_the_failure_setting(allow: bool) -> None:
    response = internal_error_response("abc", allow)["response"]
    assert response["uid"] == "abc"
    assert response["allowed"] is allow
    assert ("warnings" in response) is allow
    assert ("status" in response) is not allow


@pytest.mark.parametrize("path, pointer", [
    pytest.param(("metadata", "annotations", "startupguard.io/stripped-tolerations"),
                 "/metadata/annotations/startupguard.io~1stripped-tolerations", id="slash"),
    pytest.param(("metadata", "labels", "a~b"), "/metadata/labels/a~0b", id="tilde"),
    pytest.param(("x", "~/"), "/x/~0~1", id="tilde-then-slash"),
    pytest.param(("spec", "tolerations", 3), "/spec/tolerations/3", id="index"),
    pytest.param(("spec", "readinessGates", "-"), "/spec/readinessGates/-", id="append"),
])
def test_json_pointer_escapes_segments(path: tuple[str | int, ...], pointer: str) -> None:
    assert json_pointer(path) == pointer
