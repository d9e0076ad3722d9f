"""Property tests: whatever JSON arrives, the answer is a valid AdmissionReview or a 4xx, never an exception."""

from __future__ import annotations

import base64
import copy
from typing import Any

import jsonpatch
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import AppClient, daemonset_review
from webhook import admission
from webhook.admission import BadReview
from webhook.app import create_app
from webhook.config import build_settings
from webhook.enums import Endpoint, Mode
from webhook.policy import PolicyConfig

pytestmark = pytest.mark.slow  # hundreds of generated examples each

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False) | st.text(
    max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
# Where a request carries objects, lists and strings that the parser or the policy reads.
PATHS: list[tuple[str | int, ...]] = [
    ("request",), ("request", "uid"), ("request", "kind"), ("request", "kind", "kind"), ("request", "kind", "group"),
    ("request", "operation"), ("request", "namespace"), ("request", "name"), ("request", "subResource"),
    ("request", "dryRun"), ("request", "object"), ("request", "oldObject"), ("request", "object", "metadata"),
    ("request", "object", "metadata", "name"), ("request", "object", "metadata", "labels"),
    ("request", "object", "metadata", "annotations"), ("request", "object", "metadata", "deletionTimestamp"),
    ("request", "object", "spec"), ("request", "object", "spec", "template"),
    ("request", "object", "spec", "template", "metadata"),
    ("request", "object", "spec", "template", "metadata", "labels"),
    ("request", "object", "spec", "template", "spec"),
    ("request", "object", "spec", "template", "spec", "hostNetwork"),
    ("request", "object", "spec", "template", "spec", "tolerations"),
    ("request", "object", "spec", "template", "spec", "tolerations", 0),
    ("request", "object", "spec", "template", "spec", "tolerations", 0, "key"),
    ("request", "object", "spec", "template", "spec", "tolerations", 0, "operator"),
    ("request", "object", "spec", "template", "spec", "tolerations", 0, "effect"),
    ("request", "object", "spec", "template", "spec", "tolerations", 0, "tolerationSeconds"),
    ("request", "object", "spec", "template", "spec", "readinessGates"),
    ("apiVersion",), ("kind",),
]
blanket_or_not = st.fixed_dictionaries({}, optional={
    "key": st.sampled_from(["", "node.cilium.io/agent-not-ready", "example.com/x"]),
    "operator": st.sampled_from(["Exists", "Equal"]),
    "effect": st.sampled_from(["", "NoExecute", "NoSchedule", "PreferNoSchedule"]),
    "value": st.sampled_from(["", "true"]),
    "tolerationSeconds": st.integers(0, 3600),
})


def _set(document: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    node: Any = document
    for part in path[:-1]:
        if isinstance(node, dict) and isinstance(part, str):
            node = node.setdefault(part, {})
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return
    last = path[-1]
    settable = isinstance(node, dict) and isinstance(last, str)
    settable |= isinstance(node, list) and isinstance(last, int) and last < len(node)
    if settable:
        node[last] = value


@st.composite
def reviews(draw: st.DrawFn) -> dict[str, Any]:
    review = daemonset_review(tolerations=draw(st.lists(blanket_or_not, max_size=4)))
    for path, value in draw(st.lists(st.tuples(st.sampled_from(PATHS), json_values), max_size=3)):
        _set(review, path, value)
    return review


def _check_answer(body: bytes, answer: dict[str, Any], endpoint: Endpoint) -> None:
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == orjson.loads(body)["request"]["uid"]
    assert isinstance(response["allowed"], bool)
    assert ("patch" in response) == ("patchType" in response)
    if "patch" in response:
        assert endpoint is Endpoint.MUTATE
        assert response["patchType"] == "JSONPatch"
        operations = orjson.loads(base64.b64decode(response["patch"], validate=True))
        assert isinstance(operations, list) and operations
        for operation in operations:
            assert operation["op"] in ("add", "remove", "replace")
            assert operation["path"].startswith("/")
            assert ("value" in operation) == (operation["op"] != "remove")
        # The patch applies to the object it was made for.
        obj = orjson.loads(body)["request"]["object"]
        jsonpatch.apply_patch(copy.deepcopy(obj), operations)
    if not response["allowed"]:
        assert 400 <= response["status"]["code"] <= 599


def _review(body: bytes, config: PolicyConfig, endpoint: Endpoint) -> tuple[int, dict[str, Any]]:
    """What the app does with a body, without HTTP: (HTTP status, JSON answer)."""
    try:
        review = admission.parse_review(body)
        decision = admission.decide(review, config, endpoint)
        return 200, admission.build_response(review.uid, decision, endpoint)
    except BadReview as err:
        if err.uid is None:
            return 400, {"detail": str(err)}
        return 200, admission.error_response(err.uid, str(err))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(review=reviews(), mode=st.sampled_from(list(Mode)), endpoint=st.sampled_from(list(Endpoint)))
def test_any_review_gets_a_valid_answer(review, mode, endpoint):
    body = orjson.dumps(review)
    status, answer = _review(body, PolicyConfig(mode=mode), endpoint)
    if status == 400:
        assert isinstance(answer["detail"], str)
        return
    _check_answer(body, answer, endpoint)
    if answer["response"]["allowed"] is False and answer["response"]["status"]["code"] == 400:
        return
    # A second pass over the patched object yields no patch (reinvocationPolicy: IfNeeded).
    if "patch" in answer["response"]:
        patched = copy.deepcopy(review)
        operations = orjson.loads(base64.b64decode(answer["response"]["patch"]))
        patched["request"]["object"] = jsonpatch.apply_patch(review["request"]["object"], operations)
        _, again = _review(orjson.dumps(patched), PolicyConfig(mode=mode), endpoint)
        assert "patch" not in again["response"]


@settings(max_examples=300, deadline=None)
@given(document=json_values)
def test_any_json_body_gets_a_4xx_or_an_answer(document):
    body = orjson.dumps(document)
    status, answer = _review(body, PolicyConfig(), Endpoint.VALIDATE)
    assert status == 400 or answer["response"]["uid"] == document["request"]["uid"]


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=200))
def test_any_bytes_get_a_4xx_or_an_answer(body):
    status, _ = _review(body, PolicyConfig(), Endpoint.MUTATE)
    assert status in (200, 400)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(review=reviews(), endpoint=st.sampled_from(list(Endpoint)))
def test_the_app_answers_any_review_with_json_and_no_server_error(review, endpoint):
    client = AppClient(create_app(build_settings(mode=Mode.STRIP)))
    body = orjson.dumps(review)
    response = client.post(f"/{endpoint.value}", content=body, headers={"Content-Type": "application/json"})
    assert response.headers["content-type"] == "application/json"
    if response.status_code == 400:
        assert "detail" in response.json()
        return
    assert response.status_code == 200
    _check_answer(body, response.json(), endpoint)
    assert "internal error" not in response.text
