"""The FastAPI app driven in-process through httpx: routes, envelope errors, failure mode."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.support import AppClient, load_fixture
from webhook import app as app_module
from webhook.app import ANSWER_CHUNK_BYTES, LARGE_REVIEW_BYTES, create_app
from webhook.bodylimit import BodyReader
from webhook.config import Settings
from webhook.enums import Mode
from webhook.policy import PolicyConfig

JSON = {"Content-Type": "application/json"}


def call(settings: Settings, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return AppClient(create_app(settings)).request(method, path, **kwargs)


@pytest.fixture
def strip() -> Iterator[Settings]:
    yield Settings(policy=PolicyConfig(mode=Mode.STRIP))


@pytest.mark.parametrize("content, status, detail", [
    pytest.param(b"", 400, "request body is empty", id="empty-body"),
    pytest.param(b"{", 400, "not valid JSON", id="bad-json"),
    pytest.param(b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}', 400,
                 "request.uid", id="missing-uid"),
    pytest.param(b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}', 400,
                 "admission.k8s.io/v1", id="wrong-version"),
])
@pytest.mark.parametrize("path", ["/mutate", "/validate"])
def test_unreadable_request_gets_400_json(path: str, content: bytes, status: int, detail: str) -> None:
    response = call(Settings(), "POST", path, content=content, headers=JSON)
    assert response.status_code == status
    assert detail in response.json()["detail"]


def test_incomplete_review_with_uid_gets_an_admission_review_refusal() -> None:
    body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "kind": {"group": "apps", "version": "v1", "kind": "DaemonSet"}}}
    response = call(Settings(), "POST", "/mutate", json=body)
    assert response.status_code == 200
    answer = response.json()["response"]
    assert answer["uid"] == "u-1"
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 400
    assert "request.operation" in answer["status"]["message"]


@pytest.mark.parametrize("fixture", ["daemonset_delete.json", "deployment_create.json"])
@pytest.mark.parametrize("path", ["/mutate", "/validate"])
def test_delete_and_non_daemonset_are_allowed_without_patch(fixture: str, path: str, strip: Settings) -> None:
    review = load_fixture(fixture)
    answer = call(strip, "POST", path, json=review).json()
    assert answer["response"] == {"uid": review["request"]["uid"], "allowed": True}


def test_mutate_returns_a_patch_for_the_ebs_csi_node(strip: Settings) -> None:
    review = load_fixture("daemonset_ebs_csi_node.json")
    answer = call(strip, "POST", "/mutate", json=review).json()
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == review["request"]["uid"]
    assert answer["response"]["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(answer["response"]["patch"]))
    assert {"op": "replace", "path": "/spec/template/spec/tolerations",
            "value": [{"operator": "Exists", "effect": "NoSchedule"},
                      {"operator": "Exists", "effect": "PreferNoSchedule"}]} in ops


def test_validate_denies_in_deny_mode() -> None:
    review = load_fixture("daemonset_ebs_csi_node.json")
    answer = call(Settings(policy=PolicyConfig(mode=Mode.DENY)), "POST", "/validate", json=review).json()
    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"]["code"] == 403


def test_wrong_content_type_is_415() -> None:
    response = call(Settings(), "POST", "/mutate", content=b"{}", headers={"Content-Type": "text/plain"})
    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]


def test_json_content_type_with_charset_is_accepted() -> None:
    review = load_fixture("deployment_create.json")
    response = call(Settings(), "POST", "/mutate", content=json.dumps(review).encode(),
                    headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.json()["response"]["allowed"] is True


@pytest.mark.parametrize("method, path, status", [
    pytest.param("GET", "/mutate", 405, id="get-mutate"),
    pytest.param("PUT", "/validate", 405, id="put-validate"),
    pytest.param("POST", "/healthz", 405, id="post-healthz"),
    pytest.param("GET", "/nowhere", 404, id="unknown-path"),
    pytest.param("GET", "/docs", 404, id="no-docs"),
])
def test_wrong_method_or_path_gets_json_4xx(method: str, path: str, status: int) -> None:
    response = call(Settings(), method, path)
    assert response.status_code == status
    assert "detail" in response.json()


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_health_endpoints_answer_ok(path: str) -> None:
    assert call(Settings(), "GET", path).status_code == 200


@pytest.mark.parametrize("allow_on_error, allowed", [(True, True), (False, False)])
def test_unexpected_exception_follows_failure_mode(monkeypatch: pytest.MonkeyPatch, allow_on_error: bool,
                                                   allowed: bool) -> None:
    def explode(*_: Any) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr("webhook.policy.mutate", explode)
    review = load_fixture("daemonset_ebs_csi_node.json")
    response = call(Settings(allow_on_error=allow_on_error), "POST", "/mutate", json=review)
    assert response.status_code == 200
    answer = response.json()["response"]
    assert answer["uid"] == review["request"]["uid"]
    assert answer["allowed"] is allowed
    assert "secret internals" not in response.text
    assert "Traceback" not in response.text


def test_a_daemonset_pod_is_gated_and_logged_by_its_generated_name_prefix(caplog: pytest.LogCaptureFixture) -> None:
    review = load_fixture("pod_daemonset_ebs_csi_node.json")
    with caplog.at_level("INFO", logger="webhook.app"):
        answer = call(Settings(), "POST", "/mutate", json=review).json()["response"]
    ops = json.loads(base64.b64decode(answer["patch"]))
    assert {"op": "add", "path": "/spec/readinessGates",
            "value": [{"conditionType": "startupguard.io/cilium-ready"}]} in ops
    (record,) = [r for r in caplog.records if r.getMessage() == "admission decision"]
    fields = record.fields  # type: ignore[attr-defined]
    assert (fields["kind"], fields["name"], fields["outcome"]) == ("Pod", "ebs-csi-node-", "patched")


def test_a_large_answer_goes_out_in_pieces_that_add_up_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    answer = bytes(range(256)) * 1000  # 256000 bytes: four pieces
    monkeypatch.setattr(app_module, "handle_review", lambda *_: (200, answer))
    app = create_app(Settings())
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/mutate", "headers": [(b"content-type", b"application/json")]}
    asyncio.run(app(scope, receive, send))
    pieces = [m for m in sent if m["type"] == "http.response.body"]
    assert [len(p["body"]) for p in pieces] == [ANSWER_CHUNK_BYTES] * 3 + [len(answer) - 3 * ANSWER_CHUNK_BYTES]
    assert [p.get("more_body", False) for p in pieces] == [True, True, True, False]
    assert b"".join(p["body"] for p in pieces) == answer


def _reviewed_on(monkeypatch: pytest.MonkeyPatch, padding: int) -> tuple[str, dict[str, Any]]:
    """The name of the thread that reviewed a request padded by `padding` bytes, and the answer."""
    threads: list[str] = []
    real = app_module.handle_review

    def spy(*args: Any) -> tuple[int, bytes]:
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(app_module, "handle_review", spy)
    review = load_fixture("daemonset_ebs_csi_node.json")
    review["request"]["object"]["metadata"]["annotations"]["padding"] = "x" * padding
    answer = call(Settings(), "POST", "/validate", json=review).json()["response"]
    assert answer["uid"] == review["request"]["uid"]
    return threads[0], answer


def test_a_large_review_is_reviewed_off_the_event_loop_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    thread, answer = _reviewed_on(monkeypatch, LARGE_REVIEW_BYTES)
    assert thread.startswith("large-review")
    assert answer["warnings"]


def test_an_ordinary_review_is_reviewed_on_the_event_loop_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    thread, _ = _reviewed_on(monkeypatch, 0)
    assert thread == threading.main_thread().name


def _order_of_events(monkeypatch: pytest.MonkeyPatch, sources: tuple[str, str]) -> list[str]:
    """Two large reviews sent at once, from `sources`: when each body was read and each review began and ended."""
    events: list[str] = []
    real_read, real_review = BodyReader.read, app_module.handle_review

    async def read(self: BodyReader, scope: Any, receive: Any, send: Any) -> bytes | None:
        events.append(f"read {scope['client'][0]}")
        return await real_read(self, scope, receive, send)

    def review(content_type: str, body: bytes, *args: Any) -> tuple[int, bytes]:
        source = orjson.loads(body)["request"]["name"]
        events.append(f"review {source}")
        time.sleep(0.1)
        events.append(f"answered {source}")
        return real_review(content_type, body, *args)

    monkeypatch.setattr(BodyReader, "read", read)
    monkeypatch.setattr(app_module, "handle_review", review)
    app = create_app(Settings())

    async def post(source: str) -> None:
        body = load_fixture("daemonset_ebs_csi_node.json")
        body["request"]["name"] = source
        body["request"]["object"]["metadata"]["annotations"]["padding"] = "x" * LARGE_REVIEW_BYTES
        transport = httpx.ASGITransport(app=app, client=(source, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
            assert (await client.post("/validate", json=body)).status_code == 200

    async def both() -> None:
        await asyncio.gather(*(post(source) for source in sources))

    asyncio.run(both())
    return events


def test_a_second_large_review_from_one_source_is_not_read_before_the_first_is_answered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    events = _order_of_events(monkeypatch, ("192.0.2.1", "192.0.2.1"))
    assert events == ["read 192.0.2.1", "review 192.0.2.1", "answered 192.0.2.1"] * 2


def test_a_large_review_from_another_source_is_read_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    events = _order_of_events(monkeypatch, ("192.0.2.1", "192.0.2.2"))
    assert events.index("read 192.0.2.2") < events.index("answered 192.0.2.1")
