"""Accepts the HTTPS server's connections: caps per source address and in total, TLS started on the client's first
bytes within a handshake timeout. No FastAPI, nothing of uvicorn: the HTTP protocol comes from a factory.

Over a cap a connection is reset at once, never queued, and counted. Until its first bytes arrive a connection
costs its socket and a poll handle, about 1 KiB; OpenSSL's handshake state (about 50 KiB) is made only then.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from webhook.enums import CloseReason

log = logging.getLogger(__name__)

# Accepted per wake-up before other callbacks get their turn; the kernel's backlog holds the rest.
ACCEPT_BATCH = 64
# After the process ran out of file descriptors: pause accepting this long rather than spin on the error.
ACCEPT_PAUSE_S = 0.5
# IPv6 hosts usually hold a whole /64: it counts as one source.
IPV6_SOURCE_PREFIX = 64
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST and leaves no TIME_WAIT behind
# The kernel's send buffer per connection (Linux doubles it). Autotuned, it grows to tcp_wmem's 4 MiB for a client
# that does not read: kernel memory the pod's cgroup pays for. Answers to kube-apiserver are a few KB.
SEND_BUFFER_BYTES = 256 * 1024


@dataclass(frozen=True)
class ConnectionLimits:
    per_source: int
    total: int
    handshake_timeout: float
    # How long closing waits for the client to take what is left and answer TLS's close_notify (uvloop: 30 s).
    close_timeout: float = 10.0


def source_of(address: str) -> str:
    """The key a connection is counted under: the IPv4 address, or the /64 an IPv6 address belongs to."""
    if ":" not in address:
        return address
    try:
        return str(ipaddress.IPv6Network((address.split("%", 1)[0], IPV6_SOURCE_PREFIX), strict=False))
    except ValueError:
        return address


class ConnectionTable:
    """How many connections are open, per source and in all; no I/O."""

    def __init__(self, per_source: int, total: int) -> None:
        self.per_source = per_source
        self.limit = total
        self.total = 0
        self.released = 0  # connections that have ended since start
        self._by_source: dict[str, int] = {}

    def admit(self, source: str) -> Slot | CloseReason:
        """A slot for one more connection from `source`, or why there is none."""
        if self.total >= self.limit:
            return CloseReason.TOTAL_LIMIT
        held = self._by_source.get(source, 0)
        if held >= self.per_source:
            return CloseReason.PER_SOURCE_LIMIT
        self._by_source[source] = held + 1
        self.total += 1
        return Slot(self, source)

    def count(self, source: str) -> int:
        return self._by_source.get(source, 0)

    def _release(self, source: str) -> None:
        held = self._by_source[source] - 1
        if held:
            self._by_source[source] = held
        else:
            del self._by_source[source]
        self.total -= 1
        self.released += 1


class Slot:
    """One admitted connection's place in the table; released once, whichever way the connection ends."""

    def __init__(self, table: ConnectionTable, source: str) -> None:
        self.table = table
        self.source = source
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.table._release(self.source)


@dataclass
class _Waiting:
    """A connection admitted but not yet sending: nothing of TLS exists for it yet."""

    sock: socket.socket
    slot: Slot
    deadline: float
    timer: asyncio.TimerHandle | None = None


