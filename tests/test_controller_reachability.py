"""One log line when the API server stops answering, one when it answers again."""

from __future__ import annotations

import logging

import pytest

from webhook.controller.reachability import Reachability


class Clock:
    now = 10.0

    def __call__(self) -> float:
        return self.now


class Lines:
    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self._caplog = caplog

    def __iter__(self):
        return iter(self._caplog.records)

    def __getitem__(self, index: int) -> logging.LogRecord:
        return self._caplog.records[index]

    def __len__(self) -> int:
        return len(self._caplog.records)


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> Lines:
    caplog.set_level(logging.INFO, logger="webhook.controller.reachability")
    return Lines(caplog)  # read when asserted: caplog starts a new list of records for the test's call


def test_an_outage_is_logged_once_however_many_calls_fail(lines):
    clock = Clock()
    reachability = Reachability("https://k:6443", clock=clock)
    for _ in range(50):
        reachability.observe(0, "Connection refused")
        clock.now += 0.1
    assert [r.getMessage() for r in lines] == ["cannot reach the API server at https://k:6443; retrying"]
    assert lines[0].levelno == logging.ERROR and reachability.is_down


def test_server_errors_make_an_outage_too(lines):
    clock = Clock()
    reachability = Reachability("https://k:6443", clock=clock)
    for _ in range(3):
        reachability.observe(503, "Service Unavailable")
        clock.now += 0.6
    assert [r.getMessage() for r in lines] == ["the API server at https://k:6443 fails (503); retrying"]


def test_a_lone_failure_followed_by_an_answer_is_no_outage(lines):
    clock = Clock()
    reachability = Reachability("https://k:6443", clock=clock)
    reachability.observe(0, "Remote end closed connection")  # a keep-alive connection the server had closed
    clock.now += 0.2
    reachability.observe(200)
    clock.now += 5.0
    reachability.observe(0, "Remote end closed connection")
    reachability.observe(404)  # an error answer is an answer
    assert not list(lines) and reachability.outages == 0


def test_recovery_is_logged_once_with_how_long_it_was_down(lines):
    clock = Clock()
    reachability = Reachability("https://k:6443", clock=clock)
    reachability.observe(0, "Connection refused")
    clock.now += 1.0
    reachability.observe(0, "Connection refused")
    clock.now += 3.0
    reachability.observe(200)
    reachability.observe(200)
    assert [r.getMessage() for r in lines][1:] == ["the API server at https://k:6443 answers again"]
    assert (lines[1].down_seconds, lines[1].failed_calls) == (4.0, 2)
    assert not reachability.is_down


def test_each_outage_is_counted(lines):
    clock = Clock()
    reachability = Reachability("https://k:6443", clock=clock)
    for _ in range(2):
        reachability.observe(0, "timed out")
        clock.now += 2.0
        reachability.observe(0, "timed out")
        reachability.observe(200)
    assert reachability.outages == 2 and len(lines) == 4
