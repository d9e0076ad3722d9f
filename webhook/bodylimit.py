"""Reads a request body within a size and a time limit, for the routes that take one (the review routes).

413 before anything is read when Content-Length is over the limit, and as soon as the count of a chunked
body passes it; 408 when the body does not arrive in time. Imports nothing of FastAPI.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
from starlette.types import Receive, Scope, Send

from webhook.enums import Refusal


class BodyReader:
    """Reads a whole request body within the limits, or answers 413 or 408 and closes."""

    def __init__(self, max_bytes: int, timeout: float, on_refusal: Callable[[Refusal], None] = lambda _: None) -> None:
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.on_refusal = on_refusal

    async def read(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The body; None when it was refused (the refusal is sent) or the client left (nobody to answer)."""
        declared = content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, Refusal.BODY_TOO_LARGE, 413, self._too_large())
            return None
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk: bytes = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        await self._refuse(send, Refusal.BODY_TOO_LARGE, 413, self._too_large())
                        return None
                    if chunk:
                        chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await self._refuse(send, Refusal.BODY_TIMEOUT, 408, f"request body not received within {self.timeout:g} s")
            return None
        return b"".join(chunks)  # one chunk, the usual case, is returned as it is: no copy

    def _too_large(self) -> str:
        return f"request body is larger than {self.max_bytes} bytes"

    async def _refuse(self, send: Send, reason: Refusal, status: int, detail: str) -> None:
        self.on_refusal(reason)
        body = orjson.dumps({"detail": detail})
        # Close the connection: the rest of the body is still on its way and is not worth reading.
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def content_length(scope: Scope) -> int | None:
    """The request's Content-Length, or None when it has none (chunked) or one that is not a number."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP parser has refused it already; count what arrives instead
    return None

