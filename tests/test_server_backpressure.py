"""A real `serve` process against a client that stops reading its answers (webhook/protocol.py).

The answers must pile up past what the kernel buffers (a few MB on loopback) before the server holds any: the
client keeps asking for /metrics, a few requests ahead at a time, and never reads.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.support import ServerProcess, http_request

pytestmark = pytest.mark.slow

WRITE_TIMEOUT = 0.5


def test_a_client_that_stops_reading_is_cut_off_after_the_write_timeout(tmp_path):
    server = ServerProcess(tmp_path, "--write-timeout", str(WRITE_TIMEOUT))
    try:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", server.port))
        with server.context().wrap_socket(raw, server_hostname="localhost") as conn:
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
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", server.port))
        with server.context().wrap_socket(raw, server_hostname="localhost") as conn:
            # Refused with 413 and closed; the client reads neither the answer nor TLS's close_notify.
            conn.sendall(b"POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 16777216\r\n\r\n" + b" " * 65536)
            started = time.monotonic()
            while _tcp_state(conn) == 1:
                assert time.monotonic() - started < 10, "still open: uvloop's 30 s close timeout?"
                time.sleep(0.05)
    finally:
        server.stop()
