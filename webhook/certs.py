"""A CA and a serving certificate for the webhook: build, store in a directory or Secret data, renew.
Pure of I/O but for the directory store; imports no kubernetes client (cluster_certs.py makes the API calls).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_SERVICE = "cilium-startup-guard-webhook"
DEFAULT_NAMESPACE = "cilium-startup-guard"
# Names in manifests/: the Secret the webhook Deployment mounts, and both webhook configurations.
DEFAULT_SECRET = "cilium-startup-guard-webhook-tls"
DEFAULT_WEBHOOK_CONFIGURATION = "cilium-startup-guard"
DEFAULT_RENEW_BEFORE = datetime.timedelta(days=30)
CA_VALIDITY = datetime.timedelta(days=3650)
SERVING_VALIDITY = datetime.timedelta(days=365)
# Backdated so that a node whose clock is slightly behind still accepts a brand-new certificate.
CLOCK_SKEW = datetime.timedelta(minutes=5)

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
# Every CA kube-apiserver should trust: the current one first, then earlier ones that have not expired.
CA_BUNDLE_FILE = "ca-bundle.crt"
KUSTOMIZATION_FILE = "kustomization.yaml"
CA_BUNDLE_PATCH_FILE = "ca-bundle-patch.yaml"
# How many webhooks each configuration of manifests/base holds: the mutating one has the workload webhook and the
# pod gate webhook. A JSON 6902 patch names each by index.
WEBHOOK_COUNTS = {"MutatingWebhookConfiguration": 2, "ValidatingWebhookConfiguration": 1}

# The same material as Secrets, both of type kubernetes.io/tls (which requires tls.crt and tls.key). The serving
# Secret is what the webhook mounts, and its ca.crt is the CA bundle, not just the current CA. The CA Secret,
# <secret>-ca, holds the CA's certificate and key the way cert-manager keeps a CA; its key never goes anywhere else.
TLS_SECRET_TYPE = "kubernetes.io/tls"
SECRET_CERT_KEY = "tls.crt"
SECRET_KEY_KEY = "tls.key"
SECRET_CA_BUNDLE_KEY = "ca.crt"
CA_SECRET_SUFFIX = "-ca"


@dataclass(frozen=True)
class CertificateBundle:
    ca_cert_pem: bytes
    ca_key_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def service_dns_names(service: str = DEFAULT_SERVICE, namespace: str = DEFAULT_NAMESPACE) -> list[str]:
    """The names kube-apiserver may use for a webhook Service (it calls <service>.<namespace>.svc)."""
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local"]


def default_sans(service: str = DEFAULT_SERVICE, namespace: str = DEFAULT_NAMESPACE) -> tuple[list[str], list[str]]:
    return ["localhost", *service_dns_names(service, namespace)], ["127.0.0.1", "::1"]


def build_ca(common_name: str = "cilium-startup-guard CA",
             now: datetime.datetime | None = None) -> tuple[bytes, bytes]:
    """A self-signed CA: (certificate PEM, key PEM)."""
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def build_serving_cert(ca_cert_pem: bytes, ca_key_pem: bytes, dns_names: list[str], ip_addresses: list[str],
                       now: datetime.datetime | None = None,
                       validity: datetime.timedelta = SERVING_VALIDITY) -> tuple[bytes, bytes]:
    """A serving certificate signed by the CA: (certificate PEM, key PEM)."""
    now = now or datetime.datetime.now(datetime.UTC)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be an EC private key")
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + validity, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def build_bundle(dns_names: list[str], ip_addresses: list[str]) -> CertificateBundle:
    ca_cert, ca_key = build_ca()
    cert, key = build_serving_cert(ca_cert, ca_key, dns_names, ip_addresses)
    return CertificateBundle(ca_cert_pem=ca_cert, ca_key_pem=ca_key, cert_pem=cert, key_pem=key)


def write_bundle(bundle: CertificateBundle, directory: Path) -> None:
    """Write the four files; keys are readable by the owner only."""
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory / CA_CERT_FILE, bundle.ca_cert_pem, 0o644)
    _write(directory / CA_KEY_FILE, bundle.ca_key_pem, 0o600)
    _write(directory / KEY_FILE, bundle.key_pem, 0o600)
    _write(directory / CERT_FILE, bundle.cert_pem, 0o644)


def ensure_dev_certs(directory: Path) -> bool:
    """Create a development CA and serving certificate in `directory` unless both files exist; True if made."""
    if (directory / CERT_FILE).exists() and (directory / KEY_FILE).exists():
        return False
    write_bundle(build_bundle(*default_sans()), directory)
    return True


@dataclass(frozen=True)
class StoredCerts:
    """What a certificate store holds, a directory or the two Secrets; None for a part that is absent."""

    ca_cert_pem: bytes | None = None
    ca_key_pem: bytes | None = None
    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    ca_bundle_pem: bytes | None = None


@dataclass(frozen=True)
class Renewal:
    """The outcome of `renew`: what the store is to hold, and why anything changed."""

    bundle: CertificateBundle
    ca_bundle_pem: bytes
    ca_renewed: bool
    cert_renewed: bool
    bundle_changed: bool
    cert_not_after: datetime.datetime
    notes: tuple[str, ...] = field(default=())

    @property
    def changed(self) -> bool:
        return self.ca_renewed or self.cert_renewed or self.bundle_changed


def read_stored(directory: Path) -> StoredCerts:
    def read(name: str) -> bytes | None:
        path = directory / name
        return path.read_bytes() if path.exists() else None

    return StoredCerts(ca_cert_pem=read(CA_CERT_FILE), ca_key_pem=read(CA_KEY_FILE), cert_pem=read(CERT_FILE),
                       key_pem=read(KEY_FILE), ca_bundle_pem=read(CA_BUNDLE_FILE))


def stored_from_secrets(serving: Mapping[str, str] | None, ca: Mapping[str, str] | None) -> StoredCerts:
    """What the serving Secret and the CA Secret hold, from their `data` (base64 values as the API returns
    them; None for a Secret that does not exist). A key that is missing or not base64 counts as absent, so
    `renew` replaces what it would have held."""
    serving, ca = serving or {}, ca or {}
    return StoredCerts(ca_cert_pem=_decoded(ca, SECRET_CERT_KEY), ca_key_pem=_decoded(ca, SECRET_KEY_KEY),
                       cert_pem=_decoded(serving, SECRET_CERT_KEY), key_pem=_decoded(serving, SECRET_KEY_KEY),
                       ca_bundle_pem=_decoded(serving, SECRET_CA_BUNDLE_KEY))


@dataclass(frozen=True)
class SecretData:
    """The `data` of the two Secrets after a renewal, base64 as the API takes it."""

    serving: dict[str, str]
    ca: dict[str, str]


def secret_data(renewal: Renewal) -> SecretData:
    b = renewal.bundle
    return SecretData(
        serving={SECRET_CERT_KEY: _encoded(b.cert_pem), SECRET_KEY_KEY: _encoded(b.key_pem),
                 SECRET_CA_BUNDLE_KEY: _encoded(renewal.ca_bundle_pem)},
        ca={SECRET_CERT_KEY: _encoded(b.ca_cert_pem), SECRET_KEY_KEY: _encoded(b.ca_key_pem)},
    )


# `renew` is the one decision for both stores: a directory (`read_stored`, `write_renewal`) and the two Secrets
# of `certs --in-cluster` (`stored_from_secrets`, `secret_data`). Key material is never logged.
def renew(stored: StoredCerts, dns_names: list[str], ip_addresses: list[str],
          renew_before: datetime.timedelta = DEFAULT_RENEW_BEFORE, now: datetime.datetime | None = None,
          force: bool = False) -> Renewal:
    """Keep what is still good, replace what is not, and never drop a CA that a live certificate needs.

    The CA is replaced when it is absent, unusable, within `renew_before` of expiry, or `force` is set; the
    serving certificate when the CA changed, it is within `renew_before` of expiry, its names differ, or it
    does not match its key. A replaced CA that has not expired stays in the CA bundle, so the serving
    certificate still deployed keeps verifying until the new one is live.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    notes: list[str] = []
    old_ca = _usable_ca(stored, notes)
    ca_renewed = force or old_ca is None or old_ca[0].not_valid_after_utc - now <= renew_before
    if old_ca is None or ca_renewed:
        ca_cert_pem, ca_key_pem = build_ca(now=now)
    else:
        ca_cert_pem, ca_key_pem = old_ca[1:]
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)

    old_cert = None if ca_renewed else _good_serving_cert(stored, ca_cert, dns_names, ip_addresses,
                                                          now + renew_before)
    cert_renewed = old_cert is None
    if old_cert is None:
        cert_pem, key_pem = build_serving_cert(ca_cert_pem, ca_key_pem, dns_names, ip_addresses, now=now)
    else:
        cert_pem, key_pem = old_cert

    earlier = list(_load_all(stored.ca_bundle_pem))
    if stored.ca_cert_pem is not None:
        earlier += _load_all(stored.ca_cert_pem)
    ca_bundle_pem = build_ca_bundle(ca_cert, earlier, now)
    return Renewal(
        bundle=CertificateBundle(ca_cert_pem=ca_cert_pem, ca_key_pem=ca_key_pem, cert_pem=cert_pem,
                                 key_pem=key_pem),
        ca_bundle_pem=ca_bundle_pem,
        ca_renewed=ca_renewed,
        cert_renewed=cert_renewed,
        bundle_changed=ca_bundle_pem != stored.ca_bundle_pem,
        cert_not_after=x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc,
        notes=tuple(notes),
    )


