"""Invariants of the rendered manifests (every overlay): wiring, caBundle, RBAC, pod security, bootstrap."""

from __future__ import annotations

import base64
import datetime
import re
import shutil
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from tests.docs_text import block_with, doc
from tests.installs import BY_NAME, names
from tests.manifest_render import KUBECTL, OVERLAYS, ROOT, build, normalized, prepare, render, render_kubectl
from tests.objects import (
    CERTS_JOB_GRANTS,
    CILIUM_CONFIG_READ,
    CILIUM_NAMESPACE,
    CONTROLLER_RBAC,
    CONTROLLER_RBAC_ALL_RECYCLE,
)
from webhook import certs, cli
from webhook.app import create_app
from webhook.cli import certs as certs_verb
from webhook.cli import controller as controller_verb
from webhook.config import ConfigFile, Settings, parse_config
from webhook.policy import CILIUM_TAINT_KEY, PolicyConfig, is_blanket_noexecute
from webhook.workloads import KINDS

NAMESPACE = "cilium-startup-guard"
WEBHOOK = "cilium-startup-guard-webhook"
CONTROLLER = "cilium-startup-guard-controller"
CERTS_JOB = "cilium-startup-guard-certs"
WEBHOOK_CONFIGURATION = "cilium-startup-guard"
TLS_SECRET = "cilium-startup-guard-webhook-tls"
LEASE = "cilium-startup-guard-controller"
WEBHOOK_PORT = 9449
GATE_WEBHOOK = "gate.startupguard.io"
# The patch an overlay adds to review every kind, as docs/configuration.md "Kinds" gives it.
KINDS_PATCH = block_with(doc("configuration.md"), "/webhooks/0/rules/0/resources", "yaml")

BASE_OBJECTS = {
    ("Namespace", NAMESPACE),
    ("ConfigMap", "cilium-startup-guard-config"),
    ("ServiceAccount", WEBHOOK),
    ("Service", WEBHOOK),
    ("Deployment", WEBHOOK),
    ("PodDisruptionBudget", WEBHOOK),
    ("MutatingWebhookConfiguration", WEBHOOK_CONFIGURATION),
    ("ValidatingWebhookConfiguration", WEBHOOK_CONFIGURATION),
    ("ServiceAccount", CONTROLLER),
    ("ClusterRole", CONTROLLER),
    ("ClusterRoleBinding", CONTROLLER),
    ("Role", "cilium-startup-guard-controller-leader-election"),
    ("RoleBinding", "cilium-startup-guard-controller-leader-election"),
    ("Deployment", CONTROLLER),
    ("PodDisruptionBudget", CONTROLLER),
    ("NetworkPolicy", CONTROLLER),
}
CERT_MANAGER_OBJECTS = {
    ("Issuer", "cilium-startup-guard-selfsigned"),
    ("Certificate", "cilium-startup-guard-ca"),
    ("Issuer", "cilium-startup-guard-ca"),
    ("Certificate", WEBHOOK),
}
CERTIFICATE_OBJECTS = {
    "cert-manager": CERT_MANAGER_OBJECTS,
    "self-managed": {("Secret", TLS_SECRET)},
    "self-managed-job": {
        ("ServiceAccount", CERTS_JOB), ("Role", CERTS_JOB), ("RoleBinding", CERTS_JOB),
        ("ClusterRole", CERTS_JOB), ("ClusterRoleBinding", CERTS_JOB), ("Job", CERTS_JOB), ("CronJob", CERTS_JOB),
    },
}
MONITORING_OBJECTS = {
    ("Service", "cilium-startup-guard-controller-metrics"),
    ("ServiceMonitor", WEBHOOK),
    ("ServiceMonitor", CONTROLLER),
    ("PrometheusRule", "cilium-startup-guard"),
    ("ConfigMap", "cilium-startup-guard-grafana-dashboard"),
}
# The controller's scope `all` (its kustomize components, or the chart's controller.unmanaged.scope).
UNMANAGED_OBJECTS = {
    ("Role", "cilium-startup-guard-controller-cilium-config"),
    ("RoleBinding", "cilium-startup-guard-controller-cilium-config"),
}
# The Helm chart's certs Job carries a hash of its pod template (tests/test_helm_chart.py says why).
HASHED_JOB_NAME = re.compile(rf"{CERTS_JOB}(-[0-9a-f]{{10}})?")
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration",
                  "ValidatingWebhookConfiguration"}

# (namespace or "" for cluster-wide, apiGroup, resource, verb, resourceName or None), one line per grant.
CONTROLLER_GRANTS = {
    *(("", "", "pods", verb, None) for verb in ("get", "list", "watch")),
    ("", "", "pods/status", "patch", None),
    ("", "", "pods/eviction", "create", None),
    *(("", "cilium.io", "ciliumendpoints", verb, None) for verb in ("get", "list", "watch")),
    *(("", "", "nodes", verb, None) for verb in ("list", "watch")),
    ("", "events.k8s.io", "events", "create", None),
    (NAMESPACE, "coordination.k8s.io", "leases", "create", None),
    *((NAMESPACE, "coordination.k8s.io", "leases", verb, LEASE) for verb in ("get", "update")),
}

