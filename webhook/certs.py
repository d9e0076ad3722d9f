"""A CA and a serving certificate for the webhook, made with the `cryptography` package.

Building returns PEM bytes; writing files is separate. Key material is never logged.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_SERVICE = "cilium-startup-guard-webhook"
DEFAULT_NAMESPACE = "cilium-startup-guard"
CA_VALIDITY = datetime.timedelta(days=3650)
SERVING_VALIDITY = datetime.timedelta(days=365)
# Backdated so that a node whose clock is slightly behind still accepts a brand-new certificate.
CLOCK_SKEW = datetime.timedelta(minutes=5)

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"


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
