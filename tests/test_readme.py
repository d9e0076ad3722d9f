"""The README's promises that can drift: the quick-start commands against CI, its size, and its links."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tests.docs_text import ROOT, broken_links, code_blocks, paths_in_code

README_PATH = ROOT / "README.md"
README = README_PATH.read_text(encoding="utf-8")
# A README a newcomer reads to the end: what and why, the quick start, a minimal install, a table of contents.
MAX_README_BYTES = 12 * 1024


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = next(b.strip() for b in code_blocks(README, "sh") if "pytest" in b)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_serve_command_installs_and_serves() -> None:
    serve_command = next(b.strip() for b in code_blocks(README, "sh") if "serve" in b)
    assert serve_command.startswith("python3 -m venv .venv && .venv/bin/pip install")
    assert serve_command.endswith("cilium-startup-guard serve")


def test_readme_stays_under_12_kib() -> None:
    assert len(README.encode("utf-8")) <= MAX_README_BYTES


def test_readme_links_every_docs_page() -> None:
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)", README))
    assert linked == {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")}


def test_every_link_in_the_readme_resolves() -> None:
    assert broken_links(README_PATH) == []


def test_files_named_in_readme_commands_exist() -> None:
    paths = paths_in_code(README)
    assert "tests/fixtures/daemonset_ebs_csi_node.json" in paths
    assert [p for p in paths if not (ROOT / p).exists()] == []


def test_readme_diagram_follows_the_race_in_order() -> None:
    (diagram,) = code_blocks(README, "mermaid")
    steps = ["agent-not-ready", "Cilium agent ready", "CiliumEndpoint", "startupguard.io/cilium-ready"]
    positions = [diagram.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), positions


def test_the_fast_lane_command_selects_by_the_registered_slow_marker() -> None:
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"].get("markers", [])
    assert '-m "not slow"' in README
    assert any(m.split(":")[0].strip() == "slow" for m in markers), markers


def test_quick_start_calls_the_review_endpoint_that_serve_suggests(capsys: pytest.CaptureFixture[str]) -> None:
    from webhook.cli.serve import _print_how_to_call

    documented = re.findall(r"--data @\S+ https://localhost:8443(/\w+)", README)
    _print_how_to_call("127.0.0.1", Path("certs/ca.crt"), 8443)
    suggested = re.findall(r"--data @\S+ https://localhost:8443(/\w+)", capsys.readouterr().err)
    assert documented and documented[0] == suggested[0] == "/validate"
