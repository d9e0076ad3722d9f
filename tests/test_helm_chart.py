"""The Helm chart: lint, values schema, the same objects as the kustomize overlay for the same choices, values
wired to what they set, and upgrade safety. The invariants both installs share are in test_manifests.py.

Rendered with Helm's own engine (tests/helm_render.py); no helm binary, no cluster.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import helm_python
import pytest
import yaml

from tests import yamltext
from tests.helm_render import CHART, render_chart
from tests.installs import MONITORING_VALUES
from tests.openapi import NEWEST
from tests.test_manifests import (
    COMPONENT_GRANTS,
    CONTROLLER,
    CONTROLLER_GRANTS,
    WEBHOOK,
    container,
    find,
    flags,
    grants,
    selector_matches,
    webhooks,
)
from webhook import cli
from webhook.cli import controller as controller_verb
from webhook.config import ConfigFile, Settings, parse_config, reload_settings
from webhook.policy import ObjectRef

Object = dict[str, Any]

# Labels Helm charts put on every object's metadata; the kustomize install has no release to name.
HELM_LABELS = {"app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "app.kubernetes.io/version",
               "helm.sh/chart"}
CHECKSUM_ANNOTATIONS = {"checksum/config", "checksum/server-config"}
CERTS_JOB_NAME = re.compile(r"cilium-startup-guard-certs-([0-9a-f]{10})")
# The overlay each set of chart values corresponds to.
CORRESPONDING = [
    pytest.param({}, "self-managed-job", id="defaults=self-managed-job"),
    pytest.param({"certificates": "cert-manager"}, "cert-manager", id="cert-manager", marks=pytest.mark.slow),
    pytest.param({"certificates": "cert-manager", "strict": True}, "strict", id="strict", marks=pytest.mark.slow),
    pytest.param(MONITORING_VALUES, "self-managed-job+monitoring", id="monitoring=overlay+components",
                 marks=pytest.mark.slow),
]


def kinds(objects: list[Object], kind: str) -> list[Object]:
    return [o for o in objects if o["kind"] == kind]


def comparable(objects: list[Object]) -> dict[tuple[str, str], Object]:
    """The objects by kind and name with the documented differences between the two installs taken out."""
    result = {}
    for original in objects:
        obj = copy.deepcopy(original)
        meta = obj["metadata"]
        if obj["kind"] == "Namespace":
            continue  # Helm: the release namespace exists before the chart (docs/install.md)
        meta["labels"] = {k: v for k, v in meta.get("labels", {}).items() if k not in HELM_LABELS}
        if obj["kind"] == "Job" and CERTS_JOB_NAME.fullmatch(meta["name"]):
            meta["name"] = "cilium-startup-guard-certs"
        if obj["kind"] == "ConfigMap":
            # Same settings; the kustomize file carries comments, the chart's is made from values.
            obj["data"] = {k: yamltext.load(v) for k, v in obj["data"].items()}
        template = obj.get("spec", {}).get("template", {}).get("metadata", {})
        annotations = {k: v for k, v in template.pop("annotations", {}).items() if k not in CHECKSUM_ANNOTATIONS}
        if annotations:
            template["annotations"] = annotations
        result[obj["kind"], meta["name"]] = obj
    return result


# --- lint and schema -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values, kube_version", [
    pytest.param({}, "v1.30.0", id="defaults-1.30"),
    pytest.param({}, f"v{NEWEST}", id="defaults-newest", marks=pytest.mark.slow),
    pytest.param({"certificates": "cert-manager", "strict": True}, "v1.30.0", id="cert-manager-strict",
                 marks=pytest.mark.slow),
    pytest.param(MONITORING_VALUES, f"v{NEWEST}", id="monitoring", marks=pytest.mark.slow),
])
def test_chart_lints_without_a_warning(values, kube_version):
    report = helm_python.lint(CHART, values, strict=True, kube_version=kube_version)
    assert report["errors"] == []
    # Severity 1 is information only (helm lint's "icon is recommended").
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values, message", [
    pytest.param({"mdoe": "deny"}, "additional properties 'mdoe' not allowed", id="top-level-typo"),
    pytest.param({"webhook": {"replica": 3}}, "additional properties 'replica' not allowed", id="nested-typo"),
    pytest.param({"metrics": {"serviceMonitor": {"enable": True}}}, "additional properties 'enable' not allowed",
                 id="service-monitor-typo"),
    pytest.param({"mode": "block"}, "at '/mode': value must be one of 'warn', 'strip', 'deny'", id="mode"),
    pytest.param({"certificates": "self-managed"}, "at '/certificates': value must be one of",
                 id="certificates"),
    pytest.param({"strict": "true"}, "at '/strict': got string, want boolean", id="strict-as-string"),
    pytest.param({"webhook": {"replicas": "2"}}, "at '/webhook/replicas': got string, want integer",
                 id="replicas-as-string"),
    pytest.param({"controller": {"recycleRate": -1}}, "at '/controller/recycleRate': minimum", id="negative-rate"),
    pytest.param({"exemptions": [{}]}, "at '/exemptions/0'", id="empty-exemption"),
    pytest.param({"image": {"digest": "latest"}}, "at '/image/digest'", id="digest"),
    pytest.param({"controller": {"unmanaged": {"scope": "everything"}}}, "at '/controller/unmanaged/scope'",
                 id="unmanaged-scope"),
])
def test_values_schema_refuses_typos_and_wrong_types_naming_the_key(values, message):
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(message)):
        render_chart(values)


def test_schema_describes_every_default_value():
    # additionalProperties: false everywhere, so a value the schema does not know could never be set.
    schema = helm_python.Chart.load(CHART).schema
    assert schema is not None

    def walk(value: Any, node: dict[str, Any], where: str) -> None:
        if isinstance(value, dict) and "properties" in node:
            assert node.get("additionalProperties") is False, where
            for key, child in value.items():
                assert key in node["properties"], f"{where}.{key}"
                walk(child, node["properties"][key], f"{where}.{key}")

    walk(yaml.safe_load((CHART / "values.yaml").read_text()), schema, "values")


# --- the same objects as the kustomize install ------------------------------------------------------------------

@pytest.mark.parametrize("values, overlay", CORRESPONDING)
def test_chart_renders_the_objects_of_the_corresponding_overlay_field_for_field(rendered_installs, values, overlay):
    chart = comparable(render_chart(values))
    kustomize = comparable(rendered_installs[overlay])  # comparable() works on copies: the cache stays as it is
    assert sorted(chart) == sorted(kustomize)
    for identity in chart:
        assert chart[identity] == kustomize[identity], identity


def test_certs_job_name_carries_a_hash_of_its_pod():
    (job,) = kinds(render_chart(), "Job")
    assert CERTS_JOB_NAME.fullmatch(job["metadata"]["name"])


# --- values reach what they set ---------------------------------------------------------------------------------

def config_of(objects: list[Object]) -> ConfigFile:
    return parse_config(find(objects, "ConfigMap", "cilium-startup-guard-config")["data"]["config.yaml"], "chart")


def test_policy_values_are_the_config_file_keys():
    # The chart writes every key of the config file, and only those, from values of the same names.
    config = yaml.safe_load(find(render_chart(), "ConfigMap", "cilium-startup-guard-config")["data"]["config.yaml"])
    assert set(config) == {field.alias or name for name, field in ConfigFile.model_fields.items()}
    config_file = config_of(render_chart())
    assert config_file.to_policy() == ConfigFile().to_policy()
    # exemptions: None in ConfigFile() means "the built-in list", which to_policy() compared above.
    assert config_file.model_dump(exclude={"exemptions"}) == ConfigFile().model_dump(exclude={"exemptions"})


def test_policy_values_reach_the_config_file():
    objects = render_chart({
        "mode": "strip", "allowOptOut": False, "failureMode": "deny",
        "readinessGate": {"enabled": False, "conditionType": "example.com/ready", "podLabel": "example.com/gated"},
        "exemptions": [{"namespace": "monitoring"}],
        "replacementTolerations": [{"key": "example.com/maintenance", "operator": "Exists", "effect": "NoExecute"}],
        "webhook": {"server": {"maxBodyBytes": 4096}},
        "controller": {"leaderElection": {"leaseDurationSeconds": 30}, "workers": 8},
    })
    policy = config_of(objects).to_policy()
    assert (policy.mode.value, policy.allow_opt_out, policy.readiness_gate) == ("strip", False, False)
    assert (policy.gate_condition_type, policy.gate_label) == ("example.com/ready", "example.com/gated")
    assert [e.namespace for e in policy.exemptions] == ["monitoring"]
    assert policy.replacement_tolerations == (
        {"key": "example.com/maintenance", "operator": "Exists", "effect": "NoExecute"},)
    config = config_of(objects)
    assert (config.failure_mode, config.server.max_body_bytes, config.controller.lease_duration) == (
        "deny", 4096, 30)
    assert config.controller.workers == 8


def test_every_controller_flag_an_operator_tunes_has_a_value():
    objects = render_chart({"controller": {"gracePeriodSeconds": 90, "recycleRate": 2.5, "releaseAfterSeconds": 0,
                                           "ciliumNamespace": "cilium", "ciliumAgentSelector": "app=cilium-agent",
                                           "dryRun": True, "metricsPort": 9091}})
    args = container(objects, CONTROLLER)["args"]
    parsed = cli.build_parser().parse_args(args)
    assert (parsed.grace_period, parsed.recycle_rate, parsed.release_after) == (90, 2.5, 0)
    assert (parsed.cilium_namespace, parsed.cilium_agent_selector) == ("cilium", "app=cilium-agent")
    assert parsed.dry_run is True and parsed.metrics_port == 9091
    # Every option of `controller` is set by the chart, except those for running it by hand and those the config
    # file holds: controller.unmanaged (test_unmanaged_values_reach_the_config_file_and_the_rbac) and
    # controller.workers (test_policy_values_reach_the_config_file).
    by_hand = {"-h", "--help", "--kubeconfig", "--context", "--release-all"}
    in_the_file = {"--unmanaged-scope", "--unmanaged-action", "--namespace", "--exclude-namespace", "--selector",
                   "--workers"}
    [commands] = [a for a in cli.build_parser()._actions if a.dest == "command"]
    controller_parser = commands.choices["controller"]
    options = {o for action in controller_parser._actions for o in action.option_strings} - by_hand - in_the_file
    assert options == set(flags(args[1:]))


@pytest.mark.parametrize("unmanaged, component", [
    pytest.param({"scope": "all"}, "unmanaged-observe", id="all-observe"),
    pytest.param({"scope": "all", "action": "recycle"}, "unmanaged-recycle", id="all-recycle"),
    pytest.param({"scope": "gated", "action": "observe"}, None, id="gated-needs-nothing-more"),
])
def test_unmanaged_values_reach_the_config_file_and_the_rbac(unmanaged, component):
    values = {"controller": {"unmanaged": {**unmanaged, "namespaces": ["shop"], "selector": "app=web"}}}
    objects = render_chart(values)
    args = cli.build_parser().parse_args(container(objects, CONTROLLER)["args"])
    settings = controller_verb.unmanaged_settings(args, config_of(objects))
    assert (settings.scope, settings.action, settings.pods.namespaces, settings.pods.selector) == (
        unmanaged["scope"], unmanaged.get("action"), ("shop",), "app=web")
    extra = COMPONENT_GRANTS[component] if component else set()
    assert grants(objects, CONTROLLER) == CONTROLLER_GRANTS | extra  # as the kustomize component grants


def test_installation_values_reach_the_objects():
    objects = render_chart({
        "image": {"repository": "registry.example.com/csg", "digest": "sha256:" + "a" * 64},
        "webhook": {"replicas": 3, "port": 9550, "timeoutSeconds": 3, "gateTimeoutSeconds": 1,
                    "podDisruptionBudget": {"maxUnavailable": 2},
                    "resources": {"requests": {"cpu": "100m", "memory": "96Mi"},
                                  "limits": {"cpu": "1", "memory": "512Mi"}}},
        "controller": {"replicas": 1, "podDisruptionBudget": {"enabled": False}},
    })
    webhook = find(objects, "Deployment", WEBHOOK)
    box = container(objects, WEBHOOK)
    assert webhook["spec"]["replicas"] == 3
    assert box["image"] == "registry.example.com/csg@sha256:" + "a" * 64
    assert box["resources"]["limits"] == {"cpu": "1", "memory": "512Mi"}
    (port,) = box["ports"]
    assert port["containerPort"] == port["hostPort"] == 9550
    assert flags(box["args"][1:])["--port"] == "9550"
    assert {hook["name"]: hook["timeoutSeconds"] for _, hook in webhooks(objects)} == {
        "mutate.startupguard.io": 3, "validate.startupguard.io": 3, "gate.startupguard.io": 1}
    assert find(objects, "PodDisruptionBudget", WEBHOOK)["spec"]["maxUnavailable"] == 2
    assert find(objects, "Deployment", CONTROLLER)["spec"]["replicas"] == 1
    assert not [o for o in kinds(objects, "PodDisruptionBudget") if o["metadata"]["name"] == CONTROLLER]


def test_kinds_set_the_config_file_and_the_rules_of_both_workload_webhooks():
    objects = render_chart({"kinds": ["Deployment", "DaemonSet", "CronJob", "Pod"]})
    assert config_of(objects).to_policy().kinds == {"Deployment", "DaemonSet", "CronJob", "Pod"}
    for _, hook in webhooks(objects):
        if hook["name"] != "gate.startupguard.io":
            assert hook["rules"][0]["resources"] == ["cronjobs", "daemonsets", "deployments", "pods"]


@pytest.mark.parametrize("readiness_gate, entry", [
    pytest.param({"injectAt": "pod"}, True, id="pod"),
    pytest.param({"injectAt": "template"}, False, id="template"),
    pytest.param({"enabled": False}, False, id="gate-off"),
])
def test_the_pod_gate_entry_is_there_only_when_pods_get_the_gate(readiness_gate, entry):
    objects = render_chart({"readinessGate": readiness_gate})
    names = [hook["name"] for _, hook in webhooks(objects)]
    assert ("gate.startupguard.io" in names) is entry
    assert config_of(objects).readiness_gate.inject_at.value == readiness_gate.get("injectAt", "pod")


def test_release_namespace_is_used_everywhere():
    objects = render_chart({"certificates": "cert-manager"}, namespace="guard")
    assert {o["metadata"].get("namespace") for o in objects} == {"guard", None}
    for _, hook in webhooks(objects):
        assert hook["clientConfig"]["service"]["namespace"] == "guard"
        assert not selector_matches(hook["namespaceSelector"], {"kubernetes.io/metadata.name": "guard"})
        assert selector_matches(hook["namespaceSelector"], {"kubernetes.io/metadata.name": "cilium-startup-guard"})
    assert "cilium-startup-guard-webhook.guard.svc" in find(objects, "Certificate", WEBHOOK)["spec"]["dnsNames"]
    assert find(objects, "MutatingWebhookConfiguration", "cilium-startup-guard")["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "guard/cilium-startup-guard-webhook"}


@pytest.mark.parametrize("labels, kept_away", [
    pytest.param({"k8s-app": "cilium"}, True, id="single-label"),
    pytest.param({"k8s-app": "kube-proxy", "tier": "node"}, True, id="single-label-among-others"),
    pytest.param({"app": "node-agent"}, True, id="single-label-other-key"),
    pytest.param({"team": "storage", "tier": "node"}, False, id="multi-label-exemption"),
    pytest.param({"k8s-app": "fluent-bit"}, False, id="namespaced-exemption"),
    pytest.param({"k8s-app": "ebs-csi-node"}, False, id="not-exempt"),
    pytest.param({}, False, id="no-labels"),
])
def test_object_selector_keeps_away_only_what_the_policy_exempts(labels, kept_away):
    # Single-label exemptions become objectSelector expressions; multi-label and namespaced ones cannot be
    # spelled there and are left to the policy. Whatever the selector keeps away, the policy exempts.
    exemptions = [{"matchLabels": {"k8s-app": "cilium"}}, {"matchLabels": {"k8s-app": "kube-proxy"}},
                  {"matchLabels": {"app": "node-agent"}}, {"matchLabels": {"team": "storage", "tier": "node"}},
                  {"namespace": "kube-system", "matchLabels": {"k8s-app": "fluent-bit"}}]
    objects = render_chart({"exemptions": exemptions, "webhook": {"extraObjectSelectorExpressions": []}})
    policy = config_of(objects).to_policy()
    for _, hook in webhooks(objects):
        assert (not selector_matches(hook["objectSelector"], labels)) is kept_away
        if kept_away:
            assert any(e.matches(ObjectRef("default", "example"), labels, {}) for e in policy.exemptions)


def test_namespace_only_exemptions_keep_the_namespace_away_from_the_webhook():
    objects = render_chart({"exemptions": [{"namespace": "kube-system"}, {"namespace": "monitoring", "name": "x"}]})
    for _, hook in webhooks(objects):
        assert not selector_matches(hook["namespaceSelector"], {"kubernetes.io/metadata.name": "kube-system"})
        assert selector_matches(hook["namespaceSelector"], {"kubernetes.io/metadata.name": "monitoring"})


# --- helm upgrade ---------------------------------------------------------------------------------------------------

def pod_annotations(objects: list[Object], deployment: str) -> dict[str, str]:
    return dict(find(objects, "Deployment", deployment)["spec"]["template"]["metadata"].get("annotations", {}))


def test_a_policy_change_rolls_the_controller_but_not_the_webhook_which_reloads_it():
    before, after = render_chart(), render_chart({"mode": "deny", "exemptions": []})
    assert pod_annotations(before, WEBHOOK) == pod_annotations(after, WEBHOOK)
    assert pod_annotations(before, CONTROLLER) != pod_annotations(after, CONTROLLER)


def test_a_server_setting_change_rolls_the_webhook():
    before, after = render_chart(), render_chart({"webhook": {"server": {"maxBodyBytes": 4194304}}})
    assert pod_annotations(before, WEBHOOK)["checksum/server-config"] != (
        pod_annotations(after, WEBHOOK)["checksum/server-config"])


def test_the_webhook_reloads_every_config_key_outside_server(tmp_path):
    # Why a policy change need not roll the webhook: reload_settings re-reads the policy and failureMode.
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"mode": "warn", "failureMode": "allow"}))
    current = Settings(config_file=path)
    path.write_text(yaml.safe_dump({"mode": "deny", "failureMode": "deny", "allowOptOut": False,
                                    "ciliumTaintKey": "example.com/not-ready", "exemptions": [],
                                    "readinessGate": {"podLabel": "example.com/gated"},
                                    "replacementTolerations": [{"key": "example.com/x", "operator": "Exists"}]}))
    fresh, waiting = reload_settings(current)
    assert waiting == ()  # nothing of the file waits for a restart
    assert (fresh.policy.mode.value, fresh.allow_on_error, fresh.policy.allow_opt_out) == ("deny", False, False)
    assert (fresh.policy.cilium_taint_key, fresh.policy.exemptions, fresh.policy.gate_label) == (
        "example.com/not-ready", (), "example.com/gated")
    assert fresh.policy.replacement_tolerations == ({"key": "example.com/x", "operator": "Exists"},)


def test_certs_job_keeps_its_name_across_upgrades_that_do_not_change_it():
    (install,) = kinds(render_chart(), "Job")
    (upgrade,) = kinds(render_chart({"mode": "deny"}, is_upgrade=True), "Job")
    assert install["metadata"]["name"] == upgrade["metadata"]["name"]


def test_certs_job_gets_a_new_name_when_its_immutable_pod_changes():
    (before,) = kinds(render_chart(), "Job")
    (after,) = kinds(render_chart({"image": {"tag": "0.2.0"}}, is_upgrade=True), "Job")
    assert before["metadata"]["name"] != after["metadata"]["name"]


def test_certs_job_is_a_release_object_cleaned_up_after_it_finishes():
    (job,) = kinds(render_chart(), "Job")
    # Not a hook: `helm install --wait` would wait for webhook pods that need the Secret the Job writes.
    assert not [k for k in job["metadata"].get("annotations", {}) if k.startswith("helm.sh/")]
    assert 0 < job["spec"]["ttlSecondsAfterFinished"] <= 86400


def test_upgrade_never_writes_ca_bundle():
    # caBundle belongs to cert-manager's injector or the certs Job; a rendered one would undo them on upgrade.
    for values in ({}, {"certificates": "cert-manager"}):
        for _, hook in webhooks(render_chart(values, is_upgrade=True)):
            assert "caBundle" not in hook["clientConfig"]


# --- the install docs ---------------------------------------------------------------------------------------------

INSTALL_DOCS = CHART.parents[2] / "docs" / "install.md"


def test_install_docs_example_values_render():
    text = INSTALL_DOCS.read_text()
    (example,) = re.findall(r"```yaml\n# my-values.yaml\n(.*?)```", text, flags=re.DOTALL)
    objects = render_chart(yaml.safe_load(example))
    assert config_of(objects).mode.value == "strip"


def test_install_docs_helm_commands_name_the_chart():
    commands = [line for line in INSTALL_DOCS.read_text().splitlines() if line.lstrip().startswith("helm ")]
    assert commands
    for line in commands:
        paths = re.findall(r"(?<![\w/])manifests/[\w./-]+", line)
        assert all((CHART.parents[2] / path / "Chart.yaml").exists() for path in paths), line
