"""SIGTERM against a real `cilium-startup-guard serve`: stop accepting, finish reviews in flight, exit 0."""

from __future__ import annotations

import time

import orjson
import pytest

from tests.support import ServerProcess, daemonset_review, http_request, read_response

pytestmark = pytest.mark.slow  # a `serve` process


def _wait_for_log(server: ServerProcess, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log_text():
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{server.log_text()}"
        time.sleep(0.02)


def _start_review(server: ServerProcess):
    """A /mutate request whose headers and first half of the body are sent: in flight until the rest comes."""
    review = daemonset_review()
    body = orjson.dumps(review)
    conn = server.connect()
    conn.sendall(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body[: len(body) // 2])
    return conn, body[len(body) // 2:], review["request"]["uid"]


def test_sigterm_finishes_the_review_in_flight_and_refuses_new_connections(tmp_path):
    server = ServerProcess(tmp_path)
    try:
        conn, rest, uid = _start_review(server)
        time.sleep(0.2)  # the server has the headers: the request is in flight
        server.terminate()
        _wait_for_log(server, "Shutting down")
        time.sleep(0.2)
        with pytest.raises(ConnectionRefusedError):
            server.connect()
        assert server.process.poll() is None, "the server must wait for the review in flight"
        conn.sendall(rest)
        status, headers, answer = read_response(conn)
        conn.close()
        assert status == 200
        assert orjson.loads(answer)["response"]["uid"] == uid
        assert headers.get("connection") == "close"
        assert server.process.wait(timeout=10) == 0
    finally:
        server.stop()
    assert f'"message":"admission decision","uid":"{uid}"' in server.log_text()


def test_sigterm_with_a_shutdown_delay_reports_not_ready_while_still_serving(tmp_path):
    server = ServerProcess(tmp_path, "--shutdown-delay", "1.5")
    try:
        with server.connect() as conn:
            assert http_request(conn, "GET", "/readyz")[0] == 200
        server.terminate()
        _wait_for_log(server, "shutting down: draining")
        with server.connect() as conn:
            status, _, body = http_request(conn, "GET", "/readyz")
            assert (status, orjson.loads(body)) == (503, {"status": "draining"})
            review = daemonset_review()
            status, _, body = http_request(conn, "POST", "/mutate", orjson.dumps(review),
                                           {"Content-Type": "application/json"})
            assert status == 200
            assert orjson.loads(body)["response"]["uid"] == review["request"]["uid"]
        assert server.process.wait(timeout=15) == 0
    finally:
        server.stop()


def test_shutdown_timeout_bounds_a_request_that_never_completes(tmp_path):
    # The body timeout is longer than the shutdown timeout here, so only the latter ends the wait.
    server = ServerProcess(tmp_path, "--shutdown-timeout", "1", "--body-timeout", "60")
    try:
        conn, _, _ = _start_review(server)
        time.sleep(0.2)
        started = time.monotonic()
        server.terminate()
        assert server.process.wait(timeout=15) == 0
        assert time.monotonic() - started < 8
        conn.close()
    finally:
        server.stop()
