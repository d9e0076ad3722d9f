"""`controller --release-all`: every gated pod's condition True, for uninstalling; against the fake API server."""

from __future__ import annotations

import pytest

from tests.fakekube import FakeKube
from tests.objects import gate_status, gated_pod
from webhook.controller.loop import ControllerOptions
from webhook.controller.release import release_all

pytestmark = pytest.mark.slow  # the fake API server


def gate_of(fake: FakeKube, name: str) -> str | None:
    return gate_status(fake.get("pods", "default", name))


def test_release_all_sets_every_gated_pod_true(fake_kube: FakeKube, kube_client):
    fake_kube.create(gated_pod("running"))
    fake_kube.create(gated_pod("pending", phase="Pending", node=""))
    fake_kube.create(gated_pod("done", gate_true=True))
    assert release_all(kube_client, ControllerOptions()) == 0
    assert {p["metadata"]["name"]: gate_status(p) for p in fake_kube.list("pods")} == {
        "running": "True", "pending": "True", "done": "True"}
    assert len(fake_kube.calls("PATCH")) == 2
    assert not fake_kube.calls(path="/leases")


def test_release_all_records_a_warning_event_per_released_pod(fake_kube: FakeKube, kube_client):
    fake_kube.create(gated_pod("running"))
    assert release_all(kube_client, ControllerOptions()) == 0
    [event] = fake_kube.list("events.events.k8s.io")
    assert (event["reason"], event["type"], event["regarding"]["name"]) == ("GateReleased", "Warning", "running")
    assert "--release-all" in event["note"]


def test_release_all_exits_1_when_a_pod_cannot_be_released(fake_kube: FakeKube, kube_client):
    fake_kube.create(gated_pod("stuck"))
    fake_kube.create(gated_pod("fine"))
    fake_kube.fail("PATCH", "/pods/stuck/status$", status=500, times=None)
    assert release_all(kube_client, ControllerOptions()) == 1
    assert gate_of(fake_kube, "fine") == "True"


def test_release_all_dry_run_lists_and_writes_nothing(fake_kube: FakeKube, kube_client):
    fake_kube.create(gated_pod("running"))
    assert release_all(kube_client, ControllerOptions(dry_run=True)) == 0
    assert gate_of(fake_kube, "running") is None
    assert not [r for r in fake_kube.requests if r.method != "GET"]