class Listener:
    """Accepts on listening sockets that are already bound; `start_http(slot)` makes the HTTP protocol of an
    admitted connection, which must release its slot when the connection is lost."""

    def __init__(self, sockets: list[socket.socket], context: ssl.SSLContext, limits: ConnectionLimits,
                 start_http: Callable[[Slot], asyncio.Protocol],
                 on_close: Callable[[CloseReason], None] = lambda _: None) -> None:
        self.sockets = sockets
        self.context = context
        self.limits = limits
        self.start_http = start_http
        self.on_close = on_close
        self.table = ConnectionTable(limits.per_source, limits.total)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[int, _Waiting] = {}
        self._handshakes: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for sock in self.sockets:
            sock.setblocking(False)
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        """Stop accepting; drop connections that have not finished their handshake. Established connections are
        the HTTP server's to drain."""
        loop = self._loop
        for sock in self.sockets:
            if loop is not None:
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(sock.fileno())
            sock.close()
        for waiting in list(self._waiting.values()):
            self._drop(waiting)
        for task in self._handshakes:
            task.cancel()

    def _accept(self, listener: socket.socket) -> None:
        assert self._loop is not None
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # EMFILE, ENFILE, ENOBUFS: try again shortly rather than spin
                log.warning("cannot accept connections", extra={"error": str(err), "pause_s": ACCEPT_PAUSE_S})
                self._loop.remove_reader(listener.fileno())
                self._loop.call_later(ACCEPT_PAUSE_S, self._resume, listener)
                return
            admitted = self.table.admit(source_of(address[0]))
            if isinstance(admitted, CloseReason):
                _reset(sock)
                self.on_close(admitted)
                continue
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            waiting = _Waiting(sock, admitted, time.monotonic() + self.limits.handshake_timeout)
            waiting.timer = self._loop.call_later(self.limits.handshake_timeout, self._timed_out, waiting)
            self._waiting[sock.fileno()] = waiting
            self._loop.add_reader(sock.fileno(), self._readable, waiting)

    def _resume(self, listener: socket.socket) -> None:
        if self._loop is not None and listener.fileno() >= 0:
            self._loop.add_reader(listener.fileno(), self._accept, listener)

    def _readable(self, waiting: _Waiting) -> None:
        assert self._loop is not None
        self._forget(waiting)
        try:
            first = waiting.sock.recv(1, socket.MSG_PEEK)  # left in the kernel for the TLS layer to read
        except (BlockingIOError, InterruptedError):
            first = None
        except OSError:
            first = b""
        if first is None:  # woken for nothing: wait again
            self._waiting[waiting.sock.fileno()] = waiting
            self._loop.add_reader(waiting.sock.fileno(), self._readable, waiting)
            return
        if not first:  # the client left without a word
            waiting.sock.close()
            waiting.slot.release()
            return
        if waiting.timer is not None:
            waiting.timer.cancel()
        task = self._loop.create_task(self._handshake(waiting))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, waiting: _Waiting) -> None:
        assert self._loop is not None
        slot = waiting.slot
        remaining = max(0.001, waiting.deadline - time.monotonic())
        try:
            await self._loop.connect_accepted_socket(lambda: self.start_http(slot), waiting.sock, ssl=self.context,
                                                     ssl_handshake_timeout=remaining,
                                                     ssl_shutdown_timeout=self.limits.close_timeout)
        except asyncio.CancelledError:  # the listener is closing
            slot.release()
            raise
        except Exception as err:  # ssl.SSLError, ConnectionError, the timeout's ConnectionAbortedError, ...
            slot.release()
            late = time.monotonic() >= waiting.deadline - 0.01
            reason = CloseReason.TLS_HANDSHAKE_TIMEOUT if late else CloseReason.TLS_HANDSHAKE_FAILED
            self.on_close(reason)
            log.debug("TLS handshake failed", extra={"reason": reason.value, "error": str(err)[:200]})

    def _timed_out(self, waiting: _Waiting) -> None:
        waiting.timer = None
        self._drop(waiting)
        self.on_close(CloseReason.TLS_HANDSHAKE_TIMEOUT)

    def _drop(self, waiting: _Waiting) -> None:
        self._forget(waiting)
        if waiting.timer is not None:
            waiting.timer.cancel()
        _reset(waiting.sock)
        waiting.slot.release()

    def _forget(self, waiting: _Waiting) -> None:
        fd = waiting.sock.fileno()
        if self._waiting.pop(fd, None) is not None and self._loop is not None:
            self._loop.remove_reader(fd)


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    sock.close()


def bind(host: str | None, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for every address `host` resolves to, as asyncio's create_server() makes them; raises
    OSError (address in use, not an address of this host, ...) after closing whatever it had opened."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
