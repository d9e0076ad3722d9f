"""Runs the FastAPI app on uvicorn over HTTPS only (TLS 1.2 or newer)."""

from __future__ import annotations

import ssl
from pathlib import Path

import uvicorn

from webhook.app import create_app
from webhook.config import ConfigError, Settings

# Modern AEAD suites for TLS 1.2; TLS 1.3 suites are configured separately by OpenSSL and are all fine.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def build_server(settings: Settings, cert: Path, key: Path) -> uvicorn.Server:
    """A uvicorn server with its TLS context loaded, or ConfigError when the certificate cannot be used."""
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        ssl_ciphers=TLS12_CIPHERS,
        log_config=None,  # logs.configure_logging() owns the handlers: JSON lines
        access_log=False,  # one structured line per admission comes from the app instead
        server_header=False,
        proxy_headers=False,
    )
    try:
        config.load()
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"cannot use TLS certificate {cert} with key {key}: {err}") from None
    if config.ssl is None:
        raise ConfigError("uvicorn did not build a TLS context")
    config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
    return uvicorn.Server(config)
