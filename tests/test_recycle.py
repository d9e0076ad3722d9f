"""`recycle`'s report and its walk over the candidates without an API server: dry runs and reported pods make no
call. The calls themselves are in test_cli_recycle.py."""

from __future__ import annotations

import json

import pytest

from webhook.cilium import AgentState
from webhook.controller.rules import Action, NodeFacts, Plan, PodFacts, Situation
from webhook.recycle import (
    Candidate,
    Outcome,
    RecycleOptions,
    Row,
    exit_status,
    recycle,
    render_json_line,
    render_table,
)
from webhook.unmanaged import Owner, OwnerFacts

NOW = 1_000_000.0
WEB = Owner("ReplicaSet", "web-5d8f", "rs")
RECREATING = OwnerFacts(WEB, verdict="")


def row(name: str, action: Outcome, reason: str = "no CiliumEndpoint past the grace period",
        owner: Owner = WEB, age: float | None = 600) -> Row:
    return Row("shop", name, "node-1", owner, age, action, reason)


def candidate(name: str, step: Plan, owner: OwnerFacts = RECREATING) -> Candidate:
    pod = PodFacts("shop", name, f"uid-{name}", "node-1", "Running", "10.0.0.5", started_at=NOW - 90)
    return Candidate(Situation(pod=pod, node=NodeFacts(AgentState.READY, NOW - 3600)), owner, step)


def test_json_line_has_the_documented_fields():
    line = render_json_line(row("web-5d8f-a", Outcome.EVICTED, age=612.7))
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == {"namespace": "shop", "name": "web-5d8f-a", "node": "node-1",
                                "owner_kind": "ReplicaSet", "owner_name": "web-5d8f", "age_seconds": 612,
                                "action": "evicted", "reason": "no CiliumEndpoint past the grace period"}


def test_json_line_of_a_bare_pod_has_null_owner():
    assert json.loads(render_json_line(row("debug", Outcome.REPORTED, "bare", Owner())))["owner_kind"] is None


def test_table_has_a_row_per_pod_and_a_summary():
    lines = render_table([row("web-5d8f-a", Outcome.EVICTED, age=7300),
                          row("debug", Outcome.REPORTED, "no owner", Owner(), age=45),
                          row("api-1", Outcome.REFUSED, "budget", age=None)], dry_run=False).splitlines()
    assert lines[0].split() == ["POD", "NODE", "OWNER", "AGE", "ACTION", "REASON"]
    assert lines[1].split()[:5] == ["shop/web-5d8f-a", "node-1", "ReplicaSet/web-5d8f", "2h", "evicted"]
    assert lines[2].split() == ["shop/debug", "node-1", "-", "45s", "reported-only", "no", "owner"]
    assert lines[3].split()[3:5] == ["-", "refused-by-pdb"]
    assert lines[-1] == "3 unmanaged pod(s): 1 evicted, 1 refused by a PodDisruptionBudget, 1 reported only"


def test_an_empty_table_says_so():
    assert render_table([], dry_run=True) == "no unmanaged pods in scope\n"


@pytest.mark.parametrize("rows, status", [
    pytest.param([], 0, id="nothing-unmanaged"),
    pytest.param([row("a", Outcome.EVICTED), row("b", Outcome.EVICTED)], 0, id="all-evicted"),
    pytest.param([row("a", Outcome.EVICTED), row("b", Outcome.REFUSED)], 1, id="refused-remains"),
    pytest.param([row("a", Outcome.REPORTED)], 1, id="reported-remains"),
    pytest.param([row("a", Outcome.WOULD_EVICT)], 1, id="dry-run-remains"),
])
def test_exit_status_is_0_only_when_nothing_unmanaged_is_left(rows, status):
    assert exit_status(rows) == status


def test_a_dry_run_evicts_nothing_and_calls_nothing():
    candidates = [candidate("web-5d8f-a", Plan(Action.RECYCLE, "unmanaged")),
                  candidate("debug", Plan(Action.REPORT, "bare-pod"), OwnerFacts())]
    rows = list(recycle(None, RecycleOptions(dry_run=True), candidates, clock=lambda: NOW))  # type: ignore[arg-type]
    assert [(r.name, r.action) for r in rows] == [("web-5d8f-a", Outcome.WOULD_EVICT), ("debug", Outcome.REPORTED)]
    assert "--include-bare" in rows[1].reason
    assert rows[0].age == 90
