"""The app's answers to failures and wrong requests, and what its decision log lines hold (in process)."""

from __future__ import annotations

import logging
import sys

import orjson
import pytest

from tests.support import AppClient, daemonset_review, nested, with_value
from webhook import admission
from webhook.app import create_app
from webhook.config import build_settings
from webhook.enums import Mode
from webhook.logs import JsonFormatter

JSON = {"Content-Type": "application/json"}
SECRET_MARKER = "do-not-log-this-value"


def _client(tmp_path, config: str = "", mode: Mode | None = None) -> AppClient:
    path = tmp_path / "config.yaml"
    path.write_text(config)
    return AppClient(create_app(build_settings(path, mode)))


def _metrics(client: AppClient) -> str:
    return client.get("/metrics").text


def _fail(*args, **kwargs):
    raise RuntimeError(f"boom {SECRET_MARKER}")


@pytest.fixture
def broken_policy(monkeypatch):
    monkeypatch.setattr(admission, "decide", _fail)


def test_internal_error_allows_with_a_warning_by_default(tmp_path, broken_policy, caplog):
    client = _client(tmp_path)
    review = daemonset_review()
    response = client.post("/mutate", json=review)
    answer = response.json()["response"]
    assert response.status_code == 200
    assert answer["uid"] == review["request"]["uid"]
    assert answer["allowed"] is True
    assert "internal error" in answer["warnings"][0]
    assert "patch" not in answer
    assert SECRET_MARKER not in response.text and "Traceback" not in response.text
    failures = [r for r in caplog.records if r.getMessage() == "admission review failed"]
    assert [r.uid for r in failures] == [review["request"]["uid"]]
    assert failures[0].exc_info is not None  # the traceback goes to the log
    text = _metrics(client)
    assert 'cilium_startup_guard_admission_errors_total{endpoint="mutate",reason="internal"} 1.0' in text
    assert 'cilium_startup_guard_admission_requests_total{endpoint="mutate",outcome="error"} 1.0' in text


def test_internal_error_denies_in_failure_mode_deny(tmp_path, broken_policy):
    client = _client(tmp_path, "failureMode: deny\n")
    review = daemonset_review()
    response = client.post("/validate", json=review)
    answer = response.json()["response"]
    assert response.status_code == 200
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 500
    assert answer["uid"] == review["request"]["uid"]
    assert SECRET_MARKER not in response.text and "Traceback" not in response.text


def test_internal_error_before_the_uid_is_known_is_a_json_500(tmp_path, monkeypatch):
    monkeypatch.setattr(admission, "parse_review", _fail)
    client = _client(tmp_path)
    response = client.post("/validate", json=daemonset_review())
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}


