"""TLS for the server: a context per certificate, and hot reload of a rotated certificate without a restart.
Imports no FastAPI and no uvicorn; never logs key material.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

log = logging.getLogger(__name__)

# Modern AEAD suites for TLS 1.2; TLS 1.3 suites are configured separately by OpenSSL and are all fine.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


@dataclass(frozen=True)
class CertificateInfo:
    """What may be logged about a serving certificate."""

    subject: str
    serial: str
    not_after: float  # Unix time
    sha256: str


def build_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for the pair; raises OSError or ssl.SSLError (also when the key does not match)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_RENEGOTIATION  # client-initiated renegotiation only costs us CPU
    context.load_cert_chain(cert, key)
    return context


def describe_certificate(pem: bytes) -> CertificateInfo:
    certificate = x509.load_pem_x509_certificate(pem)
    return CertificateInfo(
        subject=certificate.subject.rfc4514_string(),
        serial=format(certificate.serial_number, "x"),
        not_after=certificate.not_valid_after_utc.timestamp(),
        sha256=hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest(),
    )


# The listening socket keeps one SSLContext for its lifetime. Rather than load a new certificate into that live
# context (load_cert_chain sets the certificate and then the key, and a failure between the two would leave
# it with no usable key), each reload builds a complete new context, and the listener's SNI callback, which
# OpenSSL runs for every ClientHello (with or without a server name), moves the new connection onto the newest
# context. Connections already open keep the certificate they were made with.
class CertificateStore:
    """The serving certificate in use; new TLS connections are handed the newest one that loaded."""

    def __init__(self, cert: Path, key: Path,
                 on_reload: Callable[[bool, CertificateInfo | None], None] = lambda ok, info: None) -> None:
        self.cert = cert
        self.key = key
        self.on_reload = on_reload
        self.listener = build_context(cert, key)
        self.listener.sni_callback = self._select
        self.current = self.listener
        self.info = self._describe()

    def reload(self) -> None:
        try:
            fresh = build_context(self.cert, self.key)
            info = self._describe()
        except (OSError, ValueError, ssl.SSLError) as err:
            # Often the certificate has been replaced and its key not yet: the watcher tries again when
            # the files change, and connections keep being served with the certificate in use.
            log.warning("certificate not reloaded; the one in use stays", extra={
                "cert": str(self.cert), "key": str(self.key), "error": _reason(err)})
            self.on_reload(False, None)
            return
        self.current = fresh  # one assignment: the next handshake sees either the old or the new context
        self.info = info
        log.info("certificate reloaded", extra={
            "cert": str(self.cert), "subject": info.subject, "serial": info.serial, "sha256": info.sha256,
            "not_after": info.not_after})
        self.on_reload(True, info)

    def _describe(self) -> CertificateInfo:
        return describe_certificate(self.cert.read_bytes())

    def _select(self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                context: ssl.SSLContext) -> None:
        current = self.current
        if current is not context:
            connection.context = current


def _reason(err: Exception) -> str:
    # ssl.SSLError's str() holds the OpenSSL reason, e.g. "[X509: KEY_VALUES_MISMATCH] key values mismatch".
    return str(err) or type(err).__name__
