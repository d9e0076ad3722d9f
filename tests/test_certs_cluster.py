"""`cilium-startup-guard certs --in-cluster` against the fake API server, with the real kubernetes client: the
two Secrets, caBundle in every webhook of both configurations, renewal without downtime, conflicts, waiting,
errors, and the RBAC its calls need."""

from __future__ import annotations

import base64
import copy
import datetime
import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.fakekube import WRITES, FakeKube, Request, authorization, is_granted, writes
from tests.manifest_render import ROOT, render
from tests.objects import CERTS_JOB_GRANTS
from webhook import certs, cli, cluster_certs
from webhook.cli import certs as certs_verb
from webhook.logs import JsonFormatter

NS = certs.DEFAULT_NAMESPACE
SECRET = certs.DEFAULT_SECRET
CA_SECRET = SECRET + certs.CA_SECRET_SUFFIX
NAME = certs.DEFAULT_WEBHOOK_CONFIGURATION
MUTATING = "mutatingwebhookconfigurations.admissionregistration.k8s.io"
VALIDATING = "validatingwebhookconfigurations.admissionregistration.k8s.io"
DAY = datetime.timedelta(days=1)
NOW = datetime.datetime.now(datetime.UTC)
SANS = certs.default_sans()
@pytest.fixture(autouse=True)
def quiet_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    # main() would otherwise point the root logger at this test's captured stderr for the rest of the run.
    monkeypatch.setattr(certs_verb, "configure_logging", lambda level="info": None)


@pytest.fixture(scope="module")
def installed() -> list[dict[str, Any]]:
    """The self-managed-job overlay as `kubectl apply -k` would create it."""
    return render(ROOT / "manifests" / "overlays" / "self-managed-job")


def configurations(installed: list[dict[str, Any]], ca_bundle: bytes | None = None,
                   extra_webhook: bool = True) -> list[dict[str, Any]]:
    """Both webhook configurations of the overlay; the mutating one with a second webhook, as every webhook
    must get caBundle."""
    result = []
    for obj in installed:
        if obj["kind"] not in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            continue
        obj = copy.deepcopy(obj)
        if extra_webhook and obj["kind"] == "MutatingWebhookConfiguration":
            second = copy.deepcopy(obj["webhooks"][0])
            second["name"] = "second.startupguard.io"
            second["clientConfig"]["service"]["path"] = "/second"
            obj["webhooks"].append(second)
        if ca_bundle is not None:
            for hook in obj["webhooks"]:
                hook["clientConfig"]["caBundle"] = base64.b64encode(ca_bundle).decode()
        result.append(obj)
    assert len(result) == 2
    return result


def install(fake: FakeKube, installed: list[dict[str, Any]], renewal: certs.Renewal | None = None,
            ca_bundle: bytes | None = None) -> None:
    """The configurations, and the Secrets a past run left (with caBundle set as that run would have)."""
    if renewal is not None:
        data = certs.secret_data(renewal)
        for name, values in ((SECRET, data.serving), (CA_SECRET, data.ca)):
            fake.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
                         "type": "kubernetes.io/tls", "data": values})
        ca_bundle = ca_bundle or renewal.ca_bundle_pem
    for configuration in configurations(installed, ca_bundle):
        fake.create(configuration)


def options(**changes: Any) -> cluster_certs.Options:
    return cluster_certs.Options(**{"namespace": NS, "service": certs.DEFAULT_SERVICE, "secret": SECRET,
                                    "webhook_configuration": NAME, "wait": 5.0, **changes})


def secret(fake: FakeKube, name: str) -> dict[str, bytes]:
    stored = fake.get("secrets", NS, name)
    assert stored is not None and stored["type"] == "kubernetes.io/tls"
    return {k: base64.b64decode(v) for k, v in stored["data"].items()}


def ca_bundles(fake: FakeKube) -> dict[str, bytes | None]:
    """caBundle by webhook name, over both configurations."""
    result: dict[str, bytes | None] = {}
    for resource in (MUTATING, VALIDATING):
        for hook in (fake.get(resource, "", NAME) or {}).get("webhooks", []):
            value = hook["clientConfig"].get("caBundle")
            result[hook["name"]] = base64.b64decode(value) if value else None
    return result


