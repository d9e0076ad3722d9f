"""bench/scale.py in a smoke run: it runs every scenario to the end and its correctness checks pass.

No timing figure is asserted: they depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_smoke_run_sets_every_condition_and_loses_no_update_across_faults(tmp_path):
    output = tmp_path / "scale.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "scale.py"), "--quick", "--output", str(output)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(output.read_text())
    assert result["ok"] is True and result["exit_code"] == 0
    assert result["floor"]["failures"] == 0 and result["floor"]["writes"] == result["burst"]["count"]
    for scenario in ("burst", "trickle", "throttled", "faults"):
        assert result[scenario]["missing"] == 0, scenario
    assert (result["faults"]["lost_updates"], result["faults"]["false_conditions"]) == (0, 0)
    assert result["throttled"]["retried_sooner_than_retry_after"] == 0
    assert result["unmanaged"]["evictions"] > 0
    assert result["unmanaged"]["reads_per_eviction"] <= 3
    assert "floor:" in done.stdout and "burst:" in done.stdout
