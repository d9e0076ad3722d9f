"""Development certificates: SANs, key protection, and a real TLS handshake verified against the CA."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509

from webhook import certs


def make_certs(tmp_path: Path) -> Path:
    assert certs.ensure_dev_certs(tmp_path)
    return tmp_path


def test_serving_certificate_names_localhost_loopback_and_service(tmp_path: Path) -> None:
    cert = x509.load_pem_x509_certificate((make_certs(tmp_path) / "tls.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {
        "localhost", "cilium-startup-guard-webhook", "cilium-startup-guard-webhook.cilium-startup-guard",
        "cilium-startup-guard-webhook.cilium-startup-guard.svc",
        "cilium-startup-guard-webhook.cilium-startup-guard.svc.cluster.local"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.1"),
                                                             ipaddress.ip_address("::1")}


def test_keys_are_readable_by_owner_only(tmp_path: Path) -> None:
    directory = make_certs(tmp_path)
    for name in ("tls.key", "ca.key"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600


def test_existing_certificates_are_kept(tmp_path: Path) -> None:
    directory = make_certs(tmp_path)
    before = (directory / "tls.crt").read_bytes()
    assert not certs.ensure_dev_certs(directory)
    assert (directory / "tls.crt").read_bytes() == before


def test_serving_certificate_is_not_a_ca_and_is_for_server_auth(tmp_path: Path) -> None:
    cert = x509.load_pem_x509_certificate((make_certs(tmp_path) / "tls.crt").read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usage


def handshake(directory: Path, server_hostname: str) -> str:
    """Serve one TLS handshake with tls.crt on 127.0.0.1 and verify it from a client trusting ca.crt."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(directory / "tls.crt", directory / "tls.key")
    client_context = ssl.create_default_context(cafile=directory / "ca.crt")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept() -> None:
        connection, _ = listener.accept()
        try:
            with server_context.wrap_socket(connection, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                client_context.wrap_socket(raw, server_hostname=server_hostname) as tls:
            version = tls.version() or ""
            tls.sendall(b"x")
        return version
    finally:
        thread.join(timeout=5)
        listener.close()


@pytest.mark.slow
def test_tls_handshake_verifies_against_the_generated_ca(tmp_path: Path) -> None:
    directory = make_certs(tmp_path)
    assert handshake(directory, "cilium-startup-guard-webhook.cilium-startup-guard.svc").startswith("TLSv1.")
    assert handshake(directory, "localhost")


@pytest.mark.slow
def test_tls_handshake_fails_for_a_name_not_in_the_certificate(tmp_path: Path) -> None:
    directory = make_certs(tmp_path)
    try:
        handshake(directory, "example.com")
    except ssl.SSLCertVerificationError as err:
        assert "example.com" in str(err) or "match" in str(err)
    else:
        raise AssertionError("the handshake should fail hostname verification")
