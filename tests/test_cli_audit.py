"""`cilium-startup-guard audit` against the fake API server, with DaemonSets from the recorded fixtures."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakekube import FakeKube, rbac_of
from tests.objects import AUDIT_RBAC, agent_pod, daemonset_pod, endpoint, node, with_taints, workload_pod
from tests.support import SilentServer, kubeconfig_for, load_fixture, unused_port
from tests.workloads import unmanaged_cluster
from webhook import cli
from webhook.audit import AuditOptions, collect
from webhook.policy import CILIUM_TAINT_KEY

REPO = Path(__file__).resolve().parent.parent
# The audit is documented here; the tests below keep its example, schema and ClusterRole in step with the code.
DOCS = (REPO / "docs" / "review-and-audit.md").read_text()
GPU = {"key": "dedicated", "value": "gpu", "effect": "NoExecute"}
# The list calls of an audit: DaemonSets, pods, nodes, Cilium agent pods, CiliumEndpoints.
LIST_PATHS = ("/apis/apps/v1/daemonsets", "/api/v1/pods", "/api/v1/nodes", "/api/v1/namespaces/kube-system/pods",
              "/apis/cilium.io/v2/ciliumendpoints")


def daemonset(fake: FakeKube, fixture: str, **metadata: str) -> dict[str, Any]:
    """A recorded fixture's DaemonSet (request.object) stored in the fake API server, which gives it a uid."""
    ds = copy.deepcopy(load_fixture(fixture)["request"]["object"])
    ds["metadata"].update(metadata)
    return fake.create(ds)


def pods(fake: FakeKube, ds: dict[str, Any], *nodes: str, suffix: str = "", **changes: Any) -> list[dict[str, Any]]:
    name = ds["metadata"]["name"]
    return [fake.create(daemonset_pod(ds, f"{name}-{n}{suffix}", n, **changes)) for n in nodes]


def example_cluster(fake: FakeKube) -> None:
    """Three nodes: node-1 and node-2 have a ready Cilium agent, node-3 still has the Cilium taint and an agent
    that is not ready. DaemonSets from the fixtures, each with a pod per node."""
    fake.create(node("node-1"))
    fake.create(with_taints(node("node-2"), GPU))
    fake.create(with_taints(node("node-3", tainted=True), GPU))
    fake.create(agent_pod("node-1"))
    fake.create(agent_pod("node-2"))
    fake.create(agent_pod("node-3", ready=False))

    ebs = daemonset(fake, "daemonset_ebs_csi_node.json")
    managed, _, _ = pods(fake, ebs, "node-1", "node-2", "node-3")  # node-2: unmanaged; node-3: agent not ready
    fake.create(endpoint(managed))

    istio = daemonset(fake, "daemonset_istio_cni_node.json")
    _, replaced, _ = pods(fake, istio, "node-1", "node-2", "node-3")  # node-1: unmanaged
    stale = endpoint(replaced)
    stale["metadata"]["ownerReferences"][0]["uid"] = "the-pod-this-one-replaced"  # node-2: unmanaged too
    fake.create(stale)
    pods(fake, istio, "node-1", suffix="-old", terminating=True)  # leaving: not counted
    pods(fake, istio, "node-2", suffix="-new", phase="Pending")  # not running: not counted

    exporter = daemonset(fake, "daemonset_node_exporter.json")
    pods(fake, exporter, "node-1", "node-2", "node-3", host_network=True)  # Cilium never manages these
    daemonset(fake, "daemonset_cilium_agent.json")
    daemonset(fake, "daemonset_exempted_label.json")
    # An agent its owner opted out on purpose. Not named after a real chart: the real amazon-cloudwatch
    # fluent-bit runs on the host network, so it would be exempt as hostNetwork, not by opt-out.
    opted_out = daemonset(fake, "daemonset_opt_out.json", namespace="observability", name="log-agent")
    for pod in pods(fake, opted_out, "node-1", "node-2"):
        fake.create(endpoint(pod))
    daemonset(fake, "daemonset_tolerates_cilium_taint.json", namespace="storage")
    daemonset(fake, "daemonset_already_mutated.json", name="ebs-csi-node-stripped")
    daemonset(fake, "daemonset_no_blanket_toleration.json")

    # Pods of other owners are listed too: a Deployment's, a bare one, a static pod's mirror.
    fake.create(workload_pod("web-5d8f-x", "shop", "node-1", owner=("ReplicaSet", "web-5d8f", "rs-uid")))
    fake.create(workload_pod("debug", "shop", "node-2"))
    fake.create(workload_pod("etcd-node-1", "kube-system", "node-1", mirror=True))
    fake.create(workload_pod("ingress-1", "shop", "node-1", host_network=True))  # never managed by Cilium


