"""uvicorn's httptools protocol with bounds: on the request head (its size, its header count, the time it takes to
arrive), and on a client that stops reading the answer.

uvicorn times out idle keep-alive connections, but not a connection that never sends a request, nor headers that
trickle in or never end (httptools sets no size limit), nor an answer the client never reads (the transport
buffers all of it). Each would let a few clients hold connections and memory. The body is bounded separately,
by bodylimit.BodyReader. Errors the parser finds are answered with the same JSON `{"detail": ...}` as the app's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from webhook.enums import CloseReason, Refusal
from webhook.listener import Slot

log = logging.getLogger(__name__)

# Apache's LimitRequestFields default; kube-apiserver sends about six headers. Thousands of tiny headers within
# the byte limit would each cost a tuple and two bytes objects.
MAX_HEADER_COUNT = 100
# Requests queued behind the one being answered. The parser reads every request in a chunk at once, and uvicorn
# queues each (a scope and a cycle, about 2 KiB): 256 KiB of pipelined GETs would be 7000 of them. Go's HTTP client
# (kube-apiserver's) and the kubelet's probes never pipeline.
MAX_PIPELINED = 16
# struct tcp_info (linux/tcp.h): tcpi_bytes_acked, a u64 since Linux 4.1, sits at byte 120; ask for a little more.
_TCPI_BYTES_ACKED_OFFSET = 120
_TCP_INFO_BYTES = 136


@dataclass(frozen=True)
class HeadLimits:
    max_bytes: int
    timeout: float
    on_refusal: Callable[[Refusal], None] = lambda _: None


@dataclass(frozen=True)
class WriteLimits:
    timeout: float
    on_close: Callable[[CloseReason], None] = lambda _: None


class _HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops parsing and feed_data() raises HttpParserCallbackError."""


