"""bench/attacks.py in a reduced run: it runs to the end, and the server's defences show in what it reports.

Only counts are asserted (statuses, connections closed by reason, the probe's failures), never a timing or a
memory figure: those depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent


def test_reduced_attacks_meet_the_limits_and_leave_the_probe_unharmed(tmp_path):
    output = tmp_path / "attacks.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "attacks.py"), "--only", "big-head,pipeline-flood,huge-namespace",
         "--scale", "0.1", "--settle", "0.5", "--output", str(output)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    results = {r["attack"]: r for r in json.loads(output.read_text())["results"]}
    assert results["big-head"]["attacker"]["statuses"] == {"431": 10}
    flood = results["pipeline-flood"]
    closed = flood["metrics"]['connections_closed_total{reason="pipeline_limit"}']
    assert closed == flood["attacker"]["connections_tried"]
    assert results["huge-namespace"]["attacker"]["longest_log_line"] < 2048
    assert all(r["probe"]["failures"] == 0 and r["probe"]["answers"] > 0 for r in results.values())
    assert "| big-head |" in done.stdout  # the printed table