def clean_cluster(fake: FakeKube) -> None:
    fake.create(node("node-1"))
    fake.create(agent_pod("node-1"))
    for fixture in ("daemonset_node_exporter.json", "daemonset_no_blanket_toleration.json",
                    "daemonset_opt_out.json"):
        daemonset(fake, fixture)


def audit(capsys: pytest.CaptureFixture[str], kubeconfig: Path | str, *args: str) -> tuple[int, str, str]:
    status = cli.main(["audit", "--kubeconfig", str(kubeconfig), *args])
    out, err = capsys.readouterr()
    return status, out, err


def one_line(err: str) -> str:
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def docs_block(marker: str, language: str = "") -> str:
    """The audit docs' fenced code block in `language` (none: a plain block) that contains `marker`."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", DOCS, flags=re.DOTALL | re.MULTILINE)
    return next(text for lang, text in blocks if lang == language and marker in text)


# --- the report ---


@pytest.mark.slow
def test_table_is_the_documented_example_and_a_finding_exits_1(fake_kube, kubeconfig_path, capsys):
    example_cluster(fake_kube)
    status, out, err = audit(capsys, kubeconfig_path)
    assert status == 1
    assert err == ""
    assert out == docs_block("UNMANAGED PODS")


@pytest.mark.slow
def test_json_has_the_documented_schema_for_every_daemonset(fake_kube, kubeconfig_path, capsys):
    example_cluster(fake_kube)
    status, out, _ = audit(capsys, kubeconfig_path, "--output", "json")
    report = json.loads(out)
    assert status == 1
    assert list(report) == ["daemonsets", "node_noexecute_taints", "unmanaged_pods"]
    rows = {(d["namespace"], d["name"]): d for d in report["daemonsets"]}
    assert all(list(d) == ["namespace", "name", "finding", "blanket_tolerations", "exempt_reason", "gated",
                           "unmanaged_pods", "fix"] for d in report["daemonsets"])
    ebs = rows[("kube-system", "ebs-csi-node")]
    assert ebs.pop("fix")["values"] == ["node.tolerateAllTaints", "node.tolerations"]
    assert ebs == {
        "namespace": "kube-system", "name": "ebs-csi-node", "finding": True,
        "blanket_tolerations": [{"operator": "Exists"}], "exempt_reason": None, "gated": False, "unmanaged_pods": 1}
    assert rows[("monitoring", "node-exporter")]["fix"] is None
    assert rows[("istio-system", "istio-cni-node")]["blanket_tolerations"] == [
        {"effect": "NoExecute", "operator": "Exists"}]
    assert {k: (d["finding"], d["exempt_reason"], d["gated"], d["unmanaged_pods"]) for k, d in rows.items()} == {
        ("istio-system", "istio-cni-node"): (True, None, False, 2),
        ("kube-system", "aws-node"): (False, "exempted", False, 0),
        ("kube-system", "cilium"): (False, "hostNetwork", False, 0),
        ("kube-system", "ebs-csi-node"): (True, None, False, 1),
        ("kube-system", "ebs-csi-node-stripped"): (False, None, True, 0),
        ("kube-system", "nvidia-device-plugin-daemonset"): (False, None, False, 0),
        ("monitoring", "node-exporter"): (False, "hostNetwork", False, 0),
        ("observability", "log-agent"): (False, "opt-out", False, 0),
        ("storage", "ebs-csi-node"): (False, "tolerates-cilium-taint", False, 0),
    }
    assert list(rows) == sorted(rows)
    assert report["node_noexecute_taints"] == [{"key": "dedicated", "value": "gpu", "effect": "NoExecute", "nodes": 2}]


@pytest.mark.slow
def test_clean_cluster_exits_0(fake_kube, kubeconfig_path, capsys):
    clean_cluster(fake_kube)
    status, out, _ = audit(capsys, kubeconfig_path)
    assert status == 0
    assert "3 DaemonSet(s) audited: 0 with a blanket NoExecute toleration, 2 exempt; 0 pod(s)" in out


@pytest.mark.slow
def test_config_file_exemptions_apply(fake_kube, kubeconfig_path, capsys, tmp_path):
    clean_cluster(fake_kube)
    daemonset(fake_kube, "daemonset_ebs_csi_node.json")
    config = tmp_path / "config.yaml"
    config.write_text("exemptions:\n  - {namespace: kube-system, name: ebs-csi-node}\n", encoding="utf-8")
    assert audit(capsys, kubeconfig_path)[0] == 1
    status, out, _ = audit(capsys, kubeconfig_path, "--config", str(config), "--output", "json")
    assert status == 0
    ebs = next(d for d in json.loads(out)["daemonsets"] if d["name"] == "ebs-csi-node")
    assert (ebs["finding"], ebs["exempt_reason"]) == (False, "exempted")


@pytest.mark.slow
def test_agent_pods_are_found_by_the_given_namespace_and_selector(fake_kube, kubeconfig_path, capsys):
    fake_kube.create(node("node-1"))
    agent = agent_pod("node-1")
    agent["metadata"].update(namespace="cilium", labels={"app.kubernetes.io/name": "cilium-agent"})
    fake_kube.create(agent)
    pods(fake_kube, daemonset(fake_kube, "daemonset_ebs_csi_node.json"), "node-1")
    count = [json.loads(audit(capsys, kubeconfig_path, "--output", "json", *flags)[1])["daemonsets"][0][
        "unmanaged_pods"] for flags in ([], ["--cilium-namespace", "cilium", "--cilium-agent-selector",
                                             "app.kubernetes.io/name=cilium-agent"])]
    assert count == [0, 1]  # no agent found means "not ready": nothing is counted


# --- CiliumEndpoints that cannot be listed ---


@pytest.mark.slow
@pytest.mark.parametrize("make_unlistable, reason", [
    pytest.param(lambda f: f.remove_resource("ciliumendpoints.cilium.io"), "does not serve", id="absent"),
    pytest.param(lambda f: f.fail("GET", "/ciliumendpoints$", 404, times=None), "does not serve", id="list-404"),
    pytest.param(lambda f: f.fail("GET", "/ciliumendpoints$", 403, times=None), "no permission", id="forbidden"),
    pytest.param(lambda f: f.fail("GET", "^/apis/cilium.io/v2$", 403, times=None), "no permission",
                 id="discovery-forbidden"),
])
def test_unlistable_endpoints_give_null_everywhere_and_one_warning(fake_kube, kubeconfig_path, capsys,
                                                                   make_unlistable, reason):
    example_cluster(fake_kube)
    make_unlistable(fake_kube)
    status, out, err = audit(capsys, kubeconfig_path, "--output", "json")
    assert status == 1  # the findings still count
    assert {d["unmanaged_pods"] for d in json.loads(out)["daemonsets"]} == {None}
    assert one_line(err).startswith("cilium-startup-guard audit: warning: unmanaged pods are not counted (null)")
    assert reason in err


# --- pagination ---


@pytest.mark.slow
def test_every_list_call_is_paginated_with_a_limit(fake_kube, kube_client):
    example_cluster(fake_kube)  # at least three of everything: each list needs several pages of two
    collect(kube_client, AuditOptions(timeout=5, page_size=2))
    lists = [r for r in fake_kube.requests if rbac_of(r)[2] == "list"]
    assert {r.path for r in lists} == set(LIST_PATHS)
    assert all(r.query.get("limit") == "2" for r in lists)
    for path in LIST_PATHS:
        pages = [r for r in lists if r.path == path]
        assert len(pages) >= 2, path
        assert "continue" not in pages[0].query and all(p.query.get("continue") for p in pages[1:])


@pytest.mark.slow
def test_paginated_lists_return_everything(fake_kube, kube_client):
    example_cluster(fake_kube)
    whole, _ = collect(kube_client, AuditOptions(timeout=5))
    paged, _ = collect(kube_client, AuditOptions(timeout=5, page_size=2))
    assert paged == whole
    assert len(whole.daemonsets) == 9


@pytest.mark.slow
def test_the_command_pages_by_500(fake_kube, kubeconfig_path, capsys):
    clean_cluster(fake_kube)
    audit(capsys, kubeconfig_path)
    lists = [r for r in fake_kube.requests if rbac_of(r)[2] == "list"]
    assert len(lists) == len(LIST_PATHS)
    assert {r.query.get("limit") for r in lists} == {"500"}


# --- errors: exit 2, one line, never a traceback ---


@pytest.mark.slow
def test_no_permission_to_list_daemonsets_exits_2(fake_kube, kubeconfig_path, capsys):
    fake_kube.fail("GET", "^/apis/apps/v1/daemonsets$", 403, times=None)
    status, out, err = audit(capsys, kubeconfig_path)
    assert status == 2
    assert out == ""
    assert one_line(err).startswith("cilium-startup-guard audit: error: no permission to list daemonsets.apps")


@pytest.mark.slow
def test_an_api_server_error_exits_2(fake_kube, kubeconfig_path, capsys):
    clean_cluster(fake_kube)
    fake_kube.fail("GET", "^/api/v1/nodes$", 500, times=None)
    status, _, err = audit(capsys, kubeconfig_path)
    assert status == 2
    assert "cannot list nodes (500): " in one_line(err)


@pytest.mark.slow  # the client against a closed port
def test_unreachable_cluster_exits_2_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    kubeconfig = kubeconfig_for(f"http://127.0.0.1:{unused_port()}", tmp_path / "kubeconfig")
    started = time.monotonic()
    status, _, err = audit(capsys, kubeconfig)
    assert time.monotonic() - started < 2.0
    assert status == 2
    assert "cannot reach the Kubernetes API server http://127.0.0.1:" in one_line(err)


@pytest.mark.slow
def test_a_server_that_never_answers_is_bounded_by_the_timeout(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with SilentServer() as server:
        started = time.monotonic()
        status, _, err = audit(capsys, kubeconfig_for(server.url, tmp_path / "kubeconfig"), "--timeout", "0.5")
        elapsed = time.monotonic() - started
        assert server.connections == 1  # not retried
    assert 0.5 <= elapsed < 2.0
    assert status == 2
    assert f"no answer from the Kubernetes API server {server.url} within 0.5 s" in one_line(err)


@pytest.mark.slow
def test_a_server_that_is_not_kubernetes_exits_2(tmp_path, capsys, monkeypatch):
    class Html(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>hello</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Html)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        status, _, err = audit(capsys, kubeconfig_for(f"http://127.0.0.1:{server.server_address[1]}",
                                                      tmp_path / "kubeconfig"))
    finally:
        server.shutdown()
        server.server_close()
    assert status == 2
    assert "is not JSON" in one_line(err)


@pytest.mark.slow
@pytest.mark.parametrize("content, args, message", [
    pytest.param("{{{ not yaml", (), "cannot use kubeconfig", id="not-yaml"),
    pytest.param(None, (), "cannot use kubeconfig", id="missing-file"),
    pytest.param("fake", ("--context", "nope"), "nope", id="unknown-context"),
])
def test_a_bad_kubeconfig_exits_2(fake_kube, tmp_path, capsys, content, args, message):
    path = tmp_path / "kubeconfig"
    if content == "fake":
        path.write_text(yaml.safe_dump(fake_kube.kubeconfig()), encoding="utf-8")
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    status, _, err = audit(capsys, path, *args)
    assert status == 2
    assert message in one_line(err)


@pytest.mark.slow
def test_a_bad_config_file_exits_2(kubeconfig_path, capsys, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("mode: sideways\n", encoding="utf-8")
    status, _, err = audit(capsys, kubeconfig_path, "--config", str(config))
    assert status == 2
    assert "config file" in one_line(err)


@pytest.mark.slow
def test_timeout_must_be_above_zero(kubeconfig_path, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["audit", "--kubeconfig", str(kubeconfig_path), "--timeout", "0"])
    assert exited.value.code == 2
    assert "above 0" in capsys.readouterr().err


@pytest.mark.slow
def test_the_process_prints_one_line_and_no_traceback(tmp_path):
    kubeconfig = kubeconfig_for(f"http://127.0.0.1:{unused_port()}", tmp_path / "kubeconfig")
    result = subprocess.run([sys.executable, "-m", "webhook", "audit", "--kubeconfig", str(kubeconfig)],
                            capture_output=True, text=True, cwd=REPO, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "NO_PROXY": "127.0.0.1", "HOME": str(tmp_path)})
    assert result.returncode == 2
    assert result.stdout == ""
    assert one_line(result.stderr).startswith("cilium-startup-guard audit: error: cannot reach")


# --- kubeconfig, flags, RBAC ---


@pytest.mark.slow
def test_kubeconfig_defaults_to_the_kubeconfig_variable(fake_kube, kubeconfig_path, capsys, monkeypatch):
    clean_cluster(fake_kube)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig_path))
    assert cli.main(["audit"]) == 0
    assert fake_kube.calls("GET", "^/apis/apps/v1/daemonsets$")


def test_audit_takes_its_documented_flags_and_the_controllers_agent_flags():
    [commands] = [a for a in cli.build_parser()._actions if a.dest == "command"]
    flags = {s for a in commands.choices["audit"]._actions for s in a.option_strings} - {"-h", "--help"}
    assert flags == {"--kubeconfig", "--context", "--output", "--config", "--timeout", "--cilium-namespace",
                     "--cilium-agent-selector"}


@pytest.mark.slow
def test_api_calls_are_exactly_the_documented_clusterrole(fake_kube, kubeconfig_path, capsys):
    example_cluster(fake_kube)
    audit(capsys, kubeconfig_path)
    used = {rbac_of(r) for r in fake_kube.requests} - {("nonResourceURL", "/apis/cilium.io/v2", "get")}
    role = yaml.safe_load(docs_block("name: cilium-startup-guard-audit", "yaml"))
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert role["kind"] == "ClusterRole"
    assert used == granted == AUDIT_RBAC


@pytest.mark.slow
def test_docs_document_the_json_schema(fake_kube, kubeconfig_path, capsys):
    example_cluster(fake_kube)
    report = json.loads(audit(capsys, kubeconfig_path, "--output", "json")[1])
    documented = docs_block('"node_noexecute_taints"', "json")
    for key in [*report, *report["daemonsets"][0], *report["node_noexecute_taints"][0], *report["unmanaged_pods"][0]]:
        assert f'"{key}"' in documented
    assert f"besides {CILIUM_TAINT_KEY}" in DOCS


@pytest.mark.slow
def test_the_kubernetes_client_is_not_imported_until_audit_runs():
    script = ("import sys, webhook.cli\nwebhook.cli.build_parser()\n"
              "print('LOADED' if 'kubernetes' in sys.modules else 'CLEAN')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.stdout.strip() == "CLEAN", result.stderr


@pytest.mark.slow
def test_unmanaged_pods_of_every_kind_are_listed_right_now(fake_kube, kubeconfig_path, capsys):
    unmanaged_cluster(fake_kube)  # the cluster `recycle` is tested on
    report = json.loads(audit(capsys, kubeconfig_path, "--output", "json")[1])
    listed = {f"{p['namespace']}/{p['name']}": p["owner_kind"] for p in report["unmanaged_pods"]}
    assert listed == {
        "shop/web-5d8f-a": "ReplicaSet", "shop/db-0": "StatefulSet", "shop/debug": None,
        "kube-system/etcd-node-1": "Node", "batch/report-x": "Job", "logging/log-agent-node-1": "DaemonSet",
        "pay/api-7c9d-a": "ReplicaSet",  # a budget would refuse its eviction: the audit only reads
        "shop/web-5d8f-e": "ReplicaSet",  # its node rebooted: a snapshot has no grace period
    }  # not: the host-network pod, the managed one, those on a node whose agent is not ready or still tainted


@pytest.mark.slow
def test_configured_kinds_are_listed_and_reported(fake_kube, kubeconfig_path, capsys, tmp_path):
    clean_cluster(fake_kube)
    fake_kube.create(copy.deepcopy(load_fixture("deployment_ebs_csi_controller.json")["request"]["object"]))
    config = tmp_path / "config.yaml"
    config.write_text("kinds: [DaemonSet, Deployment]\n")
    status, out, _ = audit(capsys, kubeconfig_path, "--output", "json", "--config", str(config))
    report = json.loads(out)
    assert status == 1
    assert [d["name"] for d in report["deployments"]] == ["ebs-csi-controller"]
    assert fake_kube.calls("GET", "^/apis/apps/v1/deployments$")
    assert fake_kube.calls("GET", "^/apis/apps/v1/replicasets$")  # a Deployment's pods belong to its ReplicaSets
