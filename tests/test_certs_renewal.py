"""`cilium-startup-guard certs` renewal and its kustomize output: renewing never leaves a window in which
kube-apiserver (trusting the caBundle) and the webhook (serving the Secret) disagree."""

from __future__ import annotations

import base64
import datetime
import ssl
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.manifest_render import KUBECTL, build, normalized, render_kubectl
from webhook import certs, cli

DAY = datetime.timedelta(days=1)
# The handshakes below run against the real clock, so scenarios start in the past and end now.
NOW = datetime.datetime.now(datetime.UTC)
SANS = certs.default_sans()
API_SERVER_NAME = f"{certs.DEFAULT_SERVICE}.{certs.DEFAULT_NAMESPACE}.svc"


def stored(renewal: certs.Renewal) -> certs.StoredCerts:
    """What the directory holds after write_renewal(renewal)."""
    b = renewal.bundle
    return certs.StoredCerts(ca_cert_pem=b.ca_cert_pem, ca_key_pem=b.ca_key_pem, cert_pem=b.cert_pem,
                             key_pem=b.key_pem, ca_bundle_pem=renewal.ca_bundle_pem)


def handshake(cert_pem: bytes, key_pem: bytes, ca_bundle_pem: bytes, tmp_path: Path) -> None:
    """A real TLS handshake in memory: a server with cert/key, a client trusting the bundle, as kube-apiserver."""
    (tmp_path / "c.pem").write_bytes(cert_pem)
    (tmp_path / "k.pem").write_bytes(key_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    client_ctx = ssl.create_default_context(cadata=ca_bundle_pem.decode())
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=API_SERVER_NAME)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        done = True
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                done = False
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done:
            return
    raise AssertionError("handshake did not finish")


def ca_count(bundle: bytes) -> int:
    return len(x509.load_pem_x509_certificates(bundle))


def test_first_run_makes_a_ca_and_a_certificate_it_signed(tmp_path):
    renewal = certs.renew(certs.StoredCerts(), *SANS, now=NOW)
    assert renewal.ca_renewed and renewal.cert_renewed
    assert renewal.ca_bundle_pem == renewal.bundle.ca_cert_pem
    handshake(renewal.bundle.cert_pem, renewal.bundle.key_pem, renewal.ca_bundle_pem, tmp_path)


def test_second_run_changes_nothing_while_certificates_are_good():
    first = certs.renew(certs.StoredCerts(), *SANS, now=NOW)
    again = certs.renew(stored(first), *SANS, now=NOW + 200 * DAY)
    assert not again.changed
    assert again.bundle == first.bundle and again.ca_bundle_pem == first.ca_bundle_pem


def test_serving_certificate_near_expiry_is_renewed_under_the_same_ca(tmp_path):
    first = certs.renew(certs.StoredCerts(), *SANS, now=NOW - certs.SERVING_VALIDITY + 20 * DAY)
    renewed = certs.renew(stored(first), *SANS, now=NOW)
    assert renewed.cert_renewed and not renewed.ca_renewed
    assert renewed.bundle.cert_pem != first.bundle.cert_pem
    # caBundle unchanged: kube-apiserver trusts the new certificate the moment the webhook serves it.
    assert renewed.ca_bundle_pem == first.ca_bundle_pem and not renewed.bundle_changed
    handshake(renewed.bundle.cert_pem, renewed.bundle.key_pem, first.ca_bundle_pem, tmp_path)
    handshake(first.bundle.cert_pem, first.bundle.key_pem, first.ca_bundle_pem, tmp_path)
    assert renewed.cert_not_after > NOW + 300 * DAY


def test_ca_near_expiry_is_replaced_and_published_beside_the_old_one(tmp_path):
    # A CA with 10 days left, and a serving certificate it signed 100 days ago (so valid until the CA ends).
    first = certs.renew(certs.StoredCerts(), *SANS, now=NOW - certs.CA_VALIDITY + 10 * DAY)
    current = certs.renew(stored(first), *SANS, now=NOW - 100 * DAY)
    assert not current.ca_renewed and current.cert_renewed
    rotated = certs.renew(stored(current), *SANS, now=NOW)
    assert rotated.ca_renewed and rotated.cert_renewed
    assert rotated.bundle.ca_cert_pem != first.bundle.ca_cert_pem
    assert ca_count(rotated.ca_bundle_pem) == 2
    assert rotated.ca_bundle_pem.startswith(rotated.bundle.ca_cert_pem)
    # During the switch kube-apiserver holds the new bundle while a pod may still serve the old certificate.
    handshake(current.bundle.cert_pem, current.bundle.key_pem, rotated.ca_bundle_pem, tmp_path)
    handshake(rotated.bundle.cert_pem, rotated.bundle.key_pem, rotated.ca_bundle_pem, tmp_path)


