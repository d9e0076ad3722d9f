"""Event bodies the gate controller records: valid events.k8s.io/v1 Events about the pod."""

from __future__ import annotations

from tests.fakekube import validate_event_v1
from tests.objects import gated_pod
from webhook.controller.events import REPORTING_CONTROLLER, event_body

NOW = 1_000_000.0


def test_event_body_is_a_valid_events_v1_event():
    raw = gated_pod("p")
    raw["metadata"]["uid"] = "u1"
    event = event_body(raw, "UnmanagedPodRecycled", "Warning", "Evict", "n" * 2000, instance="x" * 200, now=NOW)
    assert validate_event_v1(event) == []
    assert event["regarding"] == {"apiVersion": "v1", "kind": "Pod", "namespace": "default", "name": "p",
                                  "uid": "u1"}
    assert event["reportingController"] == REPORTING_CONTROLLER == "startupguard.io/controller"


def test_event_name_is_the_pod_name_and_the_time_in_hex_like_client_go():
    event = event_body(gated_pod("p"), "CiliumManaged", "Normal", "SetCondition", "n", instance="i", now=NOW)
    assert event["metadata"] == {"name": f"p.{int(NOW * 1e9):x}", "namespace": "default"}
    assert event["eventTime"] == "1970-01-12T13:46:40.000000Z"
