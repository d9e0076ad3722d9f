"""Hostile and slow clients against a real server: size limits, time limits, malformed requests."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import orjson
import pytest

from tests.support import ServerProcess, daemonset_review, http_request, read_response

pytestmark = pytest.mark.slow  # a `serve` process

MIB = 1024 * 1024


@pytest.fixture
def server(tmp_path):
    process = ServerProcess(tmp_path, "--header-timeout", "1", "--body-timeout", "1")
    yield process
    process.stop()


def _metric(server: ServerProcess, line_start: str) -> float:
    with httpx.Client(verify=server.context(), base_url=server.base_url) as client:
        text = client.get("/metrics").text
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {line_start} in /metrics")


def _review_bytes() -> tuple[bytes, str]:
    review = daemonset_review()
    return orjson.dumps(review), review["request"]["uid"]


def test_body_over_the_limit_is_refused_before_it_is_read(server):
    rss_before = server.rss_bytes()
    with server.connect() as conn:
        conn.sendall(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % (16 * MIB) + b"[" * MIB)
        status, headers, body = read_response(conn)
    assert status == 413
    assert headers["connection"] == "close"
    assert "larger than 3145728 bytes" in orjson.loads(body)["detail"]
    assert server.rss_bytes() - rss_before < 4 * MIB  # nowhere near the 16 MiB announced
    assert _metric(server, 'cilium_startup_guard_http_refused_total{reason="body_too_large"}') == 1


def test_chunked_body_over_the_limit_is_refused_while_it_streams(server):
    chunk = b"%x\r\n%s\r\n" % (MIB, b" " * MIB)
    with server.connect() as conn:
        conn.sendall(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        conn.settimeout(0.05)
        answer = b""
        for _ in range(32):  # up to 32 MiB; the limit is 3 MiB
            try:
                conn.sendall(chunk)
                answer += conn.recv(65536)
            except (TimeoutError, OSError):
                pass
            if answer:
                break
        conn.settimeout(10)
        if b"\r\n\r\n" not in answer:
            answer += conn.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_body_under_the_limit_is_reviewed(server):
    review = daemonset_review(padding="x" * (3 * MIB - 4096))
    with httpx.Client(verify=server.context(), base_url=server.base_url, timeout=30) as client:
        response = client.post("/mutate", content=orjson.dumps(review), headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert response.json()["response"]["uid"] == review["request"]["uid"]


def test_head_over_the_limit_is_refused_with_431(server):
    with server.connect() as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + b"X-Filler: " + b"a" * (100 * 1024) + b"\r\n")
        status, headers, _ = read_response(conn)
    assert status == 431
    assert headers["connection"] == "close"


def test_connection_that_sends_nothing_is_closed_after_the_header_timeout(server):
    with server.connect() as conn:
        started = time.monotonic()
        status, _, body = read_response(conn)
        waited = time.monotonic() - started
    assert status == 408
    assert "headers not received" in orjson.loads(body)["detail"]
    assert waited < 5
    assert _metric(server, 'cilium_startup_guard_http_refused_total{reason="header_timeout"}') >= 1


def test_body_that_stalls_is_answered_408(server):
    body, _ = _review_bytes()
    with server.connect() as conn:
        conn.sendall(b"POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:100])
        status, headers, answer = read_response(conn)
    assert status == 408
    assert headers["connection"] == "close"
    assert orjson.loads(answer) == {"detail": "request body not received within 1 s"}
    assert _metric(server, 'cilium_startup_guard_http_refused_total{reason="body_timeout"}') == 1


def test_slow_clients_do_not_block_the_others(server):
    body, _ = _review_bytes()
    slow = [server.connect() for _ in range(20)]
    stop = threading.Event()

    def trickle() -> None:
        # Half of them trickle headers, half send headers and stall in the body: one byte every 0.2 s.
        heads = [b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n" % len(body)] * 10 + [
            b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)] * 10
        for conn, head in zip(slow, heads, strict=True):
            conn.sendall(head)
        while not stop.wait(0.2):
            for conn in slow:
                with contextlib.suppress(OSError):  # closed by the server's timeout
                    conn.sendall(b"x")

    trickler = threading.Thread(target=trickle)
    trickler.start()
    try:
        answered = 0
        with httpx.Client(verify=server.context(), base_url=server.base_url, timeout=5) as client:
            for _ in range(50):
                review = daemonset_review()
                response = client.post("/mutate", json=review)
                assert response.json()["response"]["uid"] == review["request"]["uid"]
                answered += 1
        assert answered == 50
        # And the slow ones are cut off by the timeouts rather than held forever.
        for conn in slow:
            conn.settimeout(5)
            status, _, _ = read_response(conn)
            assert status == 408
    finally:
        stop.set()
        trickler.join()
        for conn in slow:
            conn.close()


@pytest.mark.parametrize("request_bytes, expected_status", [
    pytest.param(b"\x16\x03\x01garbage\r\n\r\n", 400, id="not-http"),
    pytest.param(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, id="bad-content-length"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400, id="bad-header"),
    pytest.param(b"BREW /mutate HTTP/1.1\r\nHost: x\r\n\r\n", 400, id="unknown-method"),
    pytest.param(b"DELETE /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405, id="wrong-method"),
    pytest.param(b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 404, id="path-traversal"),
])
def test_malformed_requests_get_a_4xx_and_the_server_stays_up(server, request_bytes, expected_status):
    with server.connect() as conn:
        conn.sendall(request_bytes)
        status, _, _ = read_response(conn)
    assert status == expected_status
    with server.connect() as conn:
        assert http_request(conn, "GET", "/healthz")[0] == 200


@pytest.mark.parametrize("body, content_type, expected_status", [
    pytest.param(b"", "application/json", 400, id="empty"),
    pytest.param(b"{", "application/json", 400, id="truncated-json"),
    pytest.param(b"[" * 5000, "application/json", 400, id="nesting-past-orjson-limit"),
    pytest.param(b"\xff\xfe\x00", "application/json", 400, id="not-utf8"),
    pytest.param(b'{"apiVersion": "admission.k8s.io/v1"}', "application/json", 400, id="not-a-review"),
    pytest.param(b"{}", "text/plain", 415, id="wrong-content-type"),
])
def test_hostile_bodies_get_a_json_4xx(server, body, content_type, expected_status):
    with server.connect() as conn:
        status, headers, answer = http_request(conn, "POST", "/validate", body, {"Content-Type": content_type})
        assert status == expected_status
        assert headers["content-type"] == "application/json"
        assert "detail" in orjson.loads(answer)
        assert http_request(conn, "GET", "/healthz")[0] == 200  # the same connection still serves
