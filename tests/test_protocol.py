"""webhook/protocol.py driven in process: bytes fed to the protocol, answers read from a fake transport.

The TLS transport's part (pausing the protocol while it holds unsent data) is played by the test. One test gives
the protocol a real loopback TCP connection, for what only the kernel can tell: how much the client acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from typing import Any

import orjson
import uvicorn
from uvicorn.server import ServerState

from webhook.enums import CloseReason, Refusal
from webhook.listener import ConnectionTable, Slot
from webhook.protocol import (
    MAX_HEADER_COUNT,
    MAX_PIPELINED,
    GuardedHttpToolsProtocol,
    HeadLimits,
    WriteLimits,
    guarded_protocol,
)

ANSWER = b'{"ok":true}'


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]})
    await send({"type": "http.response.body", "body": ANSWER})


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.limits: tuple[int | None, int | None] | None = None
        self.on_write: Any = None  # called after each write: plays the TLS layer holding data back
        self.socket: socket.socket | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("192.0.2.1", 40000), "sockname": ("127.0.0.1", 8443),
                "sslcontext": object(), "socket": self.socket}.get(name, default)

    def write(self, data: Any) -> None:
        self.written += data
        if self.on_write is not None:
            self.on_write()

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.limits = (high, low)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Harness:
    def __init__(self, max_head: int = 4096, write_timeout: float = 5.0, keep_alive: int = 5,
                 slot: Slot | None = None) -> None:
        self.refusals: list[Refusal] = []
        self.closes: list[CloseReason] = []
        cls = guarded_protocol(HeadLimits(max_head, 5.0, self.refusals.append),
                               WriteLimits(write_timeout, self.closes.append))
        config = uvicorn.Config(_app, http=cls, ws="none", lifespan="off", log_config=None,
                                timeout_keep_alive=keep_alive)
        config.load()
        self.transport = FakeTransport()
        self.protocol: GuardedHttpToolsProtocol = cls(config=config, server_state=ServerState(), app_state={},
                                                      _loop=asyncio.get_running_loop(), slot=slot)
        self.protocol.connection_made(self.transport)

    def status(self) -> int:
        return int(bytes(self.transport.written).split(b" ", 2)[1])

    def body(self) -> dict[str, Any]:
        document: dict[str, Any] = orjson.loads(bytes(self.transport.written).partition(b"\r\n\r\n")[2])
        return document


def _run(scenario: Any) -> Any:
    return asyncio.run(scenario())


def test_a_whole_head_over_the_limit_in_one_read_is_refused_with_431():
    async def scenario() -> Harness:
        h = Harness(max_head=4096)
        h.protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 8000 + b"\r\n\r\n")
        return h

    h = _run(scenario)
    assert h.status() == 431
    assert h.transport.closed
    assert h.refusals == [Refusal.HEADER_TOO_LARGE]


def test_more_header_fields_than_the_cap_are_refused_with_431():
    async def scenario() -> Harness:
        h = Harness(max_head=65536)
        fields = b"".join(b"h%d: v\r\n" % i for i in range(MAX_HEADER_COUNT + 1))
        h.protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        return h

    h = _run(scenario)
    assert h.status() == 431
    assert h.refusals == [Refusal.HEADER_TOO_LARGE]


def test_a_head_within_the_limits_is_served():
    async def scenario() -> Harness:
        h = Harness(max_head=4096)
        fields = b"".join(b"h%d: v\r\n" % i for i in range(MAX_HEADER_COUNT - 1))
        h.protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        await asyncio.sleep(0.01)
        return h

    h = _run(scenario)
    assert h.status() == 200
    assert h.refusals == []


def test_a_request_the_parser_refuses_gets_a_json_400():
    async def scenario() -> Harness:
        h = Harness()
        h.protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        return h

    h = _run(scenario)
    assert h.status() == 400
    assert b"content-type: application/json" in h.transport.written
    assert h.body()["detail"].startswith("invalid HTTP request: ")
    assert h.transport.closed


def test_a_client_that_leaves_writing_paused_is_cut_off_after_the_write_timeout():
    async def scenario() -> Harness:
        h = Harness(write_timeout=0.02)
        h.protocol.pause_writing()
        await asyncio.sleep(0.1)
        return h

    h = _run(scenario)
    assert h.transport.aborted
    assert h.closes == [CloseReason.WRITE_TIMEOUT]


def test_a_client_that_takes_the_answer_in_time_is_not_cut_off():
    async def scenario() -> Harness:
        h = Harness(write_timeout=0.06)
        for _ in range(4):  # paused for 0.03 s at a time: 0.12 s in all, but never 0.06 s at once
            h.protocol.pause_writing()
            await asyncio.sleep(0.03)
            h.protocol.resume_writing()
        await asyncio.sleep(0.08)
        return h

    h = _run(scenario)
    assert not h.transport.closed
    assert h.closes == []


def test_a_slow_reader_is_judged_by_what_it_acknowledges_not_by_the_send_queue():
    # The kernel refills its send queue as fast as the client drains it, so the queue's size can stay level or grow
    # while the client reads on. Writing stays paused throughout; the client reads 4 KiB every 10 ms.
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(server.getsockname())
    sender, _ = server.accept()
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    reading = threading.Event()
    reading.set()

    def fill() -> None:
        with contextlib.suppress(OSError):  # the protocol aborts, the test closes the socket
            sender.sendall(b"x" * 64 * 1024 * 1024)

    def read() -> None:
        with contextlib.suppress(OSError):
            while reading.is_set() and client.recv(4096):
                time.sleep(0.01)

    async def scenario() -> tuple[list[CloseReason], Harness]:
        h = Harness(write_timeout=0.1)
        h.transport.socket = sender
        await asyncio.sleep(0.2)  # let the queues fill
        h.protocol.pause_writing()
        await asyncio.sleep(0.5)  # five write timeouts
        while_reading = list(h.closes)
        reading.clear()
        deadline = time.monotonic() + 5
        while not h.transport.aborted and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return while_reading, h

    threads = [threading.Thread(target=fill, daemon=True), threading.Thread(target=read, daemon=True)]
    for thread in threads:
        thread.start()
    try:
        while_reading, h = _run(scenario)
    finally:
        reading.clear()
        for sock in (sender, client, server):
            sock.close()
    assert while_reading == []
    assert h.transport.aborted  # once the client stopped reading
    assert h.closes == [CloseReason.WRITE_TIMEOUT]


def test_the_tls_layer_pauses_the_protocol_as_soon_as_it_holds_unsent_data():
    async def scenario() -> Harness:
        return Harness()

    assert _run(scenario).transport.limits == (1, 0)


def test_the_keep_alive_timer_starts_once_the_answer_has_been_sent():
    async def scenario() -> tuple[bool, bool]:
        h = Harness(keep_alive=1, write_timeout=60)
        h.protocol.timeout_keep_alive = 0.03  # uvicorn's Config takes whole seconds

        def hold_back() -> None:  # the TLS layer keeps the end of the answer, which the client has not taken
            if h.transport.written.endswith(ANSWER):
                h.protocol.pause_writing()

        h.transport.on_write = hold_back
        h.protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.12)
        closed_while_unsent = h.transport.closed
        h.transport.on_write = None
        h.protocol.resume_writing()  # the client took the rest
        await asyncio.sleep(0.12)
        return closed_while_unsent, h.transport.closed

    closed_while_unsent, closed_after = _run(scenario)
    assert not closed_while_unsent
    assert closed_after


def test_a_lost_connection_gives_its_slot_back():
    async def scenario() -> ConnectionTable:
        table = ConnectionTable(per_source=1, total=1)
        slot = table.admit("192.0.2.1")
        assert isinstance(slot, Slot)
        h = Harness(slot=slot)
        h.protocol.connection_lost(None)
        return table

    assert _run(scenario).total == 0


def _pipelined(count: int) -> bytes:
    return b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * count


def test_more_requests_pipelined_than_the_cap_close_the_connection():
    async def scenario() -> Harness:
        h = Harness()
        h.protocol.data_received(_pipelined(1 + MAX_PIPELINED + 1))  # one answered, the rest queued
        await asyncio.sleep(0.05)
        return h

    h = _run(scenario)
    assert h.transport.aborted
    assert h.closes == [CloseReason.PIPELINE_LIMIT]


def test_requests_pipelined_up_to_the_cap_are_all_answered():
    async def scenario() -> Harness:
        h = Harness()
        h.protocol.data_received(_pipelined(1 + MAX_PIPELINED))
        await asyncio.sleep(0.05)
        return h

    h = _run(scenario)
    assert h.transport.written.count(b"HTTP/1.1 200 ") == 1 + MAX_PIPELINED
    assert not h.transport.closed
