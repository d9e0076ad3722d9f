"""docs/ against the code: what the pages document is what the code does."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.docs_text import block_with, doc, section
from tests.support import FIXTURES
from webhook.admission import Endpoint, build_response, decide, parse_review
from webhook.policy import DEFAULT_GATE_CONDITION, DEFAULT_GATE_LABEL, Mode, PolicyConfig

# --- policy.md ---


def test_documented_ebs_csi_patch_is_what_strip_mode_returns() -> None:
    documented = json.loads(block_with(doc("policy.md"), "tolerations/0", "json"))
    review = parse_review((FIXTURES / "daemonset_ebs_csi_node.json").read_bytes())
    response = build_response(review.uid, decide(review, PolicyConfig(mode=Mode.STRIP), Endpoint.MUTATE),
                              Endpoint.MUTATE)["response"]
    assert json.loads(base64.b64decode(response["patch"])) == documented



# --- install.md ---


def uninstall_jq_filter() -> str:
    uninstall = section(doc("install.md"), "## Uninstall")
    return re.search(r"jq -c '(.*?)' \|", uninstall, flags=re.DOTALL).group(1)  # type: ignore[union-attr]


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