def issued_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    try:
        x509.load_pem_x509_certificate(cert_pem).verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    except Exception:
        return False
    return True


def trusted(cert_pem: bytes, bundle: bytes) -> bool:
    return any(issued_by(cert_pem, ca.public_bytes(serialization.Encoding.PEM))
               for ca in x509.load_pem_x509_certificates(bundle))


def meddle_once(fake: FakeKube, method: str, path: str, change: Callable[[], None]) -> None:
    """Another writer gets in just before the first matching request is served: a genuine race, not an
    injected status."""
    done: list[bool] = []

    def when(_: Request) -> bool:
        if not done:
            done.append(True)
            change()
        return False  # never answer in its place

    fake.fail(method, path, times=None, when=when)


def main(kubeconfig: Path, *extra: str) -> int:
    return cli.main(["certs", "--in-cluster", "--kubeconfig", str(kubeconfig), "--context", "fake",
                     "--namespace", NS, *extra])


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --- what a run does -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_first_run_creates_both_secrets_and_sets_ca_bundle_in_every_webhook(fake_kube, kube_client, installed):
    install(fake_kube, installed)
    before = {r: fake_kube.get(r, "", NAME) for r in (MUTATING, VALIDATING)}
    renewal = cluster_certs.run(kube_client, options())
    assert renewal.ca_renewed and renewal.cert_renewed
    serving, ca = secret(fake_kube, SECRET), secret(fake_kube, CA_SECRET)
    assert set(serving) == {"tls.crt", "tls.key", "ca.crt"} and set(ca) == {"tls.crt", "tls.key"}
    assert serving["ca.crt"] == ca["tls.crt"]  # one CA so far
    assert issued_by(serving["tls.crt"], ca["tls.crt"])
    assert ca["tls.key"] not in serving.values()
    assert fake_kube.get("secrets", NS, SECRET)["metadata"]["labels"]["app.kubernetes.io/part-of"] == \
        "cilium-startup-guard"
    assert ca_bundles(fake_kube) == {"mutate.startupguard.io": serving["ca.crt"],
                                     "gate.startupguard.io": serving["ca.crt"],
                                     "second.startupguard.io": serving["ca.crt"],
                                     "validate.startupguard.io": serving["ca.crt"]}
    # The patch touched caBundle and nothing else.
    for resource, old in before.items():
        new = fake_kube.get(resource, "", NAME)
        for hook in new["webhooks"]:
            del hook["clientConfig"]["caBundle"]
        assert new["webhooks"] == old["webhooks"]
    # First run: the Secrets first (the webhook pods can start), then both configurations.
    assert [(r.method, authorization(r)[2]) for r in writes(fake_kube)] == [
        ("POST", "secrets"), ("POST", "secrets"),
        ("PATCH", "mutatingwebhookconfigurations"), ("PATCH", "validatingwebhookconfigurations")]


@pytest.mark.slow
def test_second_run_writes_nothing(fake_kube, kube_client, installed):
    install(fake_kube, installed)
    cluster_certs.run(kube_client, options())
    before = (secret(fake_kube, SECRET), secret(fake_kube, CA_SECRET), ca_bundles(fake_kube))
    fake_kube.requests.clear()
    again = cluster_certs.run(kube_client, options())
    assert not again.changed
    assert [(r.method, authorization(r)[2:]) for r in fake_kube.requests] == [
        ("GET", ("secrets", "get", SECRET)), ("GET", ("secrets", "get", CA_SECRET)),
        ("GET", ("mutatingwebhookconfigurations", "get", NAME)),
        ("GET", ("validatingwebhookconfigurations", "get", NAME))]
    assert (secret(fake_kube, SECRET), secret(fake_kube, CA_SECRET), ca_bundles(fake_kube)) == before