# What each kustomize component for the controller's scope `all` adds to those grants, and nothing else.
CILIUM_CONFIG_GRANT = (CILIUM_NAMESPACE, "", "configmaps", "get", "cilium-config")
COMPONENT_GRANTS = {
    "unmanaged-observe": {CILIUM_CONFIG_GRANT},
    "unmanaged-recycle": {CILIUM_CONFIG_GRANT, *(("", "apps", resource, "get", None) for resource in (
        "replicasets", "statefulsets", "daemonsets")), ("", "batch", "jobs", "get", None)},
}

# Host ports the webhook must not take (docs/install.md lists them): kubelet, kube-proxy and the control plane,
# Cilium's documented ports, the AWS VPC CNI, other webhooks' usual ports, the NodePort and ephemeral ranges.
RESERVED_HOST_PORTS = {
    10248, 10249, 10250, 10255, 10256, 10257, 10259,
    4240, 4244, 4245, 4250, 4251, 6060, 6061, 6062, 9234, 9878, 9879, 9890, 9891, 9893, 9901,
    9962, 9963, 9964, 9965, 51871,
    61678, 61679,
    8443, 9443, 10260,
    *range(30000, 32768), *range(32768, 61000),
}

# Labels of real DaemonSets, from their upstream manifests (Cilium's Helm chart, EKS add-ons).
CILIUM_AGENT_LABELS = {"k8s-app": "cilium", "app.kubernetes.io/name": "cilium-agent",
                       "app.kubernetes.io/part-of": "cilium"}
CILIUM_ENVOY_LABELS = {"k8s-app": "cilium-envoy", "app.kubernetes.io/name": "cilium-envoy",
                       "app.kubernetes.io/part-of": "cilium"}
EBS_CSI_NODE_LABELS = {"app.kubernetes.io/name": "aws-ebs-csi-driver", "app.kubernetes.io/component": "csi-driver"}


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare(tmp_path_factory.mktemp("manifests"))


@pytest.fixture(scope="module")
def with_components(manifests: Path) -> dict[str, list[dict[str, Any]]]:
    """The cert-manager install with each controller component, as a user's kustomization adds it."""
    result = {}
    for component in COMPONENT_GRANTS:
        directory = manifests.parent / f"with-{component}"
        directory.mkdir()
        (directory / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": ["../manifests/overlays/cert-manager"],
            "components": [f"../manifests/components/{component}"]}))
        result[component] = render(directory)
    return result


@pytest.fixture(scope="module")
def rendered(rendered_installs) -> dict[str, list[dict[str, Any]]]:
    """Every install (kustomize overlays and Helm chart variants, tests/installs.py) by name."""
    return rendered_installs


# --- helpers ---------------------------------------------------------------------------------------------

