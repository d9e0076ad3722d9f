"""Runs the app on uvicorn over HTTPS only (TLS 1.2 or newer), with certificate and config reload and a
graceful shutdown on SIGTERM. The wiring of tls.py, protocol.py and reload.py around the app lives here."""

from __future__ import annotations

import logging
import signal
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import uvicorn

from webhook.app import Runtime, create_app
from webhook.config import Settings
from webhook.errors import ConfigError
from webhook.protocol import HeadLimits, guarded_protocol
from webhook.reload import ConfigReloader, FileWatcher
from webhook.tls import CertificateInfo, CertificateStore

log = logging.getLogger(__name__)


class GuardServer(uvicorn.Server):
    """uvicorn's server, plus: the file watcher runs while serving, and SIGTERM drains.

    On the first SIGTERM or SIGINT, /readyz answers 503 and requests are still served for `shutdown_delay`
    seconds (time for the endpoints to drop this pod); then uvicorn closes the listener, closes idle
    connections and waits up to `timeout_graceful_shutdown` for requests in flight. A second signal skips the
    delay, a third stops waiting.
    """

    def __init__(self, config: uvicorn.Config, runtime: Runtime, watcher: FileWatcher,
                 on_started: Callable[[int], None] | None = None) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.watcher = watcher
        self.on_started = on_started
        self._exit_at: float | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.watcher.start()
            if self.on_started is not None and self.servers and self.servers[0].sockets:
                # The port actually bound: --port 0 lets the OS choose one.
                self.on_started(self.servers[0].sockets[0].getsockname()[1])

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.watcher.stop()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not uvicorn's: it re-raises the signal after shutdown, so that the process would end by SIGTERM
        # (status 143) rather than with status 0 after a clean drain.
        if self._exit_at is None:
            delay = self.runtime.settings.server.shutdown_delay
            self.runtime.draining = True
            self._exit_at = time.monotonic() + delay
            log.info("shutting down: draining", extra={"signal": signal.Signals(sig).name, "delay_s": delay})
        elif not self.should_exit:
            self._exit_at = time.monotonic()
        else:
            self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self.should_exit = True
        return await super().on_tick(counter)


def build_server(settings: Settings, cert: Path, key: Path,
                 on_started: Callable[[int], None] | None = None) -> GuardServer:
    """A server with its TLS context loaded, or ConfigError when the certificate cannot be used."""
    app = create_app(settings)
    runtime: Runtime = app.state.runtime
    metrics = runtime.metrics
    try:
        certificates = CertificateStore(cert, key, on_reload=_count_certificate(runtime))
    except (OSError, ValueError, ssl.SSLError) as err:
        raise ConfigError(f"cannot use TLS certificate {cert} with key {key}: {err}") from None
    metrics.certificate_not_after.set(certificates.info.not_after)

    limits = settings.server
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(HeadLimits(limits.max_header_bytes, limits.header_timeout, metrics.count_refusal)),
        ssl_context_factory=lambda _config, _default: certificates.listener,
        timeout_keep_alive=limits.keep_alive_timeout,
        timeout_graceful_shutdown=max(1, round(limits.shutdown_timeout)),
        log_config=None,  # logs.configure_logging() owns the handlers: JSON lines
        access_log=False,  # one structured line per admission comes from the app instead
        server_header=False,
        proxy_headers=False,
    )
    config.load()

    watcher = FileWatcher(limits.reload_interval)
    watcher.add("certificate", [cert, key], certificates.reload)
    if settings.config_file is not None:
        watcher.add("config", [settings.config_file], ConfigReloader(runtime))
    return GuardServer(config, runtime, watcher, on_started)


def _count_certificate(runtime: Runtime) -> Callable[[bool, CertificateInfo | None], None]:
    def count(ok: bool, info: CertificateInfo | None) -> None:
        runtime.metrics.count_certificate_reload(ok)
        if info is not None:
            runtime.metrics.certificate_not_after.set(info.not_after)

    return count