@pytest.mark.slow
def test_serving_certificate_due_is_renewed_under_the_same_ca_and_ca_bundle_stays(fake_kube, kube_client,
                                                                                   installed):
    # A serving certificate with 20 days left, inside the 30-day window.
    old = certs.renew(certs.StoredCerts(), *SANS, now=NOW - certs.SERVING_VALIDITY + 20 * DAY)
    install(fake_kube, installed, old)
    renewal = cluster_certs.run(kube_client, options())
    assert renewal.cert_renewed and not renewal.ca_renewed and not renewal.bundle_changed
    serving = secret(fake_kube, SECRET)
    assert serving["tls.crt"] != old.bundle.cert_pem
    assert issued_by(serving["tls.crt"], old.bundle.ca_cert_pem)
    assert serving["ca.crt"] == old.ca_bundle_pem
    assert set(ca_bundles(fake_kube).values()) == {old.ca_bundle_pem}
    # Only the serving Secret changed: a conditional update, no patch of the configurations.
    (update,) = writes(fake_kube)
    assert (update.method, authorization(update)[4]) == ("PUT", SECRET)
    assert update.body["metadata"]["resourceVersion"]


@pytest.mark.slow
@pytest.mark.parametrize("why", ["ca-due", "force"])
def test_a_new_ca_is_trusted_beside_the_old_one_before_any_pod_serves_its_certificate(fake_kube, kube_client,
                                                                                       installed, why):
    if why == "ca-due":  # a CA with 10 days left, a serving certificate it signed 100 days ago
        first = certs.renew(certs.StoredCerts(), *SANS, now=NOW - certs.CA_VALIDITY + 10 * DAY)
        old = certs.renew(certs.stored_from_secrets(certs.secret_data(first).serving,
                                                    certs.secret_data(first).ca), *SANS, now=NOW - 100 * DAY)
    else:
        old = certs.renew(certs.StoredCerts(), *SANS, now=NOW)
    install(fake_kube, installed, old)
    renewal = cluster_certs.run(kube_client, options(force=why == "force"))
    assert renewal.ca_renewed and renewal.cert_renewed
    serving, ca = secret(fake_kube, SECRET), secret(fake_kube, CA_SECRET)
    assert ca["tls.crt"] != old.bundle.ca_cert_pem
    bundle = [c.public_bytes(serialization.Encoding.PEM) for c in x509.load_pem_x509_certificates(
        serving["ca.crt"])]
    assert bundle == [ca["tls.crt"], old.bundle.ca_cert_pem]  # new first, the old one kept
    assert set(ca_bundles(fake_kube).values()) == {serving["ca.crt"]}
    # Pods still serving the old certificate keep working; the new one is trusted too.
    assert trusted(old.bundle.cert_pem, serving["ca.crt"]) and trusted(serving["tls.crt"], serving["ca.crt"])
    # The order that makes it so: the CA Secret, then caBundle, and only then the new serving certificate.
    assert [(r.method, authorization(r)[2]) for r in writes(fake_kube)] == [
        ("PUT", "secrets"), ("PATCH", "mutatingwebhookconfigurations"),
        ("PATCH", "validatingwebhookconfigurations"), ("PUT", "secrets")]
    assert [authorization(r)[4] for r in writes(fake_kube)] == [CA_SECRET, NAME, NAME, SECRET]


