"""A real `serve` process against clients that stop reading their answers, or read them slowly
(webhook/protocol.py). The answers must pile up past what the kernel buffers before the server holds any.
"""

from __future__ import annotations

import socket
import ssl
import time

import orjson
import pytest

from tests.support import ServerProcess, daemonset_review, http_request

pytestmark = pytest.mark.slow

WRITE_TIMEOUT = 0.5


def _small_window_connection(server: ServerProcess) -> ssl.SSLSocket:
    """A TLS connection whose receive buffer is 4 KiB: what it does not read soon backs up into the server."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", server.port))
    return server.context().wrap_socket(raw, server_hostname="localhost")


def test_a_client_that_stops_reading_is_cut_off_after_the_write_timeout(tmp_path):
    server = ServerProcess(tmp_path, "--write-timeout", str(WRITE_TIMEOUT))
    try:
        with _small_window_connection(server) as conn:
            deadline = time.monotonic() + 30
            with pytest.raises(OSError):  # the server resets the connection
                while time.monotonic() < deadline:
                    conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n" * 8)
                    time.sleep(0.02)
        with server.connect(source="127.0.0.2") as other:
            _, _, body = http_request(other, "GET", "/metrics")
        assert 'cilium_startup_guard_connections_closed_total{reason="write_timeout"} 1.0' in body.decode()
        assert '"reason":"write_timeout"' in server.log_text()
    finally:
        server.stop()



def _tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]  # tcpi_state; 1 is ESTABLISHED


def test_closing_waits_for_an_unread_client_no_longer_than_the_write_timeout(tmp_path):
    server = ServerProcess(tmp_path, "--write-timeout", str(WRITE_TIMEOUT))
    try:
        with _small_window_connection(server) as conn:
            # Refused with 413 and closed; the client reads neither the answer nor TLS's close_notify.
            conn.sendall(b"POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 16777216\r\n\r\n" + b" " * 65536)
            started = time.monotonic()
            while _tcp_state(conn) == 1:
                assert time.monotonic() - started < 10, "still open: uvloop's 30 s close timeout?"
                time.sleep(0.05)
    finally:
        server.stop()


def _read_answers(conn: ssl.SSLSocket, count: int, pause: float) -> int:
    """Read `count` answers 4 KiB at a time, sleeping `pause` after each read; returns the body bytes read."""
    data, bodies = b"", 0

    def more() -> bytes:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed by the server after {bodies} bytes of answers")
        time.sleep(pause)
        return chunk

    while count:
        while b"\r\n\r\n" not in data:
            data += more()
        head, _, data = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(
            b"content-length")))
        while len(data) < length:
            data += more()
        bodies += length
        data, count = data[length:], count - 1
    return bodies


def test_a_slow_client_that_keeps_reading_gets_every_answer(tmp_path):
    server = ServerProcess(tmp_path, "--write-timeout", str(WRITE_TIMEOUT))
    try:
        with server.connect() as conn:  # /metrics grows by a line per namespace seen: about 100 KB here
            for i in range(1000):
                http_request(conn, "POST", "/validate", orjson.dumps(daemonset_review(namespace=f"ns-{i}")),
                             {"Content-Type": "application/json"})
            size = len(http_request(conn, "GET", "/metrics")[2])
        assert size > 80_000
        with _small_window_connection(server) as conn:
            conn.settimeout(10)
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n" * 8)
            # About 200 KiB/s: the kernel wakes the server only once a third of its send buffer is free, so
            # writing stays paused for longer than the write timeout at a time, while the client reads on.
            read = _read_answers(conn, 8, pause=0.02)
        assert read > 8 * 80_000  # eight whole answers (their size varies by a few bytes)
        with server.connect(source="127.0.0.2") as other:
            _, _, body = http_request(other, "GET", "/metrics")
        assert 'cilium_startup_guard_connections_closed_total{reason="write_timeout"} 0.0' in body.decode()
    finally:
        server.stop()
