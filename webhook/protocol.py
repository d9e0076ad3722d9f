"""uvicorn's httptools protocol with bounds on the request head: its size and the time it takes to arrive.

uvicorn times out idle keep-alive connections, but not a connection that never sends a request, nor headers
that trickle in or never end (httptools sets no size limit). Both would let a few clients hold connections
and memory forever. The body is bounded separately, by the BodyLimit middleware.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from webhook.enums import Refusal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadLimits:
    max_bytes: int
    timeout: float
    on_refusal: Callable[[Refusal], None] = lambda _: None


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """A head starts when the connection is made or the first byte of the next request arrives; it must be
    complete within `timeout` seconds and `max_bytes` bytes. The idle time between requests is uvicorn's
    keep-alive timeout."""

    limits: ClassVar[HeadLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_head()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_timer is not None:  # the head is still incomplete after this chunk
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_bytes and not self.transport.is_closing():
                self._refuse(Refusal.HEADER_TOO_LARGE, 431, "Request Header Fields Too Large",
                             f"request headers are larger than {self.limits.max_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:
            self._start_head()

    def on_headers_complete(self) -> None:
        self._end_head()
        super().on_headers_complete()

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

    def _refuse(self, reason: Refusal, status: int, phrase: str, detail: str) -> None:
        self._end_head()
        self.limits.on_refusal(reason)
        log.info("connection closed", extra={"reason": reason.value, "client": _peer(self.client)})
        if self.cycle is None or self.cycle.response_complete:
            # Nothing else is being written on this connection: the client may learn why.
            body = orjson.dumps({"detail": detail})
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, phrase.encode(), len(body), body))
        self.transport.close()


def guarded_protocol(limits: HeadLimits) -> type[GuardedHttpToolsProtocol]:
    """A protocol class bound to `limits`: uvicorn instantiates the class it is given, with its own arguments."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


def _peer(client: tuple[str, int] | None) -> str | None:
    return f"{client[0]}:{client[1]}" if client else None