@pytest.mark.slow
def test_an_update_keeps_what_others_set_and_sends_no_server_fields(fake_kube, kube_client, installed):
    old = certs.renew(certs.StoredCerts(), *SANS, now=NOW - certs.SERVING_VALIDITY + 20 * DAY)
    install(fake_kube, installed, old)
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": "1234"}

    def as_read_back(obj: dict[str, Any]) -> None:
        obj["metadata"].update(annotations={"note": "kept"}, ownerReferences=[owner],
                               managedFields=[{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                                               "time": "2024-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                                               "fieldsV1": {"f:data": {}}}],
                               fieldFromANewerServer="the client's model does not know it")
        obj["data"]["extra"] = base64.b64encode(b"someone else's").decode()

    fake_kube.modify("secrets", NS, SECRET, as_read_back)
    cluster_certs.run(kube_client, options())
    (update,) = fake_kube.calls("PUT")
    assert set(update.body["metadata"]) == {"name", "namespace", "uid", "resourceVersion", "annotations",
                                            "ownerReferences"}
    stored = fake_kube.get("secrets", NS, SECRET)
    assert stored["metadata"]["annotations"] == {"note": "kept"} and stored["metadata"]["ownerReferences"] == [owner]
    assert secret(fake_kube, SECRET)["extra"] == b"someone else's"
    assert secret(fake_kube, SECRET)["tls.crt"] != old.bundle.cert_pem


@pytest.mark.slow
def test_a_ca_bundle_someone_removed_is_set_again_without_touching_the_secrets(fake_kube, kube_client, installed):
    old = certs.renew(certs.StoredCerts(), *SANS, now=NOW)
    install(fake_kube, installed, old)

    def drop_ca_bundle(obj: dict[str, Any]) -> None:
        del obj["webhooks"][0]["clientConfig"]["caBundle"]

    fake_kube.modify(VALIDATING, "", NAME, drop_ca_bundle)
    cluster_certs.run(kube_client, options())
    assert set(ca_bundles(fake_kube).values()) == {old.ca_bundle_pem}
    assert [authorization(r)[1:4] for r in writes(fake_kube)] == [
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "patch")]


def test_ca_bundle_patch_names_only_the_webhooks_that_lack_it_and_carries_the_resource_version():
    configuration = {"metadata": {"resourceVersion": "7"}, "webhooks": [
        {"name": "a", "clientConfig": {"caBundle": "Tk9X"}},
        {"name": "b", "clientConfig": {"caBundle": "T0xE"}},
        {"name": "c", "clientConfig": {}}]}
    assert cluster_certs.ca_bundle_patch(configuration, "Tk9X") == {
        "metadata": {"resourceVersion": "7"},
        "webhooks": [{"name": "b", "clientConfig": {"caBundle": "Tk9X"}},
                     {"name": "c", "clientConfig": {"caBundle": "Tk9X"}}]}
    assert cluster_certs.ca_bundle_patch({"metadata": {}, "webhooks": configuration["webhooks"][:1]}, "Tk9X") is None


# --- the Job may start before the webhook configurations exist --------------------------------------------------

@pytest.mark.slow
def test_configurations_that_appear_late_are_waited_for_then_patched(fake_kube, kube_client, installed):
    late = configurations(installed)
    timer = threading.Timer(0.3, lambda: [fake_kube.create(c) for c in late])
    timer.start()
    try:
        cluster_certs.run(kube_client, options(wait=10.0))
    finally:
        timer.cancel()
    assert len(fake_kube.calls("GET", "mutatingwebhookconfigurations")) >= 2
    assert set(ca_bundles(fake_kube).values()) == {secret(fake_kube, SECRET)["ca.crt"]}


@pytest.mark.slow
def test_configurations_that_never_appear_fail_with_one_line(fake_kube, kubeconfig_path, monkeypatch, capsys):
    monkeypatch.setattr(cluster_certs, "CONFIGURATION_WAIT", 0.4)
    assert main(kubeconfig_path) == 1
    line = one_line(capsys.readouterr().err)
    assert f"MutatingWebhookConfiguration {NAME} does not exist (waited 0.4s)" in line
    # The Secrets are there for the webhook pods, and the next run (the Job retries) finishes the job.
    assert fake_kube.get("secrets", NS, SECRET) is not None


# --- concurrent writers ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_conflicting_update_is_read_again_and_decided_again(fake_kube, kube_client, installed):
    old = certs.renew(certs.StoredCerts(), *SANS, now=NOW - certs.SERVING_VALIDITY + 20 * DAY)
    install(fake_kube, installed, old)

    def label(obj: dict[str, Any]) -> None:
        obj["metadata"].setdefault("labels", {})["someone"] = "else"

    meddle_once(fake_kube, "PUT", f"/secrets/{SECRET}$", lambda: fake_kube.modify("secrets", NS, SECRET, label))
    cluster_certs.run(kube_client, options())
    puts = fake_kube.calls("PUT", f"/secrets/{SECRET}$")
    assert len(puts) == 2 and len(fake_kube.calls("GET", f"/secrets/{SECRET}$")) == 2
    stored = fake_kube.get("secrets", NS, SECRET)
    assert stored["metadata"]["labels"] == {"someone": "else"}  # the other writer's change survives
    assert issued_by(secret(fake_kube, SECRET)["tls.crt"], old.bundle.ca_cert_pem)


@pytest.mark.slow
def test_concurrent_first_runs_settle_on_one_ca(fake_kube, kube_client, installed):
    install(fake_kube, installed)
    other = certs.renew(certs.StoredCerts(), *SANS, now=NOW)

    def other_job_creates_the_ca() -> None:
        fake_kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": CA_SECRET, "namespace": NS},
                          "type": "kubernetes.io/tls", "data": certs.secret_data(other).ca})

    meddle_once(fake_kube, "POST", "/secrets$", other_job_creates_the_ca)
    renewal = cluster_certs.run(kube_client, options())
    assert renewal.bundle.ca_cert_pem == other.bundle.ca_cert_pem  # the CA that won, not a second one
    assert issued_by(secret(fake_kube, SECRET)["tls.crt"], other.bundle.ca_cert_pem)
    assert set(ca_bundles(fake_kube).values()) == {other.bundle.ca_cert_pem}