class _TooManyPipelined(Exception):
    """Raised from on_headers_complete, like _HeadTooLarge."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """A head starts when the connection is made or the first byte of the next request arrives; it must be
    complete within `timeout` seconds, `max_bytes` bytes and MAX_HEADER_COUNT headers. The idle time between
    requests is uvicorn's keep-alive timeout, counted from when the answer has been sent, not handed over.

    The TLS transport asks this protocol to pause writing as soon as it holds any of the answer that the kernel
    did not take; a client that leaves it paused for the write timeout, without acknowledging any more bytes
    meanwhile, is cut off. So is a client that sends more than MAX_PIPELINED requests ahead of its answers.
    """

    limits: ClassVar[HeadLimits]
    write_limits: ClassVar[WriteLimits]

    def __init__(self, *args: Any, slot: Slot | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slot = slot
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # raw bytes received while the head is incomplete
        self._head_size = 0  # bytes of the URL and headers the parser has handed over
        self._header_count = 0
        self._write_timer: asyncio.TimerHandle | None = None
        self._acked_at_check: int | None = None
        self._keep_alive_when_sent = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Pause as soon as the TLS layer holds anything the socket did not take; resume once it holds nothing.
        transport.set_write_buffer_limits(high=1, low=0)
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_head()
        self._end_write_wait()
        if self.slot is not None:
            self.slot.release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's, except for the limits and the JSON answers.
        self._unset_keepalive_if_required()
        self._keep_alive_when_sent = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as err:
            if isinstance(err, httptools.HttpParserCallbackError) and (
                    isinstance(err.__context__, _HeadTooLarge) or self._head_over_limit()):
                self._refuse_large_head()
                return
            if isinstance(err.__context__, _TooManyPipelined):
                self._cut_off(CloseReason.PIPELINE_LIMIT)  # the answers owed cannot all be given
                return
            log.info("invalid HTTP request", extra={"error": str(err)[:200], "client": _peer(self.client)})
            self.send_400_response(f"invalid HTTP request: {err}"[:200])
            return
        except httptools.HttpParserUpgrade:
            pass  # no WebSocket here: the request is served as plain HTTP, without uvicorn's two warning lines
        if self._head_timer is not None:  # the head is still incomplete after this chunk
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_bytes and not self.transport.is_closing():
                self._refuse_large_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_size = 0
        self._header_count = 0
        if self._head_timer is None:
            self._start_head()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_size += len(url)
        if self._head_over_limit():
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        self._header_count += 1
        if self._head_over_limit():
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        self._end_head()
        super().on_headers_complete()
        if len(self.pipeline) > MAX_PIPELINED:
            raise _TooManyPipelined

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.flow.write_paused and self.timeout_keep_alive_task is not None:
            # Part of the answer is still waiting for the client: the connection is not idle yet.
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
            self._keep_alive_when_sent = True

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._acked_at_check = _acked_bytes(self.transport)
            self._write_timer = self.loop.call_later(self.write_limits.timeout, self._write_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._end_write_wait()
        if self._keep_alive_when_sent and not self.transport.is_closing():
            self._keep_alive_when_sent = False
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)

    def send_400_response(self, msg: str) -> None:
        self._answer_and_close(400, "Bad Request", msg)

    def _head_over_limit(self) -> bool:
        return self._head_size > self.limits.max_bytes or self._header_count > MAX_HEADER_COUNT

    def _start_head(self) -> None:
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(self.limits.timeout, self._head_timed_out)

    def _end_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self._refuse(Refusal.HEADER_TIMEOUT, 408, "Request Timeout",
                         f"request headers not received within {self.limits.timeout:g} s")

    def _refuse_large_head(self) -> None:
        self._refuse(Refusal.HEADER_TOO_LARGE, 431, "Request Header Fields Too Large",
                     f"request headers are larger than {self.limits.max_bytes} bytes or more than "
                     f"{MAX_HEADER_COUNT} fields")

    def _refuse(self, reason: Refusal, status: int, phrase: str, detail: str) -> None:
        self._end_head()
        self.limits.on_refusal(reason)
        log.info("connection closed", extra={"reason": reason.value, "client": _peer(self.client)})
        self._answer_and_close(status, phrase, detail)

    def _answer_and_close(self, status: int, phrase: str, detail: str) -> None:
        if self.cycle is None or self.cycle.response_complete:
            # Nothing else is being written on this connection: the client may learn why.
            body = orjson.dumps({"detail": detail})
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, phrase.encode(), len(body), body))
        self.transport.close()

    def _end_write_wait(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_timed_out(self) -> None:
        self._write_timer = None
        acked = _acked_bytes(self.transport)
        if acked is not None and self._acked_at_check is not None and acked > self._acked_at_check:
            # The client acknowledged more of the answer: it is reading, only slowly. The kernel wakes the transport
            # only once a good part of its send buffer is free, so a slow reader can leave writing paused for long.
            # (The size of the kernel's send queue tells nothing here: it is refilled as fast as the client reads.)
            self._acked_at_check = acked
            self._write_timer = self.loop.call_later(self.write_limits.timeout, self._write_timed_out)
            return
        self._cut_off(CloseReason.WRITE_TIMEOUT)

    def _cut_off(self, reason: CloseReason) -> None:
        """Count, log and reset the connection; nothing more is sent (close() would wait to flush what is owed)."""
        self.write_limits.on_close(reason)
        log.info("connection closed", extra={"reason": reason.value, "client": _peer(self.client)})
        self.transport.abort()


def guarded_protocol(limits: HeadLimits, write_limits: WriteLimits) -> type[GuardedHttpToolsProtocol]:
    """A protocol class bound to the limits: uvicorn instantiates the class it is given, with its own arguments."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,),
                {"limits": limits, "write_limits": write_limits})


def _acked_bytes(transport: asyncio.BaseTransport) -> int | None:
    """How many bytes the client has acknowledged on this connection so far (Linux's tcpi_bytes_acked), or None
    when the transport has no TCP socket to ask."""
    sock = transport.get_extra_info("socket")
    tcp_info = getattr(socket, "TCP_INFO", None)  # Linux only: elsewhere the write timeout is a plain timeout
    if sock is None or tcp_info is None:
        return None
    with contextlib.suppress(OSError, ValueError, struct.error):
        info = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, _TCP_INFO_BYTES)
        acked: int = struct.unpack_from("Q", info, _TCPI_BYTES_ACKED_OFFSET)[0]
        return acked
    return None


def _peer(client: tuple[str, int] | None) -> str | None:
    return f"{client[0]}:{client[1]}" if client else None
