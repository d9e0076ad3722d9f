"""The README's promises that can drift: the CI command and the documented EBS CSI patch."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from tests.support import FIXTURES
from webhook.admission import Endpoint, build_response, decide, parse_review
from webhook.policy import Mode, PolicyConfig

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