def build_ca_bundle(current: x509.Certificate, earlier: Iterable[x509.Certificate],
                    now: datetime.datetime) -> bytes:
    """The current CA, then each earlier CA that has not expired, once each and in their order."""
    kept = [current]
    seen = {current.fingerprint(hashes.SHA256())}
    for cert in earlier:
        fingerprint = cert.fingerprint(hashes.SHA256())
        if fingerprint not in seen and cert.not_valid_after_utc > now:
            seen.add(fingerprint)
            kept.append(cert)
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in kept)


def write_renewal(renewal: Renewal, directory: Path) -> None:
    """Write only what changed. The key goes in before its certificate, as in write_bundle."""
    directory.mkdir(parents=True, exist_ok=True)
    if renewal.ca_renewed:
        _write(directory / CA_CERT_FILE, renewal.bundle.ca_cert_pem, 0o644)
        _write(directory / CA_KEY_FILE, renewal.bundle.ca_key_pem, 0o600)
    if renewal.bundle_changed:
        _write(directory / CA_BUNDLE_FILE, renewal.ca_bundle_pem, 0o644)
    if renewal.cert_renewed:
        _write(directory / KEY_FILE, renewal.bundle.key_pem, 0o600)
        _write(directory / CERT_FILE, renewal.bundle.cert_pem, 0o644)