def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        spec = obj.get("spec", {})
        if obj["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if "template" in spec and obj["kind"] in ("Deployment", "Job", "CronJob", "DaemonSet", "StatefulSet"):
            yield f"{obj['kind']}/{obj['metadata']['name']}", spec["template"]["spec"]


def container(objects: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    containers = find(objects, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def flags(args: list[str]) -> dict[str, str | None]:
    """`--name=value` and `--name value` alike; a flag with no value maps to None."""
    result: dict[str, str | None] = {}
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if eq:
            result[name] = value
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            result[name] = args[i + 1]
            i += 1
        else:
            result[name] = None
        i += 1
    return result


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kubernetes label selector semantics: matchLabels and matchExpressions, all must hold."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        k, op, values = expression["key"], expression["operator"], expression.get("values", [])
        ok = {"In": k in labels and labels[k] in values, "NotIn": k not in labels or labels[k] not in values,
              "Exists": k in labels, "DoesNotExist": k not in labels}[op]
        if not ok:
            return False
    return True


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, str]) -> bool:
    """Kubernetes toleration semantics (k8s.io/api core/v1 Toleration.ToleratesTaint)."""
    if toleration.get("effect") and toleration["effect"] != taint["effect"]:
        return False
    if toleration.get("key") and toleration["key"] != taint["key"]:
        return False
    if toleration.get("operator", "Equal") == "Exists":
        return True
    return bool(toleration.get("value", "") == taint.get("value", ""))


def grants(objects: list[dict[str, Any]], service_account: str) -> set[tuple[str, str, str, str, str | None]]:
    """Every (namespace, group, resource, verb, resourceName) the ServiceAccount is bound to."""
    roles = {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
             for o in objects if o["kind"] in ("Role", "ClusterRole")}
    result = set()
    for binding in (o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == service_account and s["namespace"] == NAMESPACE
                   for s in binding["subjects"]):
            continue
        scope = binding["metadata"].get("namespace", "")
        ref = binding["roleRef"]
        role = roles[(ref["kind"], scope if ref["kind"] == "Role" else "", ref["name"])]
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames") or [None]:
                            result.add((scope, group, resource, verb, name))
    return result


def webhooks(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        configuration = find(objects, kind, WEBHOOK_CONFIGURATION)
        assert configuration["webhooks"], kind
        for hook in configuration["webhooks"]:
            yield kind, hook


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- rendering ---------------------------------------------------------------------------------------------

def expected_objects(install: str) -> set[tuple[str, str]]:
    spec = BY_NAME[install]
    # Helm keeps its release in the namespace, so the namespace exists before the chart does.
    base = BASE_OBJECTS - {("Namespace", NAMESPACE)} if spec.helm else BASE_OBJECTS
    return (base | CERTIFICATE_OBJECTS[spec.certificates] | (MONITORING_OBJECTS if spec.monitoring else set())
            | (UNMANAGED_OBJECTS if spec.unmanaged else set()))


def identity(obj: dict[str, Any]) -> tuple[str, str]:
    name = obj["metadata"]["name"]
    if obj["kind"] == "Job" and HASHED_JOB_NAME.fullmatch(name):
        name = CERTS_JOB
    return obj["kind"], name


@pytest.mark.parametrize("install", names())
def test_install_renders_exactly_the_expected_objects(rendered, install):
    assert sorted(identity(o) for o in rendered[install]) == sorted(expected_objects(install))


@pytest.mark.parametrize("install", names())
def test_namespaced_objects_live_in_the_webhook_namespace(rendered, install):
    for obj in rendered[install]:
        namespace = obj["metadata"].get("namespace")
        if (obj["kind"], obj["metadata"]["name"]) in UNMANAGED_OBJECTS:  # it grants a read of Cilium's ConfigMap
            assert namespace == CILIUM_NAMESPACE
            continue
        assert namespace == (None if obj["kind"] in CLUSTER_SCOPED else NAMESPACE), obj["metadata"]["name"]


@pytest.mark.slow
@pytest.mark.skipif(KUBECTL is None, reason="compares the fallback loader with kubectl kustomize")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_fallback_loader_renders_what_kubectl_renders(manifests, overlay):
    path = manifests / "overlays" / overlay
    assert normalized(build(path)) == normalized(render_kubectl(path))


@pytest.mark.slow
@pytest.mark.skipif(KUBECTL is None, reason="compares the fallback loader with kubectl kustomize")
@pytest.mark.parametrize("component", COMPONENT_GRANTS)
def test_fallback_loader_renders_the_controller_components_as_kubectl_does(manifests, with_components, component):
    path = manifests.parent / f"with-{component}"
    assert normalized(build(path)) == normalized(with_components[component])


def test_self_managed_overlay_needs_the_generated_certificates(tmp_path):
    # Without `certs --kustomize` the overlay must fail loudly, not install a webhook with no certificate.
    bare = tmp_path / "manifests"
    shutil.copytree(ROOT / "manifests", bare, ignore=shutil.ignore_patterns("certs"))
    with pytest.raises((FileNotFoundError, RuntimeError)):
        build(bare / "overlays" / "self-managed")


def test_generated_certificates_are_ignored_by_git():
    ignore = (ROOT / "manifests" / "overlays" / "self-managed" / ".gitignore").read_text().split()
    assert "certs/" in ignore


# --- Service -> Deployment -> webhook wiring ---------------------------------------------------------------

@pytest.mark.parametrize("install", names())
def test_service_routes_to_the_webhook_container_port(rendered, install):
    objects = rendered[install]
    service = find(objects, "Service", WEBHOOK)
    deployment = find(objects, "Deployment", WEBHOOK)
    controller = find(objects, "Deployment", CONTROLLER)
    assert selector_matches({"matchLabels": service["spec"]["selector"]},
                            deployment["spec"]["template"]["metadata"]["labels"])
    assert not selector_matches({"matchLabels": service["spec"]["selector"]},
                                controller["spec"]["template"]["metadata"]["labels"])
    (port,) = service["spec"]["ports"]
    (container_port,) = container(objects, WEBHOOK)["ports"]
    assert port["targetPort"] in (container_port["name"], container_port["containerPort"])
    assert container_port["containerPort"] == WEBHOOK_PORT
    assert flags(container(objects, WEBHOOK)["args"][1:])["--port"] == str(WEBHOOK_PORT)


@pytest.mark.parametrize("install", names())
def test_webhook_configurations_call_the_service(rendered, install):
    service = find(rendered[install], "Service", WEBHOOK)
    (port,) = service["spec"]["ports"]
    for _, hook in webhooks(rendered[install]):
        ref = hook["clientConfig"]["service"]
        assert (ref["name"], ref["namespace"], ref.get("port", 443)) == (
            service["metadata"]["name"], service["metadata"]["namespace"], port["port"])
        assert "url" not in hook["clientConfig"]


@pytest.mark.parametrize("install", names())
def test_service_name_is_the_one_the_certificates_are_made_for(rendered, install):
    service = find(rendered[install], "Service", WEBHOOK)
    assert (service["metadata"]["name"], service["metadata"]["namespace"]) == (
        certs.DEFAULT_SERVICE, certs.DEFAULT_NAMESPACE)
    assert certs.DEFAULT_SECRET == TLS_SECRET
    assert certs.DEFAULT_WEBHOOK_CONFIGURATION == WEBHOOK_CONFIGURATION


@pytest.mark.parametrize("install", names())
def test_every_webhook_and_probe_path_is_a_route_of_the_app(rendered, install):
    routes = {(route.path, method) for route in create_app(Settings()).routes
              for method in getattr(route, "methods", ())}
    objects = rendered[install]
    for _, hook in webhooks(objects):
        assert (hook["clientConfig"]["service"]["path"], "POST") in routes
    webhook = container(objects, WEBHOOK)
    assert webhook["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert webhook["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        get = webhook[probe]["httpGet"]
        assert (get["path"], "GET") in routes
        assert get["scheme"] == "HTTPS"
        assert get["port"] == webhook["ports"][0]["name"]


@pytest.mark.parametrize("install", names())
def test_webhook_serves_the_mounted_certificate(rendered, install):
    deployment = find(rendered[install], "Deployment", WEBHOOK)
    pod = deployment["spec"]["template"]["spec"]
    webhook = container(rendered[install], WEBHOOK)
    args = flags(webhook["args"][1:])
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == TLS_SECRET
    (mount,) = [m for m in webhook["volumeMounts"] if m["name"] == volume["name"]]
    assert "subPath" not in mount  # a subPath mount never sees a renewed Secret
    files = {item["path"] for item in volume["secret"]["items"]}
    assert args["--tls-cert"] == f"{mount['mountPath']}/tls.crt"
    assert args["--tls-key"] == f"{mount['mountPath']}/tls.key"
    assert files == {"tls.crt", "tls.key"}


# --- admission registration ------------------------------------------------------------------------------

def workload_webhooks(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    return ((kind, hook) for kind, hook in webhooks(objects) if hook["name"] != GATE_WEBHOOK)


def gate_webhook(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (hook,) = [h for _, h in webhooks(objects) if h["name"] == GATE_WEBHOOK]
    return hook


@pytest.mark.parametrize("install", names())
def test_workload_webhooks_see_create_and_update_of_the_configured_kinds(rendered, install):
    kinds = parse_config(config_text(rendered[install]), "ConfigMap").to_policy().kinds
    for kind, hook in workload_webhooks(rendered[install]):
        assert hook["rules"] == [{"apiGroups": ["", "apps", "batch"], "apiVersions": ["v1"],
                                  "operations": ["CREATE", "UPDATE"],
                                  "resources": sorted(KINDS[k].plural for k in kinds), "scope": "Namespaced"}], kind
        assert {c["name"] for c in hook["matchConditions"]} == {"not-made-by-a-controller",
                                                                 "pods-and-jobs-at-creation"}


@pytest.mark.parametrize("install", names())
def test_every_webhook_is_fully_qualified_and_answers_v1_reviews(rendered, install):
    for kind, hook in webhooks(rendered[install]):
        assert hook["sideEffects"] == "None"
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["matchPolicy"] == "Equivalent"
        assert 1 <= hook["timeoutSeconds"] <= 10
        assert hook["name"].count(".") >= 2, kind  # kube-apiserver wants a fully qualified name


@pytest.mark.parametrize("install", names())
def test_gate_webhook_sees_pod_creation_only_and_fails_open_fast(rendered, install):
    hook = gate_webhook(rendered[install])
    assert hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                              "resources": ["pods"], "scope": "Namespaced"}]
    assert hook["clientConfig"]["service"]["path"] == "/mutate"
    assert hook["failurePolicy"] == "Ignore"  # in every overlay, strict included
    assert hook["timeoutSeconds"] <= 3
    assert {c["name"] for c in hook["matchConditions"]} == {"made-by-a-daemonset", "not-on-the-host-network"}


@pytest.mark.parametrize("install", names())
def test_gate_webhook_has_the_exemptions_of_the_workload_webhook(rendered, install):
    (_, workload), *_ = workload_webhooks(rendered[install])
    hook = gate_webhook(rendered[install])
    assert hook["objectSelector"] == workload["objectSelector"]
    assert hook["namespaceSelector"] == workload["namespaceSelector"]


@pytest.mark.parametrize("install", names())
def test_mutating_webhooks_are_reinvoked_if_needed(rendered, install):
    objects = rendered[install]
    hooks = find(objects, "MutatingWebhookConfiguration", WEBHOOK_CONFIGURATION)["webhooks"]
    assert [h["reinvocationPolicy"] for h in hooks] == ["IfNeeded", "IfNeeded"]
    # A field of mutating webhooks only; kube-apiserver rejects it on a validating one.
    validating = find(objects, "ValidatingWebhookConfiguration", WEBHOOK_CONFIGURATION)["webhooks"]
    assert all("reinvocationPolicy" not in h for h in validating)


@pytest.mark.parametrize("install", names())
def test_failure_policy_is_ignore_except_for_workloads_in_strict(rendered, install):
    expected = "Fail" if BY_NAME[install].strict else "Ignore"
    assert {hook["failurePolicy"] for _, hook in workload_webhooks(rendered[install])} == {expected}


@pytest.mark.slow
def test_the_documented_kinds_patch_turns_on_every_kind(manifests):
    overlay = manifests / "overlays" / "every-kind"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(f"resources: [../self-managed-job]\n{KINDS_PATCH}")
    objects = render(overlay)
    for _, hook in workload_webhooks(objects):
        assert set(hook["rules"][0]["resources"]) == {info.plural for info in KINDS.values()}
    assert gate_webhook(objects)["rules"][0]["resources"] == ["pods"]


@pytest.mark.parametrize("install", names())
def test_namespace_selector_leaves_out_the_webhook_namespace_only(rendered, install):
    for _, hook in webhooks(rendered[install]):
        selector = hook["namespaceSelector"]
        assert not selector_matches(selector, {"kubernetes.io/metadata.name": NAMESPACE})
        for other in ("kube-system", "default", "istio-system"):
            assert selector_matches(selector, {"kubernetes.io/metadata.name": other})


@pytest.mark.parametrize("install", names())
def test_object_selector_skips_cilium_daemonsets_but_not_others(rendered, install):
    for _, hook in webhooks(rendered[install]):
        selector = hook["objectSelector"]
        assert not selector_matches(selector, CILIUM_AGENT_LABELS)
        assert not selector_matches(selector, CILIUM_ENVOY_LABELS)
        assert not selector_matches(selector, {"k8s-app": "cilium"})
        assert selector_matches(selector, EBS_CSI_NODE_LABELS)
        assert selector_matches(selector, {})


@pytest.mark.parametrize("install", names())
def test_object_selector_skips_only_daemonsets_the_policy_exempts(rendered, install):
    config = parse_config(config_text(rendered[install]), "ConfigMap")
    exempted = {dict(e.labels).get("k8s-app") for e in config.to_policy().exemptions}
    for _, hook in webhooks(rendered[install]):
        for expression in hook["objectSelector"]["matchExpressions"]:
            if expression["key"] == "k8s-app":
                assert set(expression["values"]) <= exempted


# --- certificates and caBundle ------------------------------------------------------------------------------

@pytest.mark.parametrize("install", names(certificates="cert-manager"))
def test_cert_manager_injects_the_ca_of_the_serving_certificate(rendered, install):
    objects = rendered[install]
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        configuration = find(objects, kind, WEBHOOK_CONFIGURATION)
        source = configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        namespace, _, name = source.partition("/")
        certificate = find(objects, "Certificate", name)
        assert certificate["metadata"]["namespace"] == namespace
        assert certificate["spec"]["secretName"] == TLS_SECRET
        assert all("caBundle" not in hook["clientConfig"] for hook in configuration["webhooks"])


@pytest.mark.parametrize("install", names(certificates="cert-manager"))
def test_cert_manager_certificate_covers_the_name_kube_apiserver_calls(rendered, install):
    objects = rendered[install]
    serving = find(objects, "Certificate", WEBHOOK)["spec"]
    assert f"{WEBHOOK}.{NAMESPACE}.svc" in serving["dnsNames"]
    assert set(serving["dnsNames"]) == set(certs.service_dns_names())
    # Serving certificate <- CA Issuer <- CA Certificate <- self-signed Issuer.
    ca_issuer = find(objects, serving["issuerRef"]["kind"], serving["issuerRef"]["name"])["spec"]
    ca_certificate = next(o["spec"] for o in objects
                          if o["kind"] == "Certificate" and o["spec"]["secretName"] == ca_issuer["ca"]["secretName"])
    assert ca_certificate["isCA"] is True
    root = find(objects, ca_certificate["issuerRef"]["kind"], ca_certificate["issuerRef"]["name"])["spec"]
    assert root == {"selfSigned": {}}
    # A renewed CA keeps its key: serving certificates signed before still verify against the new caBundle.
    assert ca_certificate["privateKey"]["rotationPolicy"] == "Never"


def test_self_managed_secret_and_ca_bundle_belong_together(rendered):
    objects = rendered["self-managed"]
    secret = find(objects, "Secret", TLS_SECRET)
    assert secret["type"] == "kubernetes.io/tls"
    data = {k: base64.b64decode("".join(v.split())) for k, v in secret["data"].items()}
    assert set(data) == {"tls.crt", "tls.key", "ca.crt"}
    serving = x509.load_pem_x509_certificate(data["tls.crt"])
    for kind, hook in webhooks(objects):
        bundle = base64.b64decode(hook["clientConfig"]["caBundle"])
        assert bundle == data["ca.crt"], kind
        cas = x509.load_pem_x509_certificates(bundle)
        assert any(_issued_by(serving, ca) for ca in cas)
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"{WEBHOOK}.{NAMESPACE}.svc" in names.get_values_for_type(x509.DNSName)
    assert serving.not_valid_after_utc > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=300)
    assert "annotations" not in find(objects, "MutatingWebhookConfiguration", WEBHOOK_CONFIGURATION)["metadata"]


@pytest.mark.parametrize("install", names(certificates="self-managed-job"))
def test_self_managed_job_leaves_secret_and_ca_bundle_to_the_job(rendered, install):
    objects = rendered[install]
    assert not [o for o in objects if o["kind"] == "Secret"]
    for _, hook in webhooks(objects):
        assert "caBundle" not in hook["clientConfig"]


def certs_pod(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (pod,) = [p for n, p in pod_specs(objects) if n.startswith(f"{kind}/{CERTS_JOB}")]
    return pod


@pytest.mark.parametrize("install", names(certificates="self-managed-job"))
@pytest.mark.parametrize("kind", ["Job", "CronJob"])
def test_certs_job_uses_the_in_cluster_interface(rendered, install, kind):
    # cilium-startup-guard certs --in-cluster --namespace NS --service NAME --secret NAME
    #   --webhook-configuration NAME [--renew-before DAYS]
    objects = rendered[install]
    pod = certs_pod(objects, kind)
    (job,) = pod["containers"]
    assert job["args"][0] == "certs"
    args = flags(job["args"][1:])
    assert set(args) == {"--in-cluster", "--namespace", "--service", "--secret", "--webhook-configuration",
                         "--renew-before"}
    assert args["--in-cluster"] is None
    assert args["--namespace"] == "$(POD_NAMESPACE)"
    (env,) = [e for e in job["env"] if e["name"] == "POD_NAMESPACE"]
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert args["--service"] == find(objects, "Service", WEBHOOK)["metadata"]["name"]
    assert args["--secret"] == TLS_SECRET
    assert args["--webhook-configuration"] == WEBHOOK_CONFIGURATION
    assert 0 < int(args["--renew-before"] or "") < certs.SERVING_VALIDITY.days
    assert pod["serviceAccountName"] == CERTS_JOB


@pytest.mark.parametrize("install", names(certificates="self-managed-job"))
@pytest.mark.parametrize("kind", ["Job", "CronJob"])
def test_cli_parses_the_certs_job_args_into_an_in_cluster_run(rendered, install, kind):
    pod = certs_pod(rendered[install], kind)
    (job,) = pod["containers"]
    args = cli.build_parser().parse_args(job["args"])
    assert args.run is certs_verb.run
    assert args.in_cluster and not args.force and not args.kustomize
    assert args.kubeconfig is None and args.context is None  # in the pod: its ServiceAccount
    assert args.namespace == "$(POD_NAMESPACE)"  # the kubelet expands it from the downward API
    assert (args.service, args.secret, args.webhook_configuration) == (WEBHOOK, TLS_SECRET, WEBHOOK_CONFIGURATION)
    assert args.renew_before == int(flags(job["args"][1:])["--renew-before"] or "")


# --- RBAC ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("install", names())
def test_controller_rbac_is_exactly_its_api_calls(rendered, install):
    unmanaged = BY_NAME[install].unmanaged
    extra = COMPONENT_GRANTS[f"unmanaged-{unmanaged}"] if unmanaged else set()
    assert grants(rendered[install], CONTROLLER) == CONTROLLER_GRANTS | extra


def test_controller_rbac_matches_the_calls_the_controller_makes():
    assert {(group, resource, verb) for _, group, resource, verb, _ in CONTROLLER_GRANTS} == CONTROLLER_RBAC


@pytest.mark.slow
@pytest.mark.parametrize("component", COMPONENT_GRANTS)
def test_a_scope_all_component_adds_exactly_its_rules(with_components, component):
    assert grants(with_components[component], CONTROLLER) == CONTROLLER_GRANTS | COMPONENT_GRANTS[component]


def test_the_recycle_components_rules_are_the_calls_the_controller_makes_in_that_mode():
    granted = CONTROLLER_GRANTS | COMPONENT_GRANTS["unmanaged-recycle"]
    assert {(group, resource, verb) for _, group, resource, verb, _ in granted} == CONTROLLER_RBAC_ALL_RECYCLE
    observe = CONTROLLER_GRANTS | COMPONENT_GRANTS["unmanaged-observe"]  # observing leaves the eviction unused
    assert {(group, resource, verb) for _, group, resource, verb, _ in observe} == (
        CONTROLLER_RBAC | {CILIUM_CONFIG_READ})


@pytest.mark.slow
@pytest.mark.parametrize("component, action", [("unmanaged-observe", "observe"), ("unmanaged-recycle", "recycle")])
def test_a_scope_all_component_sets_the_controllers_scope_and_action(with_components, component, action):
    objects = with_components[component]
    args = cli.build_parser().parse_args(container(objects, CONTROLLER)["args"])
    config = parse_config(find(objects, "ConfigMap", "cilium-startup-guard-config")["data"]["config.yaml"], "cm")
    settings = controller_verb.unmanaged_settings(args, config)
    assert (settings.scope, settings.effective_action) == ("all", action)
    assert args.cilium_namespace == CILIUM_NAMESPACE == CILIUM_CONFIG_GRANT[0]  # where the Role lets it read


@pytest.mark.parametrize("install", names(certificates="self-managed-job"))
def test_certs_job_rbac_is_exactly_its_api_calls(rendered, install):
    assert grants(rendered[install], CERTS_JOB) == CERTS_JOB_GRANTS


@pytest.mark.parametrize("install", names())
def test_webhook_has_no_rbac_and_no_token(rendered, install):
    objects = rendered[install]
    assert grants(objects, WEBHOOK) == set()
    assert find(objects, "ServiceAccount", WEBHOOK)["automountServiceAccountToken"] is False
    pod = find(objects, "Deployment", WEBHOOK)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == WEBHOOK
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("install", names())
def test_no_rbac_wildcards_or_builtin_roles(rendered, install):
    objects = rendered[install]
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for obj in objects:
        if obj["kind"] in ("Role", "ClusterRole"):
            for rule in obj["rules"]:
                assert "nonResourceURLs" not in rule
                for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                    assert "*" not in rule.get(field, []), (obj["metadata"]["name"], field)
                assert not {"escalate", "bind", "impersonate", "delete", "deletecollection"} & set(rule["verbs"])
        if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            ref = obj["roleRef"]
            assert (ref["kind"], ref["name"]) in names, "binds a role this install does not define"
            assert ref["name"] not in ("cluster-admin", "admin", "edit", "view")


@pytest.mark.parametrize("install", names())
def test_lease_rbac_names_the_lease_the_controller_uses(rendered, install):
    args = flags(container(rendered[install], CONTROLLER)["args"][1:])
    assert args["--lease-name"] == LEASE
    assert args["--lease-namespace"] == "$(POD_NAMESPACE)"
    env = {e["name"]: e for e in container(rendered[install], CONTROLLER)["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


# --- pod security ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("install", names())
def test_every_pod_and_container_is_locked_down(rendered, install):
    pods = list(pod_specs(rendered[install]))
    assert pods
    for name, pod in pods:
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security["runAsUser"] != 0, name
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert not pod.get("hostPID") and not pod.get("hostIPC"), name
        for box in pod["containers"] + pod.get("initContainers", []):
            ctx = box["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["readOnlyRootFilesystem"] is True, name
            assert ctx["runAsNonRoot"] is True, name
            assert ctx["capabilities"] == {"drop": ["ALL"]}, name
            assert not ctx.get("privileged"), name
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, name
            for bound in ("requests", "limits"):
                assert set(box["resources"][bound]) == {"cpu", "memory"}, (name, bound)


@pytest.mark.parametrize("install", names())
def test_every_container_runs_this_version_as_the_image_user(rendered, install):
    version = pyproject()["project"]["version"]
    uid = dockerfile_uid()
    for name, pod in pod_specs(rendered[install]):
        assert pod["securityContext"]["runAsUser"] == uid, name
        for box in pod["containers"]:
            assert box["image"] == f"cilium-startup-guard:{version}", name
            assert box["securityContext"]["runAsUser"] == uid, name


def dockerfile_uid() -> int:
    users = [line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("USER ")]
    return int(users[-1].split(":")[0])


# --- availability and safe bootstrap ------------------------------------------------------------------------------

@pytest.mark.parametrize("install", names())
def test_webhook_runs_two_replicas_spread_and_protected_by_a_pdb(rendered, install):
    objects = rendered[install]
    for name in (WEBHOOK, CONTROLLER):
        deployment = find(objects, "Deployment", name)
        assert deployment["spec"]["replicas"] == 2
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        budget = find(objects, "PodDisruptionBudget", name)["spec"]
        assert selector_matches(budget["selector"], labels)
        assert budget.get("maxUnavailable") == 1 or budget.get("minAvailable") == 1
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
        assert all(selector_matches(c["labelSelector"], labels) for c in spread)


@pytest.mark.parametrize("install", names())
def test_webhook_runs_on_the_host_network_before_cilium_is_ready(rendered, install):
    pod = find(rendered[install], "Deployment", WEBHOOK)["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    taint = {"key": CILIUM_TAINT_KEY, "value": "true", "effect": "NoExecute"}
    assert any(tolerates(t, taint) for t in pod["tolerations"])
    # Its own tolerations are exactly what the policy asks of others: keyed, never blanket.
    assert not any(is_blanket_noexecute(t) for t in pod["tolerations"])
    assert all(t.get("key") == CILIUM_TAINT_KEY for t in pod["tolerations"])


@pytest.mark.parametrize("install", names())
def test_webhook_host_port_clashes_with_no_node_service(rendered, install):
    (port,) = container(rendered[install], WEBHOOK)["ports"]
    assert port["hostPort"] == port["containerPort"] == WEBHOOK_PORT
    assert WEBHOOK_PORT not in RESERVED_HOST_PORTS
    assert port["containerPort"] > 1024  # no NET_BIND_SERVICE needed with every capability dropped


def test_the_ports_the_install_docs_list_are_the_ones_checked():
    install = (ROOT / "docs" / "install.md").read_text()
    bullet = install[install.index(f"**Port {WEBHOOK_PORT}.**"):install.index("It is also below the NodePort range")]
    documented: set[int] = set()
    for first, last in re.findall(r"(?<![\d.])(\d{4,5})(?:-(\d{4,5}))?", bullet):
        documented |= set(range(int(first), int(last or first) + 1))
    documented |= {int(port) for port in re.findall(r"/(\d{4,5})", bullet)}  # 4250/4251, 9962/9963/9964
    # Every port checked below the NodePort range is named; every port named is checked.
    assert documented - {WEBHOOK_PORT} <= RESERVED_HOST_PORTS
    assert {p for p in RESERVED_HOST_PORTS if p < 30000} <= documented


@pytest.mark.parametrize("install", names())
def test_webhook_listens_on_the_node_address_only(rendered, install):
    webhook = container(rendered[install], WEBHOOK)
    assert flags(webhook["args"][1:])["--host"] == "$(POD_IP)"
    (env,) = [e for e in webhook["env"] if e["name"] == "POD_IP"]
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


@pytest.mark.parametrize("install", names())
def test_controller_is_a_cilium_managed_pod(rendered, install):
    pod = find(rendered[install], "Deployment", CONTROLLER)["spec"]["template"]["spec"]
    assert not pod.get("hostNetwork")
    taint = {"key": CILIUM_TAINT_KEY, "value": "true", "effect": "NoExecute"}
    assert not any(tolerates(t, taint) for t in pod.get("tolerations", []))


# The controller's tunables, written out in the manifests so that they can be changed there.
CONTROLLER_TUNABLES = {"--grace-period", "--recycle-rate", "--release-after", "--cilium-namespace",
                       "--cilium-agent-selector"}


@pytest.mark.parametrize("install", names())
def test_controller_flags_are_its_wiring_and_its_tunables_at_their_defaults(rendered, install):
    controller = container(rendered[install], CONTROLLER)
    assert controller["args"][0] == "controller"
    args = flags(controller["args"][1:])
    scope = set(args) & {"--unmanaged-scope", "--unmanaged-action"}  # a scope `all` component's, checked below
    wiring = {"--lease-namespace", "--lease-name", "--metrics-port", "--config"}
    assert set(args) - scope == wiring | CONTROLLER_TUNABLES
    assert bool(scope) is bool(BY_NAME[install].unmanaged and not BY_NAME[install].helm)
    (port,) = controller["ports"]
    assert args["--metrics-port"] == str(port["containerPort"]) == "9090"
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert controller[probe]["httpGet"] == {"path": path, "port": port["name"], "scheme": "HTTP"}
    parsed = vars(cli.build_parser().parse_args(controller["args"]))
    defaults = vars(cli.build_parser().parse_args(["controller"]))
    for flag in CONTROLLER_TUNABLES:
        dest = flag.removeprefix("--").replace("-", "_")
        assert parsed[dest] == defaults[dest], flag


@pytest.mark.parametrize("install", names(certificates="self-managed-job"))
@pytest.mark.parametrize("kind", ["Job", "CronJob"])
def test_certs_job_runs_before_cilium_is_ready(rendered, install, kind):
    pod = certs_pod(rendered[install], kind)
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    taint = {"key": CILIUM_TAINT_KEY, "value": "true", "effect": "NoExecute"}
    assert any(tolerates(t, taint) for t in pod["tolerations"])
    assert not any(is_blanket_noexecute(t) for t in pod["tolerations"])


# --- policy ConfigMap ---------------------------------------------------------------------------------------------

def config_text(objects: list[dict[str, Any]]) -> str:
    return str(find(objects, "ConfigMap", "cilium-startup-guard-config")["data"]["config.yaml"])


@pytest.mark.parametrize("install", names())
def test_config_map_holds_the_defaults_written_out(rendered, install):
    text = config_text(rendered[install])
    config = parse_config(text, "ConfigMap cilium-startup-guard-config")
    assert config.to_policy() == PolicyConfig()
    # exemptions: None in ConfigFile() means "the built-in list", which to_policy() compared above; the chart
    # writes a chosen unmanaged scope into the file (the kustomize components pass flags).
    dumped = config.model_dump(exclude={"exemptions"})
    if BY_NAME[install].helm and BY_NAME[install].unmanaged:
        assert dumped["controller"]["unmanaged"]["scope"] == "all"
        dumped["controller"]["unmanaged"]["scope"] = "gated"
    assert dumped == ConfigFile().model_dump(exclude={"exemptions"})
    # Every key is written out, so the file documents every setting.
    written = set(yaml.safe_load(text))
    assert written == {field.alias or name for name, field in ConfigFile.model_fields.items()}


@pytest.mark.parametrize("install", names())
@pytest.mark.parametrize("name", [WEBHOOK, CONTROLLER])
def test_both_deployments_read_the_config_map(rendered, install, name):
    objects = rendered[install]
    pod = find(objects, "Deployment", name)["spec"]["template"]["spec"]
    box = container(objects, name)
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == "cilium-startup-guard-config"
    (mount,) = [m for m in box["volumeMounts"] if m["name"] == volume["name"]]
    assert flags(box["args"][1:])["--config"] == f"{mount['mountPath']}/config.yaml"


@pytest.mark.parametrize("page", ["README.md", "docs/install.md"])
def test_documented_install_commands_name_existing_overlays(page):
    text = (ROOT / page).read_text()
    # A regular expression, not shlex: some kubectl lines start a quoted jq program that ends lines later.
    paths = [path for line in text.splitlines() if line.strip().startswith("kubectl ")
             for path in re.findall(r"(?<![\w/])manifests/[\w./-]+", line)]
    assert paths
    for path in paths:
        assert (ROOT / path / "kustomization.yaml").exists(), path


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
