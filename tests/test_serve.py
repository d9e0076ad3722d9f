"""`cilium-startup-guard serve` for real: a subprocess on 127.0.0.1 called over verified TLS."""

from __future__ import annotations

import base64
import json
import ssl
from pathlib import Path

import httpx
import jsonpatch
import pytest

from tests.support import ServeProcess, load_fixture


def test_serve_makes_dev_certs_and_answers_mutate_over_verified_tls(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    review = load_fixture("daemonset_ebs_csi_node.json")
    with ServeProcess(certs, "--mode", "strip") as server:
        assert sorted(p.name for p in certs.iterdir()) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
        with httpx.Client(verify=ssl.create_default_context(cafile=server.ca)) as client:
            assert client.get(f"{server.url}/healthz").json() == {"status": "ok"}
            answer = client.post(f"{server.url}/mutate", json=review).json()["response"]
    assert answer["uid"] == review["request"]["uid"]
    patched = jsonpatch.apply_patch(review["request"]["object"], json.loads(base64.b64decode(answer["patch"])))
    assert {"operator": "Exists"} not in patched["spec"]["template"]["spec"]["tolerations"]


def test_serve_logs_one_json_line_per_admission(tmp_path: Path) -> None:
    review = load_fixture("daemonset_ebs_csi_node.json")
    with ServeProcess(tmp_path) as server, httpx.Client(verify=ssl.create_default_context(cafile=server.ca)) as c:
        c.post(f"{server.url}/validate", json=review)
    decisions = [e for e in server.log_entries() if e["message"] == "admission decision"]
    assert len(decisions) == 1
    assert decisions[0] | {"duration_ms": 0} == decisions[0] | {
        "uid": review["request"]["uid"], "kind": "DaemonSet", "namespace": "kube-system", "name": "ebs-csi-node",
        "operation": "CREATE", "mode": "warn", "outcome": "warned", "duration_ms": 0}


def test_serve_reuses_existing_certificates(tmp_path: Path) -> None:
    with ServeProcess(tmp_path):
        first = (tmp_path / "tls.crt").read_bytes()
    with ServeProcess(tmp_path):
        assert (tmp_path / "tls.crt").read_bytes() == first


def test_serve_refuses_plain_http(tmp_path: Path) -> None:
    with ServeProcess(tmp_path) as server, httpx.Client() as client, pytest.raises(httpx.HTTPError):
        client.get(f"http://127.0.0.1:{server.port}/healthz")
