"""Memory of a real server under a 16 MiB body and under 200 concurrent connections.

The figures are printed (run with -s to see them; the performance docs quote them); only the memory bound is
asserted: a body over the limit is not read whole, so the process does not grow by its size.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import orjson
import pytest

from tests.support import ServerProcess, daemonset_review, read_response

pytestmark = pytest.mark.slow  # a `serve` process

MIB = 1024 * 1024
BODY = 16 * MIB


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def _report(capsys, text: str) -> None:
    with capsys.disabled():
        print(f"\n[memory] {text}")


@pytest.fixture
def server(tmp_path):
    process = ServerProcess(tmp_path)
    yield process
    process.stop()


def _send_while_reading(server: ServerProcess, head: bytes, chunks) -> int | None:
    """Send `head` and then `chunks` from a thread while the answer is read; returns the status.

    None when the answer could not be read: the server closes right after its 413 with the rest of the body
    unread, and the TCP reset that this sends may overtake the answer (uvicorn has no lingering close); now
    and then the read also stalls until the socket's timeout. tests/test_server_limits.py checks the 413
    itself, with no body racing it; this test is about memory.
    """
    conn = server.connect()

    def send() -> None:
        with contextlib.suppress(OSError):  # the server closes after its 413
            conn.sendall(head)
            for chunk in chunks:
                conn.sendall(chunk)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        status, _, _ = read_response(conn)
    except OSError:  # ConnectionError, TimeoutError, ssl.SSLError
        return None
    finally:
        sender.join(timeout=30)
        conn.close()
    return status


def test_16_mib_body_does_not_grow_the_process_by_its_size(server, capsys):
    pid = server.process.pid
    with server.connect() as conn:  # warm up: one ordinary review
        body = orjson.dumps(daemonset_review())
        conn.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        read_response(conn)
    rss_start = _status_kib(pid, "VmRSS")
    head = (b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % BODY)
    assert _send_while_reading(server, head, [b" " * MIB] * 16) in (413, None)
    peak_declared = _status_kib(pid, "VmHWM")
    rss_declared = _status_kib(pid, "VmRSS")

    chunked_head = (b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (MIB, b" " * MIB)
    assert _send_while_reading(server, chunked_head, [chunk] * 16 + [b"0\r\n\r\n"]) in (413, None)
    peak_chunked = _status_kib(pid, "VmHWM")
    rss_chunked = _status_kib(pid, "VmRSS")
    _report(capsys, f"RSS before {rss_start / 1024:.1f} MiB; 16 MiB body with Content-Length: RSS "
                    f"{rss_declared / 1024:.1f} MiB, peak {peak_declared / 1024:.1f} MiB; 16 MiB chunked body: "
                    f"RSS {rss_chunked / 1024:.1f} MiB, peak {peak_chunked / 1024:.1f} MiB")
    assert (peak_declared - rss_start) * 1024 < 4 * MIB  # refused on the header alone
    assert (peak_chunked - rss_start) * 1024 < BODY  # counted as it streams: at most the 3 MiB limit is held


def test_200_concurrent_connections(server, capsys):
    pid = server.process.pid
    rss_start = _status_kib(pid, "VmRSS")
    # From two addresses: one source may hold 128 connections at once.
    connections = [server.connect(source=f"127.0.0.{1 + i % 2}") for i in range(200)]
    try:
        rss_open = _status_kib(pid, "VmRSS")
        bodies = []
        for conn in connections:  # 200 requests in flight at once: all sent before any answer is read
            review = daemonset_review()
            body = orjson.dumps(review)
            bodies.append(review["request"]["uid"])
            conn.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        for conn, uid in zip(connections, bodies, strict=True):
            status, _, answer = read_response(conn)
            assert status == 200
            assert orjson.loads(answer)["response"]["uid"] == uid
        rss_served = _status_kib(pid, "VmRSS")
        peak = _status_kib(pid, "VmHWM")
    finally:
        for conn in connections:
            conn.close()
    _report(capsys, f"RSS before {rss_start / 1024:.1f} MiB; 200 TLS connections open {rss_open / 1024:.1f} MiB; "
                    f"after a review on each {rss_served / 1024:.1f} MiB; peak {peak / 1024:.1f} MiB")
