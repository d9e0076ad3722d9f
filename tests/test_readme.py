"""The README's promises that can drift: the CI command and the documented EBS CSI patch."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import FIXTURES
from webhook.admission import Endpoint, build_response, decide, parse_review
from webhook.policy import DEFAULT_GATE_CONDITION, DEFAULT_GATE_LABEL, Mode, PolicyConfig

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = next(b.strip() for b in code_blocks("sh") if "pytest" in b)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_serve_command_installs_and_serves() -> None:
    serve_command = next(b.strip() for b in code_blocks("sh") if "serve" in b)
    assert serve_command.startswith("python3 -m venv .venv && .venv/bin/pip install")
    assert serve_command.endswith("cilium-startup-guard serve")


def test_documented_ebs_csi_patch_is_what_strip_mode_returns() -> None:
    documented = json.loads(next(b for b in code_blocks("json") if "tolerations/0" in b))
    review = parse_review((FIXTURES / "daemonset_ebs_csi_node.json").read_bytes())
    response = build_response(review.uid, decide(review, PolicyConfig(mode=Mode.STRIP), Endpoint.MUTATE),
                              Endpoint.MUTATE)["response"]
    assert json.loads(base64.b64decode(response["patch"])) == documented


def uninstall_jq_filter() -> str:
    section = README[README.index("## Uninstall"):README.index("## Running the webhook")]
    return re.search(r"jq -c '(.*?)' \|", section, flags=re.DOTALL).group(1)  # type: ignore[union-attr]


def test_uninstall_filter_names_the_default_gate_and_label() -> None:
    jq_filter = uninstall_jq_filter()
    assert jq_filter.count(f'"{DEFAULT_GATE_CONDITION}"') == 2
    assert f'"{DEFAULT_GATE_LABEL}": null' in jq_filter


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
def test_uninstall_filter_removes_only_our_gate(tmp_path: Path) -> None:
    ours, other = {"conditionType": DEFAULT_GATE_CONDITION}, {"conditionType": "example.com/ready"}
    daemonsets = []
    for name, gates in (("both", [other, ours]), ("ours", [ours]), ("untouched", [other])):
        obj = json.loads((FIXTURES / "daemonset_ebs_csi_node.json").read_text())["request"]["object"]
        obj["metadata"]["name"] = name
        obj["spec"]["template"]["spec"]["readinessGates"] = gates
        daemonsets.append(obj)
    listing = tmp_path / "daemonsets.json"
    listing.write_text(json.dumps({"items": daemonsets}))
    out = subprocess.run(["jq", "-c", uninstall_jq_filter(), str(listing)], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    patches = {item["name"]: item["patch"] for item in map(json.loads, out.splitlines())}
    assert set(patches) == {"both", "ours"}
    assert patches["both"]["spec"]["template"]["spec"]["readinessGates"] == [other]
    assert patches["ours"]["spec"]["template"]["spec"]["readinessGates"] == []
    assert patches["ours"]["spec"]["template"]["metadata"]["labels"] == {DEFAULT_GATE_LABEL: None}


def test_quick_start_calls_the_review_endpoint_that_serve_suggests(capsys: pytest.CaptureFixture[str]) -> None:
    from webhook.cli.serve import _print_how_to_call

    documented = re.findall(r"--data @\S+ https://localhost:8443(/\w+)", README)
    _print_how_to_call("127.0.0.1", Path("certs/ca.crt"), 8443)
    suggested = re.findall(r"--data @\S+ https://localhost:8443(/\w+)", capsys.readouterr().err)
    assert documented and documented[0] == suggested[0] == "/validate"
