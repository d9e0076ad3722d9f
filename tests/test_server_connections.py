"""Connection caps and the TLS handshake timeout of a real `serve` process (webhook/listener.py).

The server caps connections per source address; the tests play other clients from other 127.x addresses.
"""

from __future__ import annotations

import contextlib
import socket
import time

import pytest

from tests.support import ServerProcess, http_request

pytestmark = pytest.mark.slow

PER_SOURCE = 3
TOTAL = 5
HANDSHAKE_TIMEOUT = 0.5


@pytest.fixture
def server(tmp_path):
    process = ServerProcess(tmp_path, "--max-connections-per-source", str(PER_SOURCE),
                            "--max-connections", str(TOTAL), "--tls-handshake-timeout", str(HANDSHAKE_TIMEOUT))
    yield process
    process.stop()


def _metric(server: ServerProcess, series: str, source: str = "127.0.0.9") -> float:
    with server.connect(source=source) as conn:
        _, _, body = http_request(conn, "GET", "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(f"cilium_startup_guard_{series} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {series} in /metrics")


def _wait_for_metric(server: ServerProcess, series: str, expected: float, timeout: float = 10,
                     at_least: bool = False) -> None:
    """Until `series` reads `expected` (or more); a metrics connection refused meanwhile (the server has not yet
    seen a connection close that makes room) is tried again."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        try:
            value = _metric(server, series)
        except ConnectionError:
            value = None
        if value == expected or (at_least and value is not None and value >= expected):
            return
        time.sleep(0.05)
    raise AssertionError(f"{series} is {value}, expected {expected}")


def _closed_by_server(sock: socket.socket, timeout: float = 5) -> float:
    """Seconds until the server closed `sock` (EOF or reset), reading nothing but the close."""
    sock.settimeout(timeout)
    started = time.monotonic()
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1) == b""
    return time.monotonic() - started


def _tcp(server: ServerProcess, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=(source, 0))


def _reset_at_once(server: ServerProcess, source: str = "127.0.0.1") -> bool:
    try:
        sock = _tcp(server, source)
    except ConnectionResetError:  # on loopback the reset can come before connect() returns
        return True
    with sock:
        return _closed_by_server(sock) < 1


def test_a_connection_over_the_per_source_cap_is_reset_at_once(server):
    held = [server.connect() for _ in range(PER_SOURCE)]
    try:
        assert _reset_at_once(server)
        assert _metric(server, 'connections_closed_total{reason="per_source_limit"}') == 1
        with server.connect(source="127.0.0.2") as other:  # another source is served meanwhile
            assert http_request(other, "GET", "/healthz")[0] == 200
        assert http_request(held[0], "GET", "/healthz")[0] == 200  # and so are the connections held
    finally:
        for conn in held:
            conn.close()


def test_a_connection_over_the_total_cap_is_reset_whatever_its_source(server):
    held = [server.connect(source=f"127.0.0.{2 + i % 2}") for i in range(TOTAL)]
    try:
        assert _reset_at_once(server, source="127.0.0.4")
        held.pop().close()  # room for the metrics request
        # At least: a metrics connection that comes before the server has seen the close is refused as well.
        _wait_for_metric(server, 'connections_closed_total{reason="total_limit"}', 1, at_least=True)
    finally:
        for conn in held:
            conn.close()


def test_a_closed_connection_gives_its_place_back(server):
    for _ in range(2 * PER_SOURCE):  # twice the cap, one after the other
        with server.connect() as conn:
            assert http_request(conn, "GET", "/healthz", headers={"Connection": "close"})[0] == 200
    _wait_for_metric(server, "connections_open", 1)  # the metrics request itself


def test_a_connection_that_never_starts_tls_is_closed_after_the_handshake_timeout(server):
    with _tcp(server) as silent:
        waited = _closed_by_server(silent)
    assert HANDSHAKE_TIMEOUT * 0.8 < waited < HANDSHAKE_TIMEOUT + 2
    assert _metric(server, 'connections_closed_total{reason="tls_handshake_timeout"}') == 1


def test_a_handshake_that_stalls_after_its_first_bytes_is_closed_by_the_same_timeout(server):
    with _tcp(server) as stalled:
        stalled.sendall(b"\x16\x03\x01\x02\x00")  # the start of a ClientHello record, then nothing
        waited = _closed_by_server(stalled)
    assert waited < HANDSHAKE_TIMEOUT + 2
    assert _metric(server, 'connections_closed_total{reason="tls_handshake_timeout"}') == 1


def test_a_client_that_does_not_speak_tls_is_counted_as_a_failed_handshake(server):
    with _tcp(server) as plain:
        plain.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        _closed_by_server(plain)
    _wait_for_metric(server, 'connections_closed_total{reason="tls_handshake_failed"}', 1)
