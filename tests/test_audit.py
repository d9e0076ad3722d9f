"""The audit's pure core: API objects as plain dicts and a PolicyConfig in, a report out. No I/O, no fakes."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from tests.objects import agent_pod, daemonset_pod, endpoint, node, with_taints
from tests.support import load_fixture
from webhook.audit import (
    AuditError,
    Cluster,
    DaemonSetAudit,
    Report,
    TaintCount,
    UnmanagedPod,
    build_report,
    exit_status,
    noexecute_taints,
    render_json,
    render_table,
)
from webhook.cilium import AgentState, endpoint_state
from webhook.controller.rules import NodeFacts, Situation, pod_facts
from webhook.policy import CILIUM_TAINT_KEY, DEFAULT_GATE_CONDITION, SKIP_ANNOTATION, ExemptReason, PolicyConfig
from webhook.unmanaged import snapshot_unmanaged
from webhook.workloads import Kind

CONFIG = PolicyConfig()
CILIUM_TAINT = {"key": CILIUM_TAINT_KEY, "value": "true", "effect": "NoExecute"}


def stored(fixture: str, uid: str, **metadata: str) -> dict[str, Any]:
    """A fixture's DaemonSet as the API server stores it: with a uid (and optionally another name/namespace)."""
    ds = copy.deepcopy(load_fixture(fixture)["request"]["object"])
    ds["metadata"].update(uid=uid, **metadata)
    return ds


def pod_on(node_name: str = "node-a", uid: str = "pod-1", **changes: Any) -> dict[str, Any]:
    pod = daemonset_pod(stored("daemonset_ebs_csi_node.json", "ds-1"), "ebs-csi-node-x", node_name, **changes)
    pod["metadata"]["uid"] = uid
    return pod


def own_endpoint(pod: dict[str, Any], state: str = "ready") -> dict[str, Any]:
    return endpoint(pod, state=state)


def stale_endpoint(pod: dict[str, Any]) -> dict[str, Any]:
    cep = endpoint(pod)
    cep["metadata"]["ownerReferences"][0]["uid"] = "an-earlier-pod"
    return cep


def ownerless_endpoint(pod: dict[str, Any]) -> dict[str, Any]:
    cep = endpoint(pod)
    del cep["metadata"]["ownerReferences"]
    return cep


# --- one pod: unmanaged or not ---


def is_unmanaged(pod: dict[str, Any], endpoint: dict[str, Any] | None, agent: AgentState) -> bool:
    """What the audit counts for one pod (webhook.unmanaged.snapshot_unmanaged, as build_report applies it): running
    on the pod network, not terminating, where the Cilium agent is ready, and no CiliumEndpoint of its own."""
    facts = pod_facts(pod, DEFAULT_GATE_CONDITION)
    situation = Situation(pod=facts, endpoint_state=endpoint_state(endpoint, facts.uid), node=NodeFacts(agent))
    return snapshot_unmanaged(situation)


@pytest.mark.parametrize("pod, make_endpoint, agent, expected", [
    pytest.param(pod_on(), None, AgentState.READY, True, id="running-no-endpoint-agent-ready"),
    pytest.param(pod_on(phase="Pending"), None, AgentState.READY, False, id="pending"),
    pytest.param(pod_on(phase="Succeeded"), None, AgentState.READY, False, id="finished"),
    pytest.param(pod_on(host_network=True), None, AgentState.READY, False, id="host-network"),
    pytest.param(pod_on(terminating=True), None, AgentState.READY, False, id="terminating"),
    pytest.param(pod_on(), own_endpoint, AgentState.READY, False, id="own-endpoint-ready"),
    pytest.param(pod_on(), lambda p: own_endpoint(p, "waiting-for-identity"), AgentState.READY, False,
                 id="own-endpoint-not-ready-yet-is-managed"),
    pytest.param(pod_on(), stale_endpoint, AgentState.READY, True, id="endpoint-of-an-earlier-pod-is-stale"),
    pytest.param(pod_on(), ownerless_endpoint, AgentState.READY, False, id="endpoint-without-owner-counts"),
    pytest.param(pod_on(), None, AgentState.NOT_READY, False, id="agent-not-ready"),
    pytest.param(pod_on(), None, AgentState.NO_AGENT, False, id="no-agent-on-node"),
    pytest.param(pod_on(), None, AgentState.UNKNOWN, False, id="unknown-node"),
])
def test_is_unmanaged(pod, make_endpoint, agent, expected):
    assert is_unmanaged(pod, make_endpoint(pod) if make_endpoint else None, agent) is expected


