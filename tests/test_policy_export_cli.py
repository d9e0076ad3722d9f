"""`cilium-startup-guard policy export`: YAML on stdout from the configuration, one line and exit 2 otherwise."""

from __future__ import annotations

import yaml

from webhook import cli
from webhook.enums import Mode
from webhook.export import Form, export
from webhook.policy import PolicyConfig


def run(capsys, *args: str) -> tuple[int, str, str]:
    status = cli.main(["policy", "export", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_prints_the_exported_objects_as_yaml(capsys):
    status, out, err = run(capsys, "--format", "vap", "--mode", "deny")
    assert (status, err) == (0, "")
    assert list(yaml.safe_load_all(out)) == export(PolicyConfig(mode=Mode.DENY), Form.VAP)


def test_reads_the_configuration_file(capsys, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("mode: strip\nreadinessGate:\n  conditionType: example.com/ready\n")
    status, out, _ = run(capsys, "--format", "map", "--config", str(config), "--api-version", "v1beta1")
    assert status == 0
    strip, strip_binding, gate, gate_binding = yaml.safe_load_all(out)
    assert {o["apiVersion"] for o in (strip, strip_binding, gate, gate_binding)} == {
        "admissionregistration.k8s.io/v1beta1"}
    assert (strip_binding["kind"], gate_binding["kind"]) == ("MutatingAdmissionPolicyBinding",) * 2
    assert "example.com/ready" in gate["spec"]["mutations"][0]["jsonPatch"]["expression"]
    assert out.startswith(f"# cilium-startup-guard policy export --format map --mode strip, from {config}\n")


def test_strip_as_a_vap_is_refused_in_one_line(capsys):
    status, out, err = run(capsys, "--format", "vap", "--mode", "strip")
    assert (status, out) == (2, "")
    assert err.count("\n") == 1 and "--format map" in err


def test_a_bad_configuration_is_one_line(capsys, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("mode: block\n")
    status, out, err = run(capsys, "--format", "vap", "--config", str(config))
    assert (status, out) == (2, "")
    assert err.count("\n") == 1 and "mode" in err


def test_docs_state_the_maps_list_limit():
    from pathlib import Path

    from webhook.export import MAX_TOLERATIONS

    docs = (Path(__file__).parents[1] / "docs" / "policy-export.md").read_text()
    assert f"fixed list of {MAX_TOLERATIONS} indices" in docs
