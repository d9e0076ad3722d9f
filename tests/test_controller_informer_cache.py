"""The informer's cache without a server: transform at insert, indexes, and calls back only on a kept change."""

from __future__ import annotations

import threading
from typing import Any

from webhook.controller.informer import Informer
from webhook.controller.summaries import AgentSummary, node_of_summary, summarize_agent
from webhook.kube import WatchEvent


def pod(name: str, node: str, rv: str, ready: bool = True, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "kube-system", "resourceVersion": rv, "labels": labels},
            "spec": {"nodeName": node},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


class Stream:
    """One watch: its events, then the end of the watch; the informer's stop event is set after it."""

    def __init__(self, events: list[WatchEvent], stop: threading.Event) -> None:
        self._events, self._stop = events, stop

    def __iter__(self) -> Any:
        yield from self._events
        self._stop.set()

    def close(self) -> None:
        pass


def run(items: list[dict[str, Any]], events: list[WatchEvent]) -> tuple[Informer, list[tuple[str, Any, Any]],
                                                                            list[str]]:
    changes: list[tuple[str, Any, Any]] = []
    versions: list[str] = []
    stop = threading.Event()

    def list_at(version: str) -> tuple[list[dict[str, Any]], str]:
        versions.append(version)
        return items, "10"

    informer = Informer("agents", list_at, lambda version, timeout: Stream(events, stop),
                        lambda key, old, new: changes.append((key[1], old, new)),
                        transform=summarize_agent, indexers={"node": node_of_summary})
    informer.run(stop)
    return informer, changes, versions


def test_the_cache_keeps_the_transformed_value_and_indexes_it_by_node():
    informer, changes, _ = run([pod("cilium-1", "node-a", "5"), pod("cilium-2", "node-b", "6")], [])
    assert informer.get(("kube-system", "cilium-1")) == AgentSummary(node="node-a", ready=True)
    assert informer.by_index("node", "node-a") == [("kube-system", "cilium-1")]
    assert [c[0] for c in changes] == ["cilium-1", "cilium-2"]


def test_the_first_list_asks_for_resource_version_zero():
    _, _, versions = run([], [])
    assert versions == ["0"]


def test_a_change_to_fields_it_does_not_keep_calls_nobody_back():
    events = [WatchEvent("MODIFIED", pod("cilium-1", "node-a", "11", team="x"))]  # only a label changed
    informer, changes, _ = run([pod("cilium-1", "node-a", "5")], events)
    assert [c[0] for c in changes] == ["cilium-1"]  # the list only
    assert informer.get(("kube-system", "cilium-1")) == AgentSummary(node="node-a", ready=True)


def test_a_kept_change_calls_back_with_old_and_new_values():
    events = [WatchEvent("MODIFIED", pod("cilium-1", "node-a", "11", ready=False))]
    _, changes, _ = run([pod("cilium-1", "node-a", "5")], events)
    assert changes[-1] == ("cilium-1", AgentSummary("node-a", True), AgentSummary("node-a", False))


def test_an_object_that_moves_moves_in_the_index_and_a_deleted_one_leaves_it():
    events = [WatchEvent("MODIFIED", pod("cilium-1", "node-b", "11")),
              WatchEvent("DELETED", pod("cilium-2", "node-a", "12"))]
    informer, _, _ = run([pod("cilium-1", "node-a", "5"), pod("cilium-2", "node-a", "6")], events)
    assert informer.by_index("node", "node-a") == []
    assert informer.by_index("node", "node-b") == [("kube-system", "cilium-1")]
    assert len(informer) == 1
