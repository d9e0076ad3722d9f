"""`cilium-startup-guard recycle` against the fake API server: every kind of pod the docs name, a dry run and a real
one, the rate limit, the errors (exit 2, one line) and the calls it makes against its documented ClusterRole."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.docs_text import block_with
from tests.fakekube import FakeKube, rbac_of
from tests.objects import RECYCLE_RBAC
from tests.support import SilentServer, kubeconfig_for, unused_port
from tests.workloads import unmanaged_cluster
from webhook import cli
from webhook.config import PodScope
from webhook.controller.rules import Timings
from webhook.recycle import Outcome, RecycleOptions, find, recycle

pytestmark = pytest.mark.slow  # the fake API server

REPO = Path(__file__).resolve().parent.parent
DOCS = (REPO / "docs" / "review-and-audit.md").read_text()


def run(capsys: pytest.CaptureFixture[str], kubeconfig: Path | str, *args: str) -> tuple[int, str, str]:
    status = cli.main(["recycle", "--kubeconfig", str(kubeconfig), *args])
    out, err = capsys.readouterr()
    return status, out, err


def json_rows(out: str) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in out.splitlines()]
    return {f"{r['namespace']}/{r['name']}": r for r in rows}


def evicted(fake: FakeKube) -> list[str]:
    return sorted(r.path.split("/")[4] + "/" + r.path.split("/")[6] for r in fake.calls("POST", "/eviction$")
                  if fake.get("pods", r.path.split("/")[4], r.path.split("/")[6]) is None)


def one_line(err: str) -> str:
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


EXPECTED = {
    "shop/web-5d8f-a": ("ReplicaSet", "evicted"),
    "shop/db-0": ("StatefulSet", "evicted"),
    "shop/debug": (None, "reported-only"),
    "kube-system/etcd-node-1": ("Node", "reported-only"),
    "batch/report-x": ("Job", "reported-only"),
    "logging/log-agent-node-1": ("DaemonSet", "evicted"),
    "pay/api-7c9d-a": ("ReplicaSet", "refused-by-pdb"),
}


def test_a_real_run_evicts_what_its_owner_recreates_and_reports_the_rest(fake_kube, kubeconfig_path, capsys):
    unmanaged_cluster(fake_kube)
    status, out, err = run(capsys, kubeconfig_path, "--output", "json", "--rate", "600")
    rows = json_rows(out)
    assert {k: (r["owner_kind"], r["action"]) for k, r in rows.items()} == EXPECTED
    assert status == 1  # some remain
    assert err == ""
    assert evicted(fake_kube) == ["logging/log-agent-node-1", "shop/db-0", "shop/web-5d8f-a"]
    assert not fake_kube.calls("DELETE")  # evictions only
    assert "retry after 20 s" in rows["pay/api-7c9d-a"]["reason"]
    assert "kubelet runs it from a file" in rows["kube-system/etcd-node-1"]["reason"]
    assert "Job has finished" in rows["batch/report-x"]["reason"]
    assert 590 <= rows["shop/db-0"]["age_seconds"] <= 700
    for request in fake_kube.calls("POST", "/eviction$"):
        name = request.path.split("/")[6]
        assert request.body["deleteOptions"]["preconditions"]["uid"]  # never a pod recreated under its name
        assert fake_kube.calls("GET", f"/pods/{name}$")  # read again just before


def test_a_dry_run_lists_the_same_pods_and_writes_nothing(fake_kube, kubeconfig_path, capsys):
    unmanaged_cluster(fake_kube)
    status, out, _ = run(capsys, kubeconfig_path, "--output", "json", "--dry-run")
    rows = json_rows(out)
    assert {k: r["action"] for k, r in rows.items()} == {
        k: "would-evict" if action in ("evicted", "refused-by-pdb") else action for k, (_, action) in EXPECTED.items()}
    assert status == 1
    assert not [r for r in fake_kube.requests if r.method != "GET"]


def test_the_table_names_each_pod_and_sums_up(fake_kube, kubeconfig_path, capsys):
    unmanaged_cluster(fake_kube)
    status, out, _ = run(capsys, kubeconfig_path, "--rate", "600")
    lines = out.splitlines()
    assert lines[0].split() == ["POD", "NODE", "OWNER", "AGE", "ACTION", "REASON"]
    assert [line.split()[0] for line in lines[1:8]] == sorted(EXPECTED)
    assert lines[-1] == "7 unmanaged pod(s): 3 evicted, 1 refused by a PodDisruptionBudget, 3 reported only"
    assert status == 1


def test_the_table_is_the_documented_example(fake_kube, kubeconfig_path, capsys):
    unmanaged_cluster(fake_kube)
    _, out, _ = run(capsys, kubeconfig_path, "--rate", "600")
    assert out == _docs_block("refused-by-pdb", "")


def test_include_bare_evicts_a_bare_pod_but_never_a_mirror(fake_kube, kubeconfig_path, capsys):
    unmanaged_cluster(fake_kube)
    _, out, _ = run(capsys, kubeconfig_path, "--output", "json", "--include-bare", "--namespace", "shop",
                    "--namespace", "kube-system")
    rows = json_rows(out)
    assert (rows["shop/debug"]["action"], rows["kube-system/etcd-node-1"]["action"]) == ("evicted", "reported-only")


def test_nothing_unmanaged_left_exits_0(fake_kube, kubeconfig_path, capsys):
    unmanaged_cluster(fake_kube)
    status, out, _ = run(capsys, kubeconfig_path, "--selector", "app in (web-5d8f-a,db-0)", "--rate", "600")
    assert status == 0
    assert out.splitlines()[-1] == "2 unmanaged pod(s): 2 evicted, 0 refused by a PodDisruptionBudget, 0 reported only"
    status, out, _ = run(capsys, kubeconfig_path, "--selector", "app in (web-5d8f-a,db-0)")
    assert (status, out) == (0, "no unmanaged pods in scope\n")  # they are gone


def test_a_rebooted_node_counts_from_its_agent_being_ready_again(fake_kube, kubeconfig_path, capsys):
    unmanaged_cluster(fake_kube)
    rows = json_rows(run(capsys, kubeconfig_path, "--output", "json", "--dry-run", "--namespace", "shop")[1])
    assert "shop/web-5d8f-e" not in rows  # its agent has been ready 10 s: within the grace period
    rows = json_rows(run(capsys, kubeconfig_path, "--output", "json", "--dry-run", "--namespace", "shop",
                         "--grace-period", "5")[1])
    assert rows["shop/web-5d8f-e"]["action"] == "would-evict"


def test_scope_flags_list_only_the_scope(fake_kube, kubeconfig_path, capsys):
    unmanaged_cluster(fake_kube)
    rows = json_rows(run(capsys, kubeconfig_path, "--output", "json", "--dry-run", "--exclude-namespace", "shop",
                         "--exclude-namespace", "kube-system")[1])
    assert set(rows) == {"batch/report-x", "logging/log-agent-node-1", "pay/api-7c9d-a"}
    pod_lists = [r for r in fake_kube.calls("GET", "^/api/v1/pods$") if "watch" not in r.query]
    assert pod_lists[-1].query["fieldSelector"] == ("status.phase=Running,spec.hostNetwork=false,"
                                                    "metadata.namespace!=shop,metadata.namespace!=kube-system")
    run(capsys, kubeconfig_path, "--dry-run", "--namespace", "pay", "--selector", "app=api-7c9d-a")
    assert fake_kube.calls("GET", "^/api/v1/namespaces/pay/pods$")[-1].query["labelSelector"] == "app=api-7c9d-a"
    assert fake_kube.calls("GET", "^/apis/cilium.io/v2/namespaces/pay/ciliumendpoints$")


def test_the_config_files_scope_applies_and_flags_win(fake_kube, kubeconfig_path, capsys, tmp_path):
    unmanaged_cluster(fake_kube)
    config = tmp_path / "config.yaml"
    config.write_text("controller: {unmanaged: {namespaces: [pay]}}\n", encoding="utf-8")
    rows = json_rows(run(capsys, kubeconfig_path, "--output", "json", "--dry-run", "--config", str(config))[1])
    assert set(rows) == {"pay/api-7c9d-a"}
    rows = json_rows(run(capsys, kubeconfig_path, "--output", "json", "--dry-run", "--config", str(config),
                         "--namespace", "batch")[1])
    assert set(rows) == {"batch/report-x"}


def test_every_list_is_paginated(fake_kube, kube_client):
    unmanaged_cluster(fake_kube)
    find(kube_client, RecycleOptions(timeout=5, page_size=2), time.time())
    lists = [r for r in fake_kube.requests if rbac_of(r)[2] == "list"]
    assert {r.path for r in lists} == {"/api/v1/pods", "/api/v1/nodes", "/api/v1/namespaces/kube-system/pods",
                                       "/apis/cilium.io/v2/ciliumendpoints"}
    assert all(r.query.get("limit") == "2" for r in lists)
    assert len([r for r in lists if r.path == "/api/v1/pods"]) >= 2


def test_the_rate_limit_holds(fake_kube, kube_client):
    unmanaged_cluster(fake_kube)
    options = RecycleOptions(scope=PodScope(namespaces=("shop",)), timings=Timings(grace_period=60), rate=1,
                             include_bare=True, timeout=5)
    now = [time.time()]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    rows = list(recycle(kube_client, options, find(kube_client, options, now[0]), clock=lambda: now[0],
                        sleep=sleep))
    assert [r.action for r in rows] == [Outcome.EVICTED] * 3  # db-0, debug, web-5d8f-a
    assert [round(s) for s in slept] == [60, 60]  # one a minute, burst one


# --- errors: exit 2, one line ---


def test_a_cluster_without_the_ciliumendpoint_resource_is_an_error(fake_kube, kubeconfig_path, capsys):
    unmanaged_cluster(fake_kube)
    fake_kube.remove_resource("ciliumendpoints.cilium.io")
    status, out, err = run(capsys, kubeconfig_path)
    assert (status, out) == (2, "")
    assert "does not serve ciliumendpoints.cilium.io/v2 (is Cilium installed?)" in one_line(err)


def test_ciliumendpoints_that_go_away_after_discovery_are_the_same_error(fake_kube, kubeconfig_path, capsys):
    unmanaged_cluster(fake_kube)
    fake_kube.fail("GET", "/ciliumendpoints$", status=404, times=None)  # discovery still lists the resource
    status, out, err = run(capsys, kubeconfig_path)
    assert (status, out) == (2, "")
    assert "does not serve ciliumendpoints.cilium.io/v2 (is Cilium installed?)" in one_line(err)


def test_no_permission_exits_2(fake_kube, kubeconfig_path, capsys):
    unmanaged_cluster(fake_kube)
    fake_kube.fail("GET", "^/apis/apps/v1/namespaces/shop/replicasets/", 403, times=None)
    status, _, err = run(capsys, kubeconfig_path, "--dry-run")
    assert status == 2
    assert one_line(err).startswith("cilium-startup-guard recycle: error: no permission to get "
                                    "replicasets.apps shop/web-5d8f")


def test_an_unreachable_api_server_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    status, _, err = run(capsys, kubeconfig_for(f"http://127.0.0.1:{unused_port()}", tmp_path / "kubeconfig"))
    assert status == 2
    assert one_line(err).startswith("cilium-startup-guard recycle: error: cannot reach the Kubernetes API server")


def test_a_server_that_never_answers_is_bounded_by_the_timeout(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with SilentServer() as server:
        started = time.monotonic()
        status, _, err = run(capsys, kubeconfig_for(server.url, tmp_path / "kubeconfig"), "--timeout", "0.5")
        assert server.connections == 1  # not retried
    assert time.monotonic() - started < 2.0
    assert status == 2
    assert "within 0.5 s" in one_line(err)


def test_a_failed_eviction_stops_with_the_rows_so_far_and_exit_2(fake_kube, kubeconfig_path, capsys):
    unmanaged_cluster(fake_kube)
    fake_kube.fail("POST", "/pods/web-5d8f-a/eviction$", 500, times=None)
    status, out, err = run(capsys, kubeconfig_path, "--output", "json", "--namespace", "shop", "--rate", "600")
    assert status == 2
    assert list(json_rows(out)) == ["shop/db-0", "shop/debug"]
    assert "evict pod shop/web-5d8f-a" in one_line(err)


# --- RBAC: the calls made are exactly the documented ClusterRole ---


def test_api_calls_are_exactly_the_documented_clusterrole(fake_kube, kubeconfig_path, capsys):
    unmanaged_cluster(fake_kube)
    run(capsys, kubeconfig_path, "--rate", "600")
    used = {rbac_of(r) for r in fake_kube.requests} - {("nonResourceURL", "/apis/cilium.io/v2", "get")}
    role = next(d for d in yaml.safe_load_all(_docs_block("name: cilium-startup-guard-recycle"))
                if d["kind"] == "ClusterRole")
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert used == granted == RECYCLE_RBAC


def _docs_block(marker: str, language: str = "yaml") -> str:
    return block_with(DOCS, marker, language)


def test_the_documented_json_line_has_the_fields_of_a_row(fake_kube, kubeconfig_path, capsys):
    unmanaged_cluster(fake_kube)
    row = next(iter(json_rows(run(capsys, kubeconfig_path, "--output", "json", "--dry-run")[1]).values()))
    assert list(json.loads(_docs_block('"age_seconds"', "json"))) == list(row)


def test_recycle_takes_its_documented_flags():
    [commands] = [a for a in cli.build_parser()._actions if a.dest == "command"]
    flags = {s for a in commands.choices["recycle"]._actions for s in a.option_strings} - {"-h", "--help"}
    assert flags == {"--kubeconfig", "--context", "--config", "--cilium-namespace", "--cilium-agent-selector",
                     "--namespace", "--exclude-namespace", "--selector", "--dry-run", "--rate", "--grace-period",
                     "--include-bare", "--output", "--timeout"}