def test_expired_ca_leaves_the_bundle():
    first = certs.renew(certs.StoredCerts(), *SANS, now=NOW)
    rotated = certs.renew(stored(first), *SANS, now=NOW, force=True)
    assert ca_count(rotated.ca_bundle_pem) == 2
    after_old_ca = NOW + certs.CA_VALIDITY + DAY
    pruned = certs.renew(stored(rotated), *SANS, now=after_old_ca, renew_before=0 * DAY)
    assert ca_count(pruned.ca_bundle_pem) == 1
    assert pruned.ca_bundle_pem.startswith(pruned.bundle.ca_cert_pem)


def test_force_replaces_the_ca_but_keeps_the_old_one_trusted(tmp_path):
    first = certs.renew(certs.StoredCerts(), *SANS, now=NOW)
    forced = certs.renew(stored(first), *SANS, now=NOW, force=True)
    assert forced.ca_renewed and forced.cert_renewed
    handshake(first.bundle.cert_pem, first.bundle.key_pem, forced.ca_bundle_pem, tmp_path)
    handshake(forced.bundle.cert_pem, forced.bundle.key_pem, forced.ca_bundle_pem, tmp_path)


def test_changed_service_name_reissues_the_certificate_only():
    first = certs.renew(certs.StoredCerts(), *SANS, now=NOW)
    other = certs.default_sans("other-webhook", "other-namespace")
    renewed = certs.renew(stored(first), *other, now=NOW)
    assert renewed.cert_renewed and not renewed.ca_renewed
    sans = x509.load_pem_x509_certificate(renewed.bundle.cert_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert "other-webhook.other-namespace.svc" in sans.get_values_for_type(x509.DNSName)


def test_certificate_from_another_ca_is_reissued():
    first = certs.renew(certs.StoredCerts(), *SANS, now=NOW)
    foreign = certs.renew(certs.StoredCerts(), *SANS, now=NOW)
    mixed = certs.StoredCerts(ca_cert_pem=first.bundle.ca_cert_pem, ca_key_pem=first.bundle.ca_key_pem,
                              cert_pem=foreign.bundle.cert_pem, key_pem=foreign.bundle.key_pem,
                              ca_bundle_pem=first.ca_bundle_pem)
    renewed = certs.renew(mixed, *SANS, now=NOW)
    assert renewed.cert_renewed and not renewed.ca_renewed


def test_certificate_with_the_wrong_key_is_reissued():
    first = certs.renew(certs.StoredCerts(), *SANS, now=NOW)
    other_key = certs.renew(certs.StoredCerts(), *SANS, now=NOW).bundle.key_pem
    broken = certs.StoredCerts(**{**stored(first).__dict__, "key_pem": other_key})
    assert certs.renew(broken, *SANS, now=NOW).cert_renewed


def test_unreadable_ca_key_makes_a_new_ca_and_keeps_trusting_the_old_one(tmp_path):
    first = certs.renew(certs.StoredCerts(), *SANS, now=NOW)
    broken = certs.StoredCerts(**{**stored(first).__dict__, "ca_key_pem": b"not a key"})
    renewed = certs.renew(broken, *SANS, now=NOW)
    assert renewed.ca_renewed and renewed.notes
    handshake(first.bundle.cert_pem, first.bundle.key_pem, renewed.ca_bundle_pem, tmp_path)


def test_ca_bundle_lists_each_ca_once_current_first():
    a = certs.renew(certs.StoredCerts(), *SANS, now=NOW)
    b = certs.renew(stored(a), *SANS, now=NOW, force=True)
    c = certs.renew(stored(b), *SANS, now=NOW, force=True)
    bundle = x509.load_pem_x509_certificates(c.ca_bundle_pem)
    subjects = [x.public_bytes(serialization.Encoding.PEM) for x in bundle]
    assert subjects == [c.bundle.ca_cert_pem, b.bundle.ca_cert_pem, a.bundle.ca_cert_pem]


# --- the same decision over the two Secrets of `certs --in-cluster` ---------------------------------------

def test_secrets_hold_what_a_directory_holds_so_a_rerun_changes_nothing():
    first = certs.renew(certs.StoredCerts(), *SANS, now=NOW)
    data = certs.secret_data(first)
    assert certs.stored_from_secrets(data.serving, data.ca) == stored(first)
    assert not certs.renew(certs.stored_from_secrets(data.serving, data.ca), *SANS, now=NOW + 200 * DAY).changed


def test_serving_secret_holds_the_ca_bundle_and_never_the_ca_key():
    first = certs.renew(certs.StoredCerts(), *SANS, now=NOW)
    rotated = certs.renew(stored(first), *SANS, now=NOW, force=True)
    data = certs.secret_data(rotated)
    assert set(data.serving) == {"tls.crt", "tls.key", "ca.crt"}
    assert set(data.ca) == {"tls.crt", "tls.key"}
    assert base64.b64decode(data.serving["ca.crt"]) == rotated.ca_bundle_pem
    for value in data.serving.values():
        assert base64.b64decode(value) not in (rotated.bundle.ca_key_pem, first.bundle.ca_key_pem)


def test_missing_or_garbled_secret_keys_count_as_absent():
    first = certs.renew(certs.StoredCerts(), *SANS, now=NOW)
    data = certs.secret_data(first)
    garbled = {**data.serving, "tls.key": "not base64!"}
    stored_now = certs.stored_from_secrets(garbled, None)
    assert stored_now.key_pem is None and stored_now.ca_cert_pem is None and stored_now.ca_key_pem is None
    assert certs.stored_from_secrets(None, None) == certs.StoredCerts()


# --- the command and its kustomize Component ---------------------------------------------------------------

def run_certs(out: Path, *extra: str) -> int:
    return cli.main(["certs", "--kustomize", "--out-dir", str(out), *extra])


def test_rerun_before_expiry_rewrites_nothing(tmp_path):
    assert run_certs(tmp_path) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert run_certs(tmp_path) == 0
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_keys_are_written_for_the_owner_only(tmp_path):
    assert run_certs(tmp_path) == 0
    for name in (certs.CA_KEY_FILE, certs.KEY_FILE):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
def test_component_makes_the_secret_and_both_ca_bundles(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "hooks.yaml").write_text(yaml.safe_dump_all([
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind, "metadata": {"name": "cilium-startup-guard"},
         "webhooks": [{"name": f"x{i}.startupguard.io", "clientConfig": {"service": {"name": "s", "namespace": "n"}}}
                      for i in range(count)]}
        for kind, count in certs.WEBHOOK_COUNTS.items()]))
    (tmp_path / "base" / "kustomization.yaml").write_text("resources: [hooks.yaml]\n")
    (tmp_path / "overlay").mkdir()
    (tmp_path / "overlay" / "kustomization.yaml").write_text("resources: [../base]\ncomponents: [certs]\n")
    assert run_certs(tmp_path / "overlay" / "certs") == 0
    objects = build(tmp_path / "overlay")
    if KUBECTL:
        assert normalized(objects) == normalized(render_kubectl(tmp_path / "overlay"))
    (secret,) = [o for o in objects if o["kind"] == "Secret"]
    assert secret["metadata"] == {"name": certs.DEFAULT_SECRET, "namespace": certs.DEFAULT_NAMESPACE}
    bundle = (tmp_path / "overlay" / "certs" / certs.CA_BUNDLE_FILE).read_bytes()
    assert base64.b64decode(secret["data"]["ca.crt"]) == bundle
    assert base64.b64decode(secret["data"]["tls.crt"]) == (tmp_path / "overlay" / "certs" / "tls.crt").read_bytes()
    hooks = [o for o in objects if o["kind"].endswith("WebhookConfiguration")]
    assert len(hooks) == 2
    assert sorted(len(hook["webhooks"]) for hook in hooks) == [1, 2]
    for hook in hooks:
        for webhook in hook["webhooks"]:
            assert base64.b64decode(webhook["clientConfig"]["caBundle"]) == bundle


def test_component_never_carries_the_ca_key(tmp_path):
    assert run_certs(tmp_path) == 0
    component = yaml.safe_load((tmp_path / certs.KUSTOMIZATION_FILE).read_text())
    files = component["secretGenerator"][0]["files"]
    assert not any(certs.CA_KEY_FILE in f for f in files)


@pytest.mark.parametrize("days", ["-1", str(certs.SERVING_VALIDITY.days)])
def test_renew_window_as_long_as_the_certificate_is_refused(tmp_path, days, capsys):
    assert cli.main(["certs", "--out-dir", str(tmp_path), "--renew-before", days]) == 2
    assert "--renew-before" in capsys.readouterr().err