def kustomize_component(ca_bundle_pem: bytes, secret: str = DEFAULT_SECRET, namespace: str = DEFAULT_NAMESPACE,
                        webhook_configuration: str = DEFAULT_WEBHOOK_CONFIGURATION) -> dict[str, str]:
    """A kustomize Component, as {file name: text}, that makes the Secret and sets caBundle.

    It sits beside the certificate files it reads. The Secret keeps one name (no hash suffix) so that a
    renewed certificate replaces the mounted files in place instead of rolling the webhook pods. One patch file per
    configuration, each webhook by its index (WEBHOOK_COUNTS).
    """
    ca_bundle = base64.b64encode(ca_bundle_pem).decode("ascii")
    files = {kind: CA_BUNDLE_PATCH_FILE.replace("patch", kind.removesuffix("WebhookConfiguration").lower())
             for kind in WEBHOOK_COUNTS}
    component = {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "secretGenerator": [{
            "name": secret,
            "namespace": namespace,
            "type": TLS_SECRET_TYPE,
            "files": [CERT_FILE, KEY_FILE, f"{SECRET_CA_BUNDLE_KEY}={CA_BUNDLE_FILE}"],
            "options": {"disableNameSuffixHash": True},
        }],
        "patches": [
            {"path": files[kind],
             "target": {"group": "admissionregistration.k8s.io", "kind": kind, "name": webhook_configuration}}
            for kind in WEBHOOK_COUNTS
        ],
    }
    header = ("# Made by `cilium-startup-guard certs --kustomize`; run it again to renew. Do not edit, and do not\n"
              "# commit this directory: the key files beside this one are secret.\n")
    result = {KUSTOMIZATION_FILE: header + yaml.safe_dump(component, sort_keys=False)}
    for kind, count in WEBHOOK_COUNTS.items():
        patch = [{"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": ca_bundle}
                 for i in range(count)]
        result[files[kind]] = header + yaml.safe_dump(patch, sort_keys=False, width=1_000_000)
    return result


def _usable_ca(stored: StoredCerts, notes: list[str]) -> tuple[x509.Certificate, bytes, bytes] | None:
    """The stored CA (certificate, its PEM, key PEM) if it can sign; otherwise None, with the reason in `notes`."""
    if stored.ca_cert_pem is None or stored.ca_key_pem is None:
        return None
    try:
        cert = x509.load_pem_x509_certificate(stored.ca_cert_pem)
        key = serialization.load_pem_private_key(stored.ca_key_pem, password=None)
    except ValueError as err:
        notes.append(f"the stored CA cannot be read ({err}); made a new one")
        return None
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key() or not is_ca:
        notes.append("the stored CA key does not belong to a CA certificate; made a new CA")
        return None
    return cert, stored.ca_cert_pem, stored.ca_key_pem


def _good_serving_cert(stored: StoredCerts, ca_cert: x509.Certificate, dns_names: list[str],
                       ip_addresses: list[str], valid_until: datetime.datetime) -> tuple[bytes, bytes] | None:
    """The stored (certificate PEM, key PEM) if it can stay; None when it must be replaced."""
    if stored.cert_pem is None or stored.key_pem is None:
        return None
    try:
        cert = x509.load_pem_x509_certificate(stored.cert_pem)
        key = serialization.load_pem_private_key(stored.key_pem, password=None)
        cert.verify_directly_issued_by(ca_cert)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return None
    names = set(sans.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    wanted_ips = {str(ipaddress.ip_address(ip)) for ip in ip_addresses}
    good = (key.public_key() == cert.public_key() and names == set(dns_names) and ips == wanted_ips
            and cert.not_valid_after_utc > valid_until)
    return (stored.cert_pem, stored.key_pem) if good else None


def _load_all(pem: bytes | None) -> list[x509.Certificate]:
    if not pem:
        return []
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        return []


def _decoded(data: Mapping[str, str], key: str) -> bytes | None:
    try:
        return base64.b64decode(data[key], validate=True) or None
    except (KeyError, TypeError, ValueError):
        return None


def _encoded(pem: bytes) -> str:
    return base64.b64encode(pem).decode("ascii")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    # Write beside the target and rename, so that a server reloading the file never reads half of it.
    partial = path.with_name(path.name + ".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    partial.chmod(mode)
    partial.replace(path)
