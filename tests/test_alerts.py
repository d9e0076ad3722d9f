"""The alerting rules and the Grafana dashboard (Helm chart and kustomize components): every PromQL expression
parses, every metric it reads is one the code exports (read from the metrics classes themselves) or one of a few
named outside sources, every label it matches exists on that metric, and every alert has a runbook in the
operations docs.

The chart and the components render the same objects: test_helm_chart.py compares them field for field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import promql_parser
import pytest
import yaml

from tests.helm_render import render_chart
from tests.installs import MONITORING_VALUES
from tests.manifest_render import ROOT
from webhook.controller.metrics import ControllerMetrics
from webhook.enums import Endpoint
from webhook.metrics import Metrics

RULE_FILE = ROOT / "manifests" / "components" / "alerts" / "prometheusrule.yaml"
DASHBOARD_FILE = ROOT / "manifests" / "helm" / "cilium-startup-guard" / "files" / "grafana-dashboard.json"
RUNBOOKS = ROOT / "docs" / "operations.md"
# Series that Prometheus attaches to every scraped sample; rules may match them on any metric.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}
# Metrics read from outside this project, each documented in the runbook of the alert that uses it.
OUTSIDE_METRICS = {
    # kube-state-metrics: https://github.com/kubernetes/kube-state-metrics/blob/v2.13.0/docs/metrics/workload/deployment-metrics.md
    "kube_deployment_status_replicas_available": {"namespace", "deployment"},
    # kube-apiserver: https://github.com/kubernetes/kubernetes/blob/v1.30.0/staging/src/k8s.io/apiserver/pkg/admission/metrics/metrics.go
    "apiserver_admission_webhook_fail_open_count": {"name", "type"},
}
SEVERITIES = {"warning", "critical"}


def exported() -> dict[str, dict[str, set[str]]]:
    """Every sample name the webhook and the controller expose, with the values each label takes."""
    result: dict[str, dict[str, set[str]]] = {}
    webhook = Metrics()
    # The per-namespace series exist once a namespace has been counted; count one for each endpoint.
    for endpoint in Endpoint:
        webhook.count_blanket(endpoint, "default", seen=1, stripped=1)
    controller = ControllerMetrics()
    # The unmanaged-pods series exist once a pod has been counted; count one.
    controller.set_unmanaged([(("default", "ReplicaSet"), 1)])
    for registry in (webhook.registry, controller.registry):
        for family in registry.collect():
            for sample in family.samples:
                labels = result.setdefault(sample.name, {})
                for name, value in sample.labels.items():
                    labels.setdefault(name, set()).add(value)
    return result


EXPORTED = exported()


def component_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULE_FILE.read_text())
    return [rule for group in document["spec"]["groups"] for rule in group["rules"]]


def chart_rules() -> list[dict[str, Any]]:
    (rule,) = [o for o in render_chart(MONITORING_VALUES) if o["kind"] == "PrometheusRule"]
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


RULES = component_rules()
DASHBOARD = json.loads(DASHBOARD_FILE.read_text())
PANEL_QUERIES = [(f"{panel['title']}/{target['refId']}", target["expr"])
                 for panel in DASHBOARD["panels"] for target in panel["targets"]]
EXPRESSIONS = [(rule["alert"], rule["expr"]) for rule in RULES] + PANEL_QUERIES


def selectors(expr: str) -> Iterator[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: promql_parser.Expr) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)
        elif isinstance(node, promql_parser.MatrixSelector):
            found.append(node.vector_selector)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return iter(found)


def rule_ids() -> list[str]:
    return [r["alert"] for r in RULES]


def test_the_rules_are_alerts_with_distinct_names():
    names = [r.get("alert") for r in RULES]
    assert None not in names and len(set(names)) == len(names)


@pytest.mark.parametrize("rule", RULES, ids=rule_ids())
def test_every_alert_expression_parses(rule):
    promql_parser.parse(rule["expr"])
    if "for" in rule:
        assert promql_parser.parse_duration(rule["for"]).total_seconds() > 0


@pytest.mark.parametrize("where, expr", PANEL_QUERIES, ids=[w for w, _ in PANEL_QUERIES])
def test_every_panel_query_parses(where, expr):
    promql_parser.parse(expr)




@pytest.mark.parametrize("where, expr", EXPRESSIONS, ids=[w for w, _ in EXPRESSIONS])
def test_every_metric_an_alert_or_panel_reads_is_exported(where, expr):
    names = [s.name for s in selectors(expr)]
    assert names
    for name in names:
        assert name in EXPORTED or name in OUTSIDE_METRICS, name


@pytest.mark.parametrize("where, expr", EXPRESSIONS, ids=[w for w, _ in EXPRESSIONS])
def test_every_label_an_alert_or_panel_matches_exists_with_that_value(where, expr):
    for selector in selectors(expr):
        for matcher in selector.matchers.matchers:
            if selector.name in OUTSIDE_METRICS:
                assert matcher.name in OUTSIDE_METRICS[selector.name] | TARGET_LABELS, (selector.name, matcher.name)
                continue
            labels = EXPORTED[selector.name]
            assert matcher.name in labels.keys() | TARGET_LABELS, (selector.name, matcher.name)
            if str(matcher.op) == "MatchOp.Equal" and matcher.name in labels:
                assert matcher.value in labels[matcher.name], (selector.name, matcher.name, matcher.value)


@pytest.mark.parametrize("rule", RULES, ids=rule_ids())
def test_every_alert_has_a_severity_and_a_summary(rule):
    assert rule["labels"]["severity"] in SEVERITIES
    assert rule["annotations"]["summary"].endswith(".")


def test_the_chart_renders_the_components_rules():
    assert chart_rules() == RULES


def test_a_dry_run_controller_is_not_expected_to_lead():
    values = {**MONITORING_VALUES, "controller": {"dryRun": True}}
    (rule,) = [o for o in render_chart(values) if o["kind"] == "PrometheusRule"]
    alerts = {r["alert"] for group in rule["spec"]["groups"] for r in group["rules"]}
    assert alerts == {r["alert"] for r in RULES} - {"CiliumStartupGuardControllerNoLeader"}


def test_runbook_base_url_links_every_alert_to_its_runbook():
    values = {"metrics": {"prometheusRule": {"enabled": True, "runbookBaseURL": "https://example.com/ops"}}}
    (rule,) = [o for o in render_chart(values) if o["kind"] == "PrometheusRule"]
    for r in (r for group in rule["spec"]["groups"] for r in group["rules"]):
        assert r["annotations"]["runbook_url"] == f"https://example.com/ops#{r['alert'].lower()}"


@pytest.mark.parametrize("rule", RULES, ids=rule_ids())
def test_every_alert_has_a_runbook(rule):
    headings = re.findall(r"^#+ +(\S+)\s*$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    assert rule["alert"] in headings


def test_dashboard_panels_have_distinct_ids_and_use_the_datasource_variable():
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(set(ids)) == len(ids)
    assert [v["name"] for v in DASHBOARD["templating"]["list"]] == ["datasource"]
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"


def test_the_component_and_the_chart_ship_the_same_dashboard():
    component = yaml.safe_load((ROOT / "manifests" / "components" / "grafana-dashboard" / "configmap.yaml").read_text())
    assert json.loads(component["data"]["cilium-startup-guard.json"]) == DASHBOARD