@pytest.mark.parametrize("method, path, headers, status", [
    pytest.param("GET", "/mutate", {}, 405, id="get-mutate"),
    pytest.param("PUT", "/validate", JSON, 405, id="put-validate"),
    pytest.param("POST", "/healthz", JSON, 405, id="post-healthz"),
    pytest.param("GET", "/nowhere", {}, 404, id="unknown-path"),
    pytest.param("POST", "/mutate", {"Content-Type": "text/yaml"}, 415, id="yaml"),
    pytest.param("POST", "/mutate", {}, 415, id="no-content-type"),
])
def test_wrong_requests_get_json_errors(tmp_path, method, path, headers, status):
    response = _client(tmp_path).request(method, path, content=b"{}", headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert "detail" in response.json()


def test_toleration_with_deeply_nested_value_is_a_bad_request(tmp_path):
    review = daemonset_review(tolerations=[{"operator": "Exists", "tolerationSeconds": "DEEP"}])
    body = with_value(review, "DEEP", nested(1000))
    response = _client(tmp_path, mode=Mode.STRIP).post("/mutate", content=body, headers=JSON)
    answer = response.json()["response"]
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 400
    assert "tolerationSeconds: expected a string or a number" in answer["status"]["message"]


def test_deep_nesting_elsewhere_in_the_object_is_reviewed_normally(tmp_path):
    review = daemonset_review()
    review["request"]["object"]["spec"]["template"]["spec"]["containers"][0]["args"] = "DEEP"
    body = with_value(review, "DEEP", nested(1000))
    response = _client(tmp_path, mode=Mode.STRIP).post("/mutate", content=body, headers=JSON)
    assert response.json()["response"]["allowed"] is True
    assert "patch" in response.json()["response"]


def test_one_info_line_per_decision_with_the_documented_fields(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    review = daemonset_review(namespace="monitoring", name="node-exporter")
    review["request"]["operation"] = "UPDATE"
    _client(tmp_path, mode=Mode.STRIP).post("/mutate", json=review)
    decisions = [r for r in caplog.records if r.getMessage() == "admission decision"]
    assert len(decisions) == 1
    line = orjson.loads(JsonFormatter().format(decisions[0]))
    assert line["level"] == "info"
    assert {k: line[k] for k in ("uid", "kind", "namespace", "name", "operation", "mode", "outcome")} == {
        "uid": review["request"]["uid"], "kind": "DaemonSet", "namespace": "monitoring", "name": "node-exporter",
        "operation": "UPDATE", "mode": "strip", "outcome": "patched"}
    assert isinstance(line["duration_ms"], float)


def test_info_lines_hold_no_object_content(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    client = _client(tmp_path, mode=Mode.STRIP)
    review = daemonset_review(padding=SECRET_MARKER)
    review["request"]["object"]["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "TOKEN", "value": SECRET_MARKER}]
    client.post("/mutate", json=review)
    client.post("/validate", json=review)
    bad = daemonset_review(padding=SECRET_MARKER)
    bad["request"]["object"]["spec"]["template"]["spec"]["tolerations"] = SECRET_MARKER
    client.post("/mutate", json=bad)
    lines = [JsonFormatter().format(r) for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) >= 3
    for line in lines:
        assert SECRET_MARKER not in line
        assert "tolerations" not in orjson.loads(line) and "object" not in orjson.loads(line)


def test_request_fields_in_the_decision_line_are_clipped_to_kubernetes_lengths(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    review = daemonset_review(namespace="n" * 100_000, name="d" * 100_000)
    review["request"]["kind"]["kind"] = "K" * 100_000
    _client(tmp_path).post("/validate", json=review)
    [decision] = [r for r in caplog.records if r.getMessage() == "admission decision"]
    line = JsonFormatter().format(decision)
    fields = orjson.loads(line)
    assert (len(fields["namespace"]), len(fields["name"]), len(fields["kind"])) == (63, 253, 63)
    assert fields["namespace"].endswith("…")
    assert len(line) < 2048


def test_an_error_line_is_clipped_like_the_answer_message(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    review = daemonset_review(namespace="n" * 100_000)
    review["request"]["object"]["spec"]["template"]["spec"]["tolerations"] = "not a list"
    _client(tmp_path).post("/validate", json=review)
    [refusal] = [r for r in caplog.records if r.getMessage() == "bad admission request"]
    assert len(orjson.loads(JsonFormatter().format(refusal))["error"]) <= admission.MAX_MESSAGE_LENGTH


@pytest.mark.parametrize("extra", [
    pytest.param({"payload": "x" * 1_000_000}, id="text-field"),
    pytest.param({"fields": {"name": "x" * 1_000_000}}, id="reserved-key-field"),
    pytest.param({"payload": ["x" * 1_000_000]}, id="non-text-field"),
])
def test_every_log_line_is_bounded_whatever_a_caller_passes(extra):
    record = logging.LogRecord("webhook.test", logging.INFO, __file__, 1, "m" * 1_000_000, None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    assert len(JsonFormatter().format(record)) < 16 * 1024


def test_a_long_traceback_keeps_its_first_and_last_lines():
    try:
        raise ValueError("start " + "x" * 1_000_000 + " end")
    except ValueError:
        record = logging.LogRecord("webhook.test", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    exception = orjson.loads(JsonFormatter().format(record))["exception"]
    assert len(exception) < 20 * 1024
    assert exception.startswith("Traceback") and exception.endswith(" end")
