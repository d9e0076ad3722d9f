"""Runs the app on uvicorn over HTTPS only (TLS 1.2 or newer), with certificate and config reload and a
graceful shutdown on SIGTERM. The wiring of listener.py, tls.py, protocol.py and reload.py around the app lives
here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from webhook import libc, listener
from webhook.app import Runtime, create_app
from webhook.config import Settings
from webhook.errors import ConfigError
from webhook.listener import ConnectionLimits, Listener, Slot
from webhook.protocol import HeadLimits, WriteLimits, guarded_protocol
from webhook.reload import ConfigReloader, FileWatcher
from webhook.tls import CertificateInfo, CertificateStore

log = logging.getLogger(__name__)

BACKLOG = 2048  # uvicorn's default
# How often freed memory may be handed back to the OS (see GuardServer.on_tick), and after how many connections
# have ended or large reviews been made.
TRIM_EVERY_TICKS = 100  # uvicorn ticks every 0.1 s
TRIM_AFTER_CONNECTIONS = 32
TRIM_AFTER_LARGE_REVIEWS = 1
# glibc's mallopt() parameter and the value it is set to: see _tune_malloc().
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024
# How long a thread that wants the GIL waits before the holder must hand it over (Python's default: 5 ms). While a
# large review runs on its worker thread, the event loop waits this long for the GIL on every wake-up: at 5 ms, a
# normal review behind eight looping 3 MiB ones had a p99 of 570 ms; at 1 ms, 230 ms. With one thread busy, as
# almost always, it costs nothing.
GIL_SWITCH_INTERVAL_S = 0.001


class GuardServer(uvicorn.Server):
    """uvicorn's server, plus: connections come through a Listener (caps, TLS on first bytes), the file watcher
    runs while serving, and SIGTERM drains.

    On the first SIGTERM or SIGINT, /readyz answers 503 and requests are still served for `shutdown_delay`
    seconds (time for the endpoints to drop this pod); then the listener closes, uvicorn closes idle connections
    and waits up to `timeout_graceful_shutdown` for requests in flight. A second signal skips the delay, a third
    stops waiting.
    """

    def __init__(self, config: uvicorn.Config, runtime: Runtime, watcher: FileWatcher, sockets: list[socket.socket],
                 context: ssl.SSLContext, on_started: Callable[[int], None] | None = None) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.watcher = watcher
        self.sockets = sockets
        self.context = context
        self.on_started = on_started
        self.listener: Listener | None = None
        self._exit_at: float | None = None
        self._churn_at_trim = (0, 0)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # Not uvicorn's: its loop.create_server() would start TLS on every accepted connection at once, with
        # asyncio's 60 s handshake timeout, and could not refuse a connection before that.
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        config, loop = self.config, asyncio.get_running_loop()
        limits = self.runtime.settings.server
        metrics = self.runtime.metrics

        def start_http(slot: Slot) -> asyncio.Protocol:
            protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=loop, slot=slot)
            return protocol

        self.listener = Listener(self.sockets, self.context, ConnectionLimits(
            limits.max_connections_per_source, limits.max_connections, limits.tls_handshake_timeout,
            close_timeout=limits.write_timeout), start_http, metrics.count_close)
        table = self.listener.table
        metrics.connections_open.set_function(lambda: table.total)
        self.listener.start()
        self.servers = []  # uvicorn's shutdown closes these; the listener is closed in shutdown() below
        self._log_started_message(self.sockets)
        self.started = True
        self.watcher.start()
        if self.on_started is not None:
            # The port actually bound: --port 0 lets the OS choose one.
            self.on_started(self.sockets[0].getsockname()[1])

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.watcher.stop()
        if self.listener is not None:
            self.listener.close()
        await super().shutdown(sockets)
        self.runtime.close()

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
        if counter % TRIM_EVERY_TICKS == 0:
            self._give_back_memory()
        return await super().on_tick(counter)

    def _give_back_memory(self) -> None:
        """Hand freed heap pages back to the OS after a burst of connections or a large review.

        A closed TLS connection frees its OpenSSL state (about 35 KiB in many small allocations), a large review
        its parsed object, but glibc only shrinks its heap from the top: after thousands of connections RSS would
        stay at its peak. malloc_trim() releases every free page; it takes a few milliseconds, so it runs at most
        every 10 s, and only after connections ended or large reviews were made.
        """
        if self.listener is None:
            return
        churn = (self.listener.table.released, self.runtime.large_reviews_done)
        ended, reviewed = churn[0] - self._churn_at_trim[0], churn[1] - self._churn_at_trim[1]
        if ended >= TRIM_AFTER_CONNECTIONS or reviewed >= TRIM_AFTER_LARGE_REVIEWS:
            self._churn_at_trim = churn
            libc.trim_heap()


def build_server(settings: Settings, cert: Path, key: Path,
                 on_started: Callable[[int], None] | None = None) -> GuardServer:
    """A server with its TLS context loaded and its port bound, or ConfigError when either cannot be done."""
    app = create_app(settings)
    runtime: Runtime = app.state.runtime
    metrics = runtime.metrics
    try:
        certificates = CertificateStore(cert, key, on_reload=_count_certificate(runtime))
    except (OSError, ValueError, ssl.SSLError) as err:
        raise ConfigError(f"cannot use TLS certificate {cert} with key {key}: {err}") from None
    metrics.certificate_not_after.set(certificates.info.not_after)

    limits = settings.server
    _raise_open_files_limit(limits.max_connections)
    _tune_malloc()
    try:
        # Bound here, before uvicorn logs anything: a port in use is one line and exit status 2.
        sockets = listener.bind(settings.host, settings.port, BACKLOG)
    except OSError as err:
        raise ConfigError(f"cannot listen on {settings.host}:{settings.port}: {err.strerror or err}") from None
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(HeadLimits(limits.max_header_bytes, limits.header_timeout, metrics.count_refusal),
                              WriteLimits(limits.write_timeout, metrics.count_close)),
        ws="none",
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
    return GuardServer(config, runtime, watcher, sockets, certificates.listener, on_started)


def _count_certificate(runtime: Runtime) -> Callable[[bool, CertificateInfo | None], None]:
    def count(ok: bool, info: CertificateInfo | None) -> None:
        runtime.metrics.count_certificate_reload(ok)
        if info is not None:
            runtime.metrics.certificate_not_after.set(info.not_after)

    return count


def _raise_open_files_limit(connections: int) -> None:
    """Lift the soft limit on open files to the hard one, as Go programs do, so that the connection caps and not
    EMFILE bound the connections; say so when even the hard limit is lower than the caps need."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    needed = connections + 64  # the listener, the log, the certificate and config files, the event loop's own
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("the open-files limit is lower than maxConnections needs", extra={
            "limit": soft, "needed": needed})


def _tune_malloc() -> None:
    """Allocations of 128 KiB and more come from mmap() and go back to the OS when freed.

    glibc raises its mmap threshold each time such a block is freed, up to 32 MiB, after which request bodies,
    answers and the 256 KiB read buffer uvloop gives each TLS connection come from the heap, where freed memory
    lingers. A fixed threshold keeps them out of it: an idle TLS connection costs about 35 KiB instead of 47, and
    a 3 MiB body is gone from RSS when its review is.
    """
    mallopt = libc.function("mallopt")
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
