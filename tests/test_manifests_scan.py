"""checkov (a Kubernetes security scanner) over every rendered install, kustomize overlays and Helm chart variants
alike: no finding left open, every skip justified.

One checkov run over all installs; it starts a process, so these tests are slow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.installs import NAMES

pytestmark = pytest.mark.slow

pytestmark = pytest.mark.slow  # checkov

CHECKOV = Path(sys.executable).with_name("checkov")
SKIP_ANNOTATION = "checkov.io/skip"


@pytest.fixture(scope="module")
def rendered(rendered_installs) -> dict[str, list[dict[str, Any]]]:
    return rendered_installs


@pytest.fixture(scope="module")
def scan(rendered, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """checkov's results for the manifests as rendered ("annotated") and with every skip annotation removed
    ("bare"), in one run; the second tells whether each skip still hides a real finding."""
    out = tmp_path_factory.mktemp("rendered")
    for variant, strip in (("annotated", False), ("bare", True)):
        (out / variant).mkdir()
        for install, objects in rendered.items():
            documents = [_without_skips(o) if strip else o for o in objects]
            (out / variant / f"{install}.yaml").write_text(yaml.safe_dump_all(documents, sort_keys=False))
    # --skip-download: no network here, and none needed for the built-in Kubernetes checks.
    done = subprocess.run([str(CHECKOV), "--directory", str(out), "--framework", "kubernetes", "--skip-download",
                           "--output", "json", "--soft-fail"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert isinstance(report, dict), "checkov found nothing to scan"
    assert report["summary"]["parsing_errors"] == 0
    results: dict[str, dict[str, list[dict[str, Any]]]] = {"annotated": {}, "bare": {}}
    for outcome in ("passed_checks", "failed_checks", "skipped_checks"):
        for result in report["results"][outcome]:
            variant = Path(result["file_path"]).parent.name
            results[variant].setdefault(outcome, []).append(result)
    return results


def _without_skips(obj: dict[str, Any]) -> dict[str, Any]:
    annotations = {k: v for k, v in obj["metadata"].get("annotations", {}).items()
                   if not k.startswith(SKIP_ANNOTATION)}
    metadata = {k: v for k, v in obj["metadata"].items() if k != "annotations"}
    if annotations:
        metadata["annotations"] = annotations
    return {**obj, "metadata": metadata}


def _finding(result: dict[str, Any]) -> tuple[str, str, str]:
    return result["check_id"], result["resource"], Path(result["file_path"]).stem


def test_checkov_scanned_every_install(scan):
    scanned = {Path(r["file_path"]).stem for r in scan["annotated"]["passed_checks"]}
    assert scanned == set(NAMES)


def test_checkov_finds_nothing_unjustified(scan):
    failed = [f"{r['check_id']} {r['resource']} ({Path(r['file_path']).stem}): {r['check_name']}"
              for r in scan["annotated"].get("failed_checks", [])]
    assert failed == []


def test_every_checkov_skip_gives_a_reason(scan):
    for result in scan["annotated"]["skipped_checks"]:
        reason = result["check_result"].get("suppress_comment") or ""
        assert len(reason.split()) >= 5, f"{result['check_id']} on {result['resource']}: {reason!r}"


def test_every_checkov_skip_hides_a_real_finding(scan):
    # checkov reports a skip whether or not the check would fail; a skip that hides nothing would hide the
    # next real finding of that check, so it has to go.
    skipped = {_finding(r) for r in scan["annotated"]["skipped_checks"]}
    failing_without_skips = {_finding(r) for r in scan["bare"].get("failed_checks", [])}
    assert skipped - failing_without_skips == set()
    assert failing_without_skips - skipped == set()