@pytest.mark.slow
def test_configuration_changed_under_the_patch_is_read_again(fake_kube, kube_client, installed):
    install(fake_kube, installed)

    def annotate(obj: dict[str, Any]) -> None:
        obj["metadata"].setdefault("annotations", {})["someone"] = "else"

    meddle_once(fake_kube, "PATCH", "mutatingwebhookconfigurations",
                lambda: fake_kube.modify(MUTATING, "", NAME, annotate))
    cluster_certs.run(kube_client, options())
    assert len(fake_kube.calls("PATCH", "mutatingwebhookconfigurations")) == 2
    assert fake_kube.get(MUTATING, "", NAME)["metadata"]["annotations"] == {"someone": "else"}
    assert set(ca_bundles(fake_kube).values()) == {secret(fake_kube, SECRET)["ca.crt"]}


@pytest.mark.slow
def test_a_secret_deleted_under_the_update_is_created_again(fake_kube, kube_client, installed):
    old = certs.renew(certs.StoredCerts(), *SANS, now=NOW - certs.SERVING_VALIDITY + 20 * DAY)
    install(fake_kube, installed, old)
    meddle_once(fake_kube, "PUT", f"/secrets/{SECRET}$", lambda: fake_kube.delete("secrets", NS, SECRET))
    cluster_certs.run(kube_client, options())
    assert [r.method for r in fake_kube.calls(path=f"/secrets/{SECRET}$|/secrets$") if r.method in WRITES] == [
        "PUT", "POST"]
    assert issued_by(secret(fake_kube, SECRET)["tls.crt"], old.bundle.ca_cert_pem)


@pytest.mark.slow
def test_a_forced_ca_is_made_once_even_when_a_conflict_follows(fake_kube, kube_client, installed):
    old = certs.renew(certs.StoredCerts(), *SANS, now=NOW)
    install(fake_kube, installed, old)
    meddle_once(fake_kube, "PUT", f"/secrets/{SECRET}$",
                lambda: fake_kube.modify("secrets", NS, SECRET, lambda s: s["metadata"].update(labels={"x": "y"})))
    cluster_certs.run(kube_client, options(force=True))
    assert len(fake_kube.calls("PUT", f"/secrets/{CA_SECRET}$")) == 1
    assert len(x509.load_pem_x509_certificates(secret(fake_kube, SECRET)["ca.crt"])) == 2


# --- failures: one line, non-zero ------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("method, path", [
    pytest.param("GET", "/secrets/", id="read-secret"),
    pytest.param("POST", "/secrets$", id="create-secret"),
    pytest.param("PATCH", "webhookconfigurations/", id="patch-configuration"),
])
def test_forbidden_exits_1_with_one_line(fake_kube, kubeconfig_path, installed, capsys, method, path):
    install(fake_kube, installed)
    fake_kube.fail(method, path, 403, times=None)
    assert main(kubeconfig_path) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("cilium-startup-guard certs: error: no permission to ") and "(403)" in line
    assert "manifests/overlays/self-managed-job" in line