# --- DaemonSets: the webhook's policy ---


@pytest.mark.parametrize("fixture, finding, exempt_reason, blanket, gated", [
    pytest.param("daemonset_ebs_csi_node.json", True, None, [{"operator": "Exists"}], False, id="ebs-csi-node"),
    pytest.param("daemonset_istio_cni_node.json", True, None, [{"effect": "NoExecute", "operator": "Exists"}],
                 False, id="istio-cni-node"),
    pytest.param("daemonset_partially_gated.json", True, None, [{"operator": "Exists"}], True,
                 id="finding-and-gated"),
    pytest.param("daemonset_node_exporter.json", False, "hostNetwork", [{"operator": "Exists"}], False,
                 id="host-network"),
    pytest.param("daemonset_aws_node.json", False, "hostNetwork", [{"operator": "Exists"}], False,
                 id="host-network-reported-before-exempted-label"),
    pytest.param("daemonset_exempted_label.json", False, "exempted", [{"operator": "Exists"}], False,
                 id="exempted"),
    pytest.param("daemonset_tolerates_cilium_taint.json", False, "tolerates-cilium-taint",
                 [{"operator": "Exists"}], False, id="tolerates-cilium-taint"),
    pytest.param("daemonset_opt_out.json", False, "opt-out", [{"operator": "Exists", "effect": "NoExecute"}],
                 False, id="opt-out"),
    pytest.param("daemonset_no_blanket_toleration.json", False, None, [], False, id="clean"),
    pytest.param("daemonset_already_mutated.json", False, None, [], True, id="stripped-and-gated"),
])
def test_each_daemonset_is_judged_as_the_webhook_would(fixture, finding, exempt_reason, blanket, gated):
    report = build_report(Cluster([stored(fixture, "ds-1")], [], [], [], []), CONFIG)
    [audit] = report.as_json()["daemonsets"]
    assert (audit["finding"], audit["exempt_reason"], audit["blanket_tolerations"], audit["gated"]) == (
        finding, exempt_reason, blanket, gated)


def with_opt_out(ds: dict[str, Any]) -> dict[str, Any]:
    ds["metadata"].setdefault("annotations", {})[SKIP_ANNOTATION] = "true"
    return ds


@pytest.mark.parametrize("ds, config, expected", [
    pytest.param(with_opt_out(stored("daemonset_tolerates_cilium_taint.json", "u")), CONFIG,
                 ExemptReason.TOLERATES_CILIUM_TAINT, id="tolerates-cilium-taint-before-opt-out"),
    pytest.param(with_opt_out(stored("daemonset_exempted_label.json", "u")), CONFIG, ExemptReason.EXEMPTED,
                 id="exempted-before-opt-out"),
    pytest.param(stored("daemonset_opt_out.json", "u"), PolicyConfig(allow_opt_out=False), None,
                 id="opt-out-not-allowed-is-a-finding"),
])
def test_first_exemption_in_the_documented_order_is_reported(ds, config, expected):
    [audit] = build_report(Cluster([ds], [], [], [], []), config).daemonsets
    assert audit.exempt_reason is expected
    assert audit.finding is (expected is None)


