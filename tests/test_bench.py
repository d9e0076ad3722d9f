"""bench/run.py in a smoke run: it runs to the end and every correctness check passes.

No timing figure is asserted: they depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).parent.parent
RUN = ROOT / "bench" / "run.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("generator", [
    "python",
    pytest.param("wrk", marks=pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")),
])
def test_smoke_run_checks_every_answer_and_loads_both_servers(tmp_path, generator):
    output = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--duration", "0.3", "--warmup", "0", "--generator", generator,
         "--output", str(output)],
        capture_output=True, text=True, timeout=180, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(output.read_text())
    assert result["ok"] is True
    assert sorted(result["reviews"]) == ["daemonset", "pod"]
    for review in result["reviews"].values():
        assert review["checked"] == {"webhook": 10, "floor": 5}  # webhook: each review and its second pass
        for run in review["runs"]:
            for name in ("webhook", "floor"):
                steps = run[name]["steps"]
                assert sorted(steps, key=int) == ["1", "16", "64"]
                assert all(step["requests"] > 0 and step["failures"] == 0 for step in steps.values())
            assert run["webhook"]["decision_lines"] >= sum(s["requests"] for s in run["webhook"]["steps"].values())
    assert "daemonset review" in done.stdout and "pod review" in done.stdout


def test_check_refuses_an_answer_with_another_uid():
    bench = _bench_module()
    with pytest.raises(bench.CheckFailed, match="not echoed"):
        bench._check_allowed({"uid": "other", "allowed": True}, "mine")


@pytest.mark.parametrize("review, gates_at", [
    pytest.param("daemonset", "/spec/template/spec/readinessGates", id="keeps-the-blanket-toleration"),
    pytest.param("pod", "/spec/readinessGates", id="pod-without-the-gate-label"),
])
def test_check_refuses_a_patch_that_only_adds_the_gate(tmp_path, review, gates_at):
    bench = _bench_module()
    ws = bench.Workspace.make(tmp_path, bench.REVIEWS[review])
    gate_only = [{"op": "add", "path": gates_at, "value": [{"conditionType": "startupguard.io/cilium-ready"}]}]
    answer = {"uid": "u", "allowed": True, "patchType": "JSONPatch",
              "patch": base64.b64encode(orjson.dumps(gate_only)).decode()}
    with pytest.raises(bench.CheckFailed):
        bench._check_patch(answer, "u", ws)