@pytest.mark.slow  # waits out the client's retries against a closed port
def test_unreachable_api_server_exits_1_with_one_line(tmp_path, capsys, monkeypatch):
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1")
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
              "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],  # nothing listens there
              "users": [{"name": "u", "user": {"token": "t"}}],
              "contexts": [{"name": "fake", "context": {"cluster": "c", "user": "u"}}]}
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    assert main(tmp_path / "kubeconfig") == 1
    assert "cannot reach the Kubernetes API server http://127.0.0.1:1: " in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("content", [
    pytest.param("clusters: [unclosed\n", id="not-yaml"),
    pytest.param("just a string\n", id="not-a-mapping"),
    pytest.param("apiVersion: v1\nkind: Config\n", id="no-context"),
    pytest.param(None, id="missing"),
])
def test_bad_kubeconfig_exits_2_with_one_line(tmp_path, capsys, content):
    path = tmp_path / "kubeconfig"
    if content is not None:
        path.write_text(content)
    assert cli.main(["certs", "--in-cluster", "--kubeconfig", str(path)]) == 2
    assert f"cannot use kubeconfig {path}" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv", [
    pytest.param(["--in-cluster", "--kustomize"], id="in-cluster-with-kustomize"),
    pytest.param(["--in-cluster", "--out-dir", "x"], id="in-cluster-with-out-dir"),
    pytest.param(["--kubeconfig", "x"], id="kubeconfig-without-in-cluster"),
])
def test_flags_of_the_two_stores_do_not_mix(argv, capsys):
    assert cli.main(["certs", *argv]) == 2
    one_line(capsys.readouterr().err)


# --- the Job as the overlay runs it -----------------------------------------------------------------------------

def job_args(installed: list[dict[str, Any]], kind: str) -> list[str]:
    (obj,) = [o for o in installed if o["kind"] == kind]
    spec = obj["spec"]["jobTemplate"]["spec"] if kind == "CronJob" else obj["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    return list(container["args"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["Job", "CronJob"])
def test_the_overlays_args_do_the_job(fake_kube, kubeconfig_path, installed, kind):
    install(fake_kube, installed)
    # The kubelet expands $(POD_NAMESPACE); outside a pod the client needs a kubeconfig.
    args = [a.replace("$(POD_NAMESPACE)", NS) for a in job_args(installed, kind)]
    assert cli.main([*args, "--kubeconfig", str(kubeconfig_path), "--context", "fake"]) == 0
    assert set(ca_bundles(fake_kube).values()) == {secret(fake_kube, SECRET)["ca.crt"]}


@pytest.mark.slow
def test_every_call_is_covered_by_the_jobs_rbac(fake_kube, kube_client, installed):
    install(fake_kube, installed)
    cluster_certs.run(kube_client, options())  # get, create, patch
    cluster_certs.run(kube_client, options(force=True))  # update
    calls = {authorization(r) for r in fake_kube.requests}
    assert [c for c in calls if not is_granted(c, CERTS_JOB_GRANTS)] == []
    # ...and the RBAC grants no verb the command never uses.
    assert {c[:4] for c in calls} == {g[:4] for g in CERTS_JOB_GRANTS}


@pytest.mark.slow
def test_logs_are_json_and_carry_no_key_material(fake_kube, kube_client, installed, caplog):
    install(fake_kube, installed)
    with caplog.at_level(logging.INFO, logger="webhook.cluster_certs"):
        cluster_certs.run(kube_client, options())
        cluster_certs.run(kube_client, options(force=True))
    lines = [JsonFormatter().format(r) for r in caplog.records if r.name == "webhook.cluster_certs"]
    assert any('"message":"certificates are current"' in line for line in lines)
    secrets = [secret(fake_kube, SECRET), secret(fake_kube, CA_SECRET)]
    keys = [s["tls.key"] for s in secrets]
    for line in lines:
        assert "PRIVATE KEY" not in line
        for key in keys:
            assert base64.b64encode(key).decode()[:40] not in line


@pytest.mark.slow
def test_local_certs_never_import_the_kubernetes_client(tmp_path):
    script = ("import sys, webhook.cli\n"
              f"webhook.cli.main(['certs', '--out-dir', {str(tmp_path)!r}])\n"
              "print('LOADED' if 'kubernetes' in sys.modules else 'CLEAN')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.stdout.strip().endswith("CLEAN"), result.stderr

