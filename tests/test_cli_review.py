"""`cilium-startup-guard review`: the policy offline on manifests and AdmissionReviews, as CI runs it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import FIXTURES
from webhook.cli import main
from webhook.policy import STRIPPED_ANNOTATION

MANIFESTS = FIXTURES / "manifests" / "helm_template_output.yaml"
CHARTS = FIXTURES / "charts"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["review", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_finding_in_rendered_manifests_exits_1_with_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, str(MANIFESTS))
    assert status == 1
    lines = out.splitlines()
    assert lines[0].split() == ["SOURCE", "OBJECT", "RESULT", "DETAIL"]
    assert any("kube-system/ebs-csi-node" in line and "finding" in line for line in lines)
    assert any("monitoring/node-exporter" in line and "exempt" in line and "hostNetwork" in line for line in lines)
    assert any("nvidia-device-plugin-daemonset" in line and " ok " in f"{line} " for line in lines)
    assert "3 DaemonSet(s) reviewed in mode warn: 1 with a blanket NoExecute toleration, 1 exempt" in out


def test_clean_input_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, _ = run(capsys, str(FIXTURES / "daemonset_no_blanket_toleration.json"),
                       str(FIXTURES / "daemonset_node_exporter.json"), str(FIXTURES / "deployment_create.json"))
    assert status == 0


def test_json_output_lists_every_daemonset(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--output", "json", "--mode", "deny", str(MANIFESTS))
    report = json.loads(out)
    assert status == 1
    assert report["mode"] == "deny"
    by_name = {d["name"]: d for d in report["daemonsets"]}
    assert set(by_name) == {"ebs-csi-node", "node-exporter", "nvidia-device-plugin-daemonset"}
    ebs = by_name["ebs-csi-node"]
    assert ebs["finding"] is True
    assert ebs["action"] == "deny"
    assert ebs["blanket_tolerations"] == [{"operator": "Exists"}]
    assert "give it a key" in ebs["messages"][0]
    assert ebs["fix"]["id"] == "aws-ebs-csi-driver/node"
    assert by_name["node-exporter"]["exempt_reason"] == "hostNetwork"
    assert by_name["node-exporter"]["fix"] is None
    assert report["summary"] == {"daemonsets": 3, "findings": 1, "exempt": 1, "errors": 0}


def test_directory_and_stdin_are_read(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO((FIXTURES / "daemonset_istio_cni_node.json").read_text()))
    status, out, _ = run(capsys, "--output", "json", str(FIXTURES / "manifests"), "-")
    names = [d["name"] for d in json.loads(out)["daemonsets"]]
    assert status == 1
    assert "istio-cni-node" in names
    assert "ebs-csi-node" in names


def test_fix_prints_manifests_that_review_clean(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, out, err = run(capsys, "--fix", str(MANIFESTS))
    assert status == 0
    documents = list(yaml.safe_load_all(out))
    assert [d["kind"] for d in documents] == ["ServiceAccount", "DaemonSet", "DaemonSet", "DaemonSet", "Deployment"]
    ebs = documents[1]
    assert ebs["spec"]["template"]["spec"]["tolerations"] == [
        {"operator": "Exists", "effect": "NoSchedule"}, {"operator": "Exists", "effect": "PreferNoSchedule"}]
    assert STRIPPED_ANNOTATION in ebs["metadata"]["annotations"]
    assert "finding" in err  # the report goes to stderr, so stdout stays pure YAML
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(out)
    assert run(capsys, str(fixed))[0] == 0


def test_fix_turns_an_admission_review_into_the_mutated_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--fix", str(FIXTURES / "daemonset_istio_cni_node.json"),
                         str(FIXTURES / "daemonset_delete.json"))
    (document,) = list(yaml.safe_load_all(out))
    assert status == 0
    assert document["kind"] == "DaemonSet"
    assert {"operator": "Exists", "effect": "NoExecute"} not in document["spec"]["template"]["spec"]["tolerations"]


@pytest.mark.parametrize("content, message", [
    pytest.param("kind: [", "not valid YAML or JSON", id="bad-yaml"),
])
def test_unreadable_input_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str,
                                                message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    status, out, err = run(capsys, str(path))
    assert status == 2
    assert message in err
    assert err.count("\n") == 1
    assert out == ""


def _input_without_objects(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    if kind == "empty-stdin":  # what `helm template ... | review -` reads when helm fails
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))
        return "-"
    if kind == "yaml-but-no-kubernetes-object":
        (tmp_path / "notes.yaml").write_text("foo: bar\n---\n- 1\n")
    return str(tmp_path)


@pytest.mark.parametrize("kind", ["empty-stdin", "empty-folder", "yaml-but-no-kubernetes-object"])
def test_input_without_any_kubernetes_object_exits_2_with_one_line(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str) -> None:
    status, out, err = run(capsys, _input_without_objects(kind, tmp_path, monkeypatch))
    assert status == 2
    assert "no Kubernetes object" in err
    assert err.count("\n") == 1
    assert out == ""


def test_kubernetes_objects_without_a_daemonset_are_clean(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "cm.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    status, out, _ = run(capsys, str(path))
    assert status == 0
    assert "0 DaemonSet(s) reviewed" in out


@pytest.mark.parametrize("list_kind", ["List", "DaemonSetList"])
def test_a_list_of_any_kind_is_reviewed_item_by_item(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                     list_kind: str) -> None:
    # `kubectl get ds -A -o json` prints a v1 List; the API itself (`kubectl get --raw`) a DaemonSetList.
    rendered = FIXTURES / "manifests" / "helm_template_output.yaml"
    daemonsets = [d for d in yaml.safe_load_all(rendered.read_text()) if d and d.get("kind") == "DaemonSet"]
    path = tmp_path / "list.json"
    path.write_text(json.dumps({"apiVersion": "v1" if list_kind == "List" else "apps/v1", "kind": list_kind,
                                "items": daemonsets}))
    status, out, _ = run(capsys, "--output", "json", str(path))
    report = json.loads(out)
    assert status == 1
    assert [d["source"] for d in report["daemonsets"]] == [f"{path}[{i}]" for i in range(len(daemonsets))]
    assert [d["finding"] for d in report["daemonsets"]] == [True, False, False]


def test_an_empty_list_is_nothing_to_review_not_a_missing_input(capsys: pytest.CaptureFixture[str],
                                                                tmp_path: Path) -> None:
    # `kubectl get ds -o yaml` in a namespace without DaemonSets: the command worked, there is nothing to judge.
    path = tmp_path / "empty.yaml"
    path.write_text("apiVersion: v1\nkind: List\nitems: []\nmetadata: {resourceVersion: ''}\n")
    status, out, _ = run(capsys, str(path))
    assert status == 0
    assert "0 DaemonSet(s) reviewed" in out


def test_missing_path_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = run(capsys, str(tmp_path / "absent.yaml"))
    assert status == 2
    assert "no such file or directory" in err


def test_malformed_daemonset_is_reported_and_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "ds.yaml"
    path.write_text("apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\n"
                    "spec: {template: {spec: {tolerations: {operator: Exists}}}}\n")
    status, out, _ = run(capsys, str(path))
    assert status == 2
    assert "spec.template.spec.tolerations: expected a list" in out


@pytest.mark.slow
def test_python_m_webhook_behaves_like_the_console_script() -> None:
    args = ["review", "--output", "json", str(MANIFESTS)]
    module = subprocess.run([sys.executable, "-m", "webhook", *args], capture_output=True, text=True, timeout=60)
    script = Path(sys.executable).with_name("cilium-startup-guard")
    console = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=60)
    assert module.returncode == console.returncode == 1
    assert json.loads(module.stdout) == json.loads(console.stdout)


def test_kinds_from_the_config_file_add_one_array_per_kind(capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("kinds: [DaemonSet, Deployment, Job]\n")
    status, out, _ = run(capsys, "--output", "json", "--config", str(config),
                         str(CHARTS / "aws-ebs-csi-driver.yaml"), str(CHARTS / "secrets-store-csi-driver.yaml"))
    report = json.loads(out)
    assert status == 1
    assert [key for key in report if key not in ("mode", "summary")] == ["daemonsets", "deployments", "jobs"]
    (controller,) = report["deployments"]
    assert controller["name"] == "ebs-csi-controller"
    assert controller["fix"]["values"] == ["controller.tolerations"]
    assert list(controller) == list(report["daemonsets"][0])
    assert report["summary"] == {"daemonsets": 3, "deployments": 1, "jobs": 2, "findings": 6, "exempt": 0,
                                 "errors": 0}


def test_the_table_names_the_chart_values_that_fix_a_finding(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, str(CHARTS / "istio-cni.yaml"))
    assert "DaemonSet istio-system/istio-cni-node" in out
    assert "istio/cni chart values: drop {operator: Exists, effect: NoExecute} from tolerations" in out


def test_fix_strips_every_enabled_kind(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("kinds: [DaemonSet, StatefulSet]\n")
    status, out, _ = run(capsys, "--fix", "--config", str(config), str(CHARTS / "fluentd-statefulset.yaml"))
    (statefulset, _) = list(yaml.safe_load_all(out))
    assert status == 0
    assert statefulset["spec"]["template"]["spec"]["tolerations"] == [
        {"operator": "Exists", "effect": "NoSchedule"}, {"operator": "Exists", "effect": "PreferNoSchedule"}]