def test_daemonsets_are_sorted_by_namespace_and_name():
    daemonsets = [stored("daemonset_node_exporter.json", "1"), stored("daemonset_ebs_csi_node.json", "2"),
                  stored("daemonset_aws_node.json", "3"), stored("daemonset_istio_cni_node.json", "4")]
    report = build_report(Cluster(daemonsets, [], [], [], []), CONFIG)
    assert [(d.namespace, d.name) for d in report.daemonsets] == [
        ("istio-system", "istio-cni-node"), ("kube-system", "aws-node"), ("kube-system", "ebs-csi-node"),
        ("monitoring", "node-exporter")]


def test_a_malformed_daemonset_is_an_error_naming_it():
    ds = stored("daemonset_ebs_csi_node.json", "u")
    ds["spec"]["template"]["spec"]["tolerations"] = "everything"
    expected = "DaemonSet kube-system/ebs-csi-node: spec.template.spec.tolerations"
    with pytest.raises(AuditError, match=re.escape(expected)):
        build_report(Cluster([ds], [], [], [], []), CONFIG)


# --- unmanaged pods, per DaemonSet ---


def test_unmanaged_pods_are_counted_per_daemonset_by_owner_uid():
    ebs, istio = stored("daemonset_ebs_csi_node.json", "ebs"), stored("daemonset_istio_cni_node.json", "istio")
    pods = [daemonset_pod(ebs, "ebs-1"), daemonset_pod(ebs, "ebs-2"), daemonset_pod(istio, "istio-1"),
            # Same namespace and labels as ebs-csi-node, but another owner: not one of its pods.
            daemonset_pod(ebs, "lookalike", owner_uid="a-replicaset")]
    for i, pod in enumerate(pods):
        pod["metadata"]["uid"] = f"pod-{i}"
    cluster = Cluster([ebs, istio], pods, [node("node-a")], [agent_pod("node-a")], [endpoint(pods[2])])
    counts = {d.name: d.unmanaged_pods for d in build_report(cluster, CONFIG).daemonsets}
    assert counts == {"ebs-csi-node": 2, "istio-cni-node": 0}


def test_only_pods_on_nodes_with_a_ready_agent_and_no_cilium_taint_count():
    ebs = stored("daemonset_ebs_csi_node.json", "ebs")
    nodes = [node("ready"), node("tainted", tainted=True), node("agent-not-ready"), node("no-agent")]
    agents = [agent_pod("ready"), agent_pod("tainted"), agent_pod("agent-not-ready", ready=False)]
    pods = [daemonset_pod(ebs, f"ebs-{n}", n) for n in ("ready", "tainted", "agent-not-ready", "no-agent",
                                                        "not-listed")]
    [audit] = build_report(Cluster([ebs], pods, nodes, agents, []), CONFIG).daemonsets
    assert audit.unmanaged_pods == 1


def test_unmanaged_pods_are_null_everywhere_when_endpoints_could_not_be_listed():
    ebs, exporter = stored("daemonset_ebs_csi_node.json", "ebs"), stored("daemonset_node_exporter.json", "ne")
    cluster = Cluster([ebs, exporter], [daemonset_pod(ebs, "ebs-1")], [node("node-a")], [agent_pod("node-a")],
                      None)
    report = build_report(cluster, CONFIG)
    assert [d["unmanaged_pods"] for d in report.as_json()["daemonsets"]] == [None, None]
    assert report.as_json()["unmanaged_pods"] is None


