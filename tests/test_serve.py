"""`cilium-startup-guard serve` for real, as the README runs it: development certificates made on first start,
then called over TLS verified against the generated CA."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import jsonpatch
import pytest

from tests.support import ServerProcess, load_fixture

pytestmark = pytest.mark.slow  # a `serve` process


def test_serve_makes_dev_certs_and_answers_mutate_over_verified_tls(tmp_path: Path) -> None:
    review = load_fixture("daemonset_ebs_csi_node.json")
    with ServerProcess(tmp_path, "--mode", "strip", dev_certs=True) as server:
        assert sorted(p.name for p in server.certs_dir.iterdir()) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
        with httpx.Client(verify=server.context()) as client:
            assert client.get(f"{server.base_url}/healthz").json() == {"status": "ok"}
            answer = client.post(f"{server.base_url}/mutate", json=review).json()["response"]
    assert answer["uid"] == review["request"]["uid"]
    patched = jsonpatch.apply_patch(review["request"]["object"], json.loads(base64.b64decode(answer["patch"])))
    assert {"operator": "Exists"} not in patched["spec"]["template"]["spec"]["tolerations"]


def test_serve_prints_how_to_call_it(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, dev_certs=True) as server:
        hint = server.log_text()
    assert f"curl --cacert {server.certs_dir / 'ca.crt'} https://localhost:" in hint
    assert "/healthz" in hint


def test_serve_logs_one_json_line_per_admission(tmp_path: Path) -> None:
    review = load_fixture("daemonset_ebs_csi_node.json")
    with ServerProcess(tmp_path, dev_certs=True) as server, httpx.Client(verify=server.context()) as client:
        client.post(f"{server.base_url}/validate", json=review)
    decisions = [e for e in server.log_lines() if e["message"] == "admission decision"]
    assert len(decisions) == 1
    assert decisions[0] | {"duration_ms": 0} == decisions[0] | {
        "uid": review["request"]["uid"], "kind": "DaemonSet", "namespace": "kube-system", "name": "ebs-csi-node",
        "operation": "CREATE", "mode": "warn", "outcome": "warned", "duration_ms": 0}


def test_serve_logs_no_access_line_beside_the_decision(tmp_path: Path) -> None:
    review = load_fixture("daemonset_ebs_csi_node.json")
    with ServerProcess(tmp_path, dev_certs=True) as server, httpx.Client(verify=server.context()) as client:
        for _ in range(3):
            client.post(f"{server.base_url}/mutate", json=review)
        client.get(f"{server.base_url}/healthz")
    lines = server.log_lines()
    assert [e["logger"] for e in lines if e["logger"] == "uvicorn.access"] == []
    assert sum(e["message"] == "admission decision" for e in lines) == 3


def test_serve_reuses_existing_certificates(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "first", certs_dir=tmp_path / "certs", dev_certs=True):
        first = (tmp_path / "certs" / "tls.crt").read_bytes()
    with ServerProcess(tmp_path / "second", certs_dir=tmp_path / "certs", dev_certs=True):
        assert (tmp_path / "certs" / "tls.crt").read_bytes() == first


def test_serve_refuses_plain_http(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, dev_certs=True) as server, httpx.Client() as client, \
            pytest.raises(httpx.HTTPError):
        client.get(f"http://127.0.0.1:{server.port}/healthz")