def test_unmanaged_pods_of_every_owner_are_listed_once_sorted():
    ebs = stored("daemonset_ebs_csi_node.json", "ebs")
    web = daemonset_pod(ebs, "web-5d8f-x", owner_uid="rs-uid")
    web["metadata"].update(namespace="shop", ownerReferences=[
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f", "uid": "rs-uid", "controller": True}])
    bare = daemonset_pod(ebs, "debug")
    bare["metadata"].update(namespace="shop", ownerReferences=[])
    mirror = daemonset_pod(ebs, "etcd-node-a")
    mirror["metadata"].update(namespace="kube-system", annotations={"kubernetes.io/config.mirror": "h"},
                              ownerReferences=[{"kind": "Node", "name": "node-a", "uid": "n", "controller": True}])
    managed = daemonset_pod(ebs, "ebs-1")
    pods = [web, bare, mirror, managed, daemonset_pod(ebs, "ebs-2"), daemonset_pod(ebs, "ebs-3", host_network=True)]
    for i, pod in enumerate(pods):
        pod["metadata"]["uid"] = f"pod-{i}"
    report = build_report(Cluster([ebs], pods, [node("node-a")], [agent_pod("node-a")], [endpoint(managed)]), CONFIG)
    assert [(p.namespace, p.name, p.owner_kind) for p in report.unmanaged_pods or ()] == [
        ("kube-system", "ebs-2", "DaemonSet"), ("kube-system", "etcd-node-a", "Node"), ("shop", "debug", None),
        ("shop", "web-5d8f-x", "ReplicaSet")]
    assert report.daemonsets[0].unmanaged_pods == 1


# --- node taints ---


def test_noexecute_taints_are_distinct_with_node_counts_and_without_ciliums():
    gpu = {"key": "dedicated", "value": "gpu", "effect": "NoExecute"}
    nodes = [
        with_taints(node("a", tainted=True), gpu),
        with_taints(node("b"), gpu, {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}),
        with_taints(node("c"), {"key": "dedicated", "value": "infra", "effect": "NoExecute"},
                    {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}),
        with_taints(node("d"), {**CILIUM_TAINT, "value": "other"}),  # Cilium's taint is Cilium's by key alone
    ]
    assert noexecute_taints(nodes, CILIUM_TAINT_KEY) == (
        TaintCount("dedicated", "gpu", "NoExecute", 2),
        TaintCount("dedicated", "infra", "NoExecute", 1),
        TaintCount("node.kubernetes.io/unreachable", None, "NoExecute", 1),
    )


def test_a_configured_cilium_taint_key_is_left_out_instead():
    nodes = [with_taints(node("a", tainted=True), {"key": "example.com/cni-not-ready", "effect": "NoExecute"})]
    assert noexecute_taints(nodes, "example.com/cni-not-ready") == (
        TaintCount(CILIUM_TAINT_KEY, "true", "NoExecute", 1),)


# --- the report's shape and output ---


EXAMPLE = Report(
    daemonsets=(
        DaemonSetAudit("kube-system", "ebs-csi-node", True, ({"operator": "Exists"},), None, False, 3),
        DaemonSetAudit("monitoring", "node-exporter", False, ({"operator": "Exists"},), ExemptReason.HOST_NETWORK,
                       False, 0),
        DaemonSetAudit("storage", "nvidia", False, (), None, True, 0),
    ),
    node_noexecute_taints=(TaintCount("dedicated", "gpu", "NoExecute", 2),
                           TaintCount("node.kubernetes.io/unreachable", None, "NoExecute", 1)),
    unmanaged_pods=(UnmanagedPod("kube-system", "ebs-csi-node-a", "node-a", "DaemonSet", "ebs-csi-node"),
                    UnmanagedPod("kube-system", "ebs-csi-node-b", "node-b", "DaemonSet", "ebs-csi-node"),
                    UnmanagedPod("kube-system", "ebs-csi-node-c", "node-c", "DaemonSet", "ebs-csi-node"),
                    UnmanagedPod("shop", "web-5d8f-x", "node-a", "ReplicaSet", "web-5d8f"),
                    UnmanagedPod("shop", "debug", "node-b", None, None)),
)


def test_json_is_exactly_the_documented_schema():
    report = json.loads(render_json(EXAMPLE))
    assert list(report) == ["daemonsets", "node_noexecute_taints", "unmanaged_pods"]
    assert report["daemonsets"][0] == {
        "namespace": "kube-system", "name": "ebs-csi-node", "finding": True,
        "blanket_tolerations": [{"operator": "Exists"}], "exempt_reason": None, "gated": False, "unmanaged_pods": 3,
        "fix": None}
    assert report["daemonsets"][1]["exempt_reason"] == "hostNetwork"
    assert report["node_noexecute_taints"] == [
        {"key": "dedicated", "value": "gpu", "effect": "NoExecute", "nodes": 2},
        {"key": "node.kubernetes.io/unreachable", "value": None, "effect": "NoExecute", "nodes": 1}]
    assert report["unmanaged_pods"][3] == {"namespace": "shop", "name": "web-5d8f-x", "node": "node-a",
                                           "owner_kind": "ReplicaSet", "owner_name": "web-5d8f"}
    assert report["unmanaged_pods"][4]["owner_kind"] is None


def test_table_has_a_row_per_daemonset_then_the_taints_then_a_summary():
    lines = render_table(EXAMPLE, CONFIG).splitlines()
    assert lines[0].split() == ["DAEMONSET", "RESULT", "BLANKET", "TOLERATIONS", "GATED", "UNMANAGED", "PODS"]
    assert lines[1].split() == ["kube-system/ebs-csi-node", "finding", "{operator:", "Exists}", "no", "3"]
    assert lines[2].split() == ["monitoring/node-exporter", "exempt:", "hostNetwork", "{operator:", "Exists}", "no",
                                "0"]
    assert lines[3].split() == ["storage/nvidia", "ok", "-", "yes", "0"]
    assert lines[5].startswith(f"NODE NOEXECUTE TAINT (besides {CILIUM_TAINT_KEY})")
    assert lines[6].split() == ["dedicated=gpu:NoExecute", "2"]
    assert lines[7].split() == ["node.kubernetes.io/unreachable:NoExecute", "1"]
    assert lines[9].split() == ["UNMANAGED", "POD", "NODE", "OWNER"]
    assert lines[13].split() == ["shop/web-5d8f-x", "node-a", "ReplicaSet/web-5d8f"]
    assert lines[14].split() == ["shop/debug", "node-b", "-"]
    assert lines[-1] == ("3 DaemonSet(s) audited: 1 with a blanket NoExecute toleration, 1 exempt; "
                         "5 pod(s) not managed by Cilium")


def test_table_says_unknown_rather_than_zero_when_endpoints_could_not_be_listed():
    unknown = Report(tuple(DaemonSetAudit(d.namespace, d.name, d.finding, d.blanket_tolerations, d.exempt_reason,
                                          d.gated, None) for d in EXAMPLE.daemonsets), (), unmanaged_pods=None)
    text = render_table(unknown, CONFIG)
    assert json.loads(render_json(unknown))["unmanaged_pods"] is None
    assert text.splitlines()[1].split()[-1] == "n/a"
    assert f"no NoExecute taints on nodes besides {CILIUM_TAINT_KEY}" in text
    assert text.endswith("unmanaged pods unknown (CiliumEndpoints could not be listed)\n")


def test_exit_status_is_1_with_a_finding_else_0():
    clean = Report(EXAMPLE.daemonsets[1:], ())
    assert (exit_status(EXAMPLE), exit_status(clean), exit_status(Report((), ()))) == (1, 0, 0)


# --- the other kinds ---

ALL_KINDS = PolicyConfig(kinds=frozenset(Kind))


def fixture_object(fixture: str, uid: str) -> dict[str, Any]:
    obj = copy.deepcopy(load_fixture(fixture)["request"]["object"])
    obj["metadata"]["uid"] = uid
    return obj


def owned_by(obj: dict[str, Any], owner: dict[str, Any], uid: str) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["metadata"]["uid"] = uid
    obj["metadata"]["ownerReferences"] = [{"apiVersion": owner["apiVersion"], "kind": owner["kind"],
                                           "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                                           "controller": True}]
    return obj


def test_each_configured_kind_has_its_own_array_with_the_same_fields():
    deployment = fixture_object("deployment_ebs_csi_controller.json", "dep-1")
    cronjob = fixture_object("cronjob_linkerd_heartbeat.json", "cron-1")
    cluster = Cluster([stored("daemonset_ebs_csi_node.json", "ds-1")], [], [], [], [],
                      {Kind.DEPLOYMENT: [deployment], Kind.CRONJOB: [cronjob]})
    report = build_report(cluster, ALL_KINDS).as_json()
    assert list(report) == ["daemonsets", "deployments", "statefulsets", "replicasets", "jobs", "cronjobs", "pods",
                            "node_noexecute_taints", "unmanaged_pods"]
    (dep,) = report["deployments"]
    assert list(dep) == list(report["daemonsets"][0])
    assert (dep["name"], dep["finding"], dep["fix"]["id"]) == ("ebs-csi-controller", True,
                                                               "aws-ebs-csi-driver/controller")
    assert report["cronjobs"][0]["finding"] is True


def test_a_deployments_unmanaged_pods_are_counted_through_its_replicasets():
    deployment = fixture_object("deployment_ebs_csi_controller.json", "dep-1")
    replicaset = owned_by(load_fixture("replicaset_owned_by_deployment.json")["request"]["object"], deployment, "rs-1")
    pod = owned_by(pod_on(), replicaset, "pod-9")
    cluster = Cluster([], [pod], [node("node-a")], [agent_pod("node-a")], [],
                      {Kind.DEPLOYMENT: [deployment], Kind.REPLICASET: [replicaset]})
    report = build_report(cluster, PolicyConfig(kinds=frozenset({Kind.DEPLOYMENT})))
    ((kind, (audit,)),) = report.others
    assert (kind, audit.unmanaged_pods) == (Kind.DEPLOYMENT, 1)


def test_a_controlled_replicaset_or_pod_is_not_listed_on_its_own():
    deployment = fixture_object("deployment_ebs_csi_controller.json", "dep-1")
    replicaset = owned_by(load_fixture("replicaset_owned_by_deployment.json")["request"]["object"], deployment, "rs-1")
    cluster = Cluster([], [pod_on()], [], [], [], {Kind.REPLICASET: [replicaset]})
    report = build_report(cluster, PolicyConfig(kinds=frozenset({Kind.REPLICASET, Kind.POD}))).as_json()
    assert report["replicasets"] == report["pods"] == []


def test_a_bare_pod_is_audited_and_counts_itself():
    bare = copy.deepcopy(load_fixture("pod_bare_generate_name.json")["request"]["object"])
    bare["metadata"].update(name="ebs-csi-node-debug-x1", uid="bare-1")
    bare["spec"]["nodeName"] = "node-a"
    bare["status"] = {"phase": "Running", "podIP": "10.0.3.4"}  # a pod on the pod network runs with an IP
    cluster = Cluster([], [bare], [node("node-a")], [agent_pod("node-a")], [])
    (audit,) = build_report(cluster, PolicyConfig(kinds=frozenset({Kind.DAEMONSET, Kind.POD}))).as_json()["pods"]
    assert (audit["name"], audit["finding"], audit["unmanaged_pods"]) == ("ebs-csi-node-debug-x1", True, 1)


def test_a_daemonset_whose_pods_carry_the_gate_is_gated():
    ds = stored("daemonset_ebs_csi_node.json", "ds-1")
    pod = pod_on()
    pod["spec"]["readinessGates"] = [{"conditionType": CONFIG.gate_condition_type}]
    (audit,) = build_report(Cluster([ds], [pod], [], [], None), CONFIG).daemonsets
    assert audit.gated is True


def test_the_table_has_one_section_per_kind_and_a_line_per_known_fix():
    deployment = fixture_object("deployment_ebs_csi_controller.json", "dep-1")
    cluster = Cluster([], [], [], [], None, {Kind.DEPLOYMENT: [deployment]})
    text = render_table(build_report(cluster, PolicyConfig(kinds=frozenset({Kind.DAEMONSET, Kind.DEPLOYMENT}))),
                        CONFIG)
    assert "no DaemonSets in this cluster" in text
    assert "\nDEPLOYMENT " in text
    assert ("fix Deployment kube-system/ebs-csi-controller: aws-ebs-csi-driver chart values: give "
            "controller.tolerations keys") in text
    assert "0 DaemonSet(s), 1 Deployment(s) audited: 1 with a blanket NoExecute toleration" in text
