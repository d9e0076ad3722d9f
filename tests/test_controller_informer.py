"""The list-then-watch cache, with the real kubernetes client against the fake API server."""

from __future__ import annotations

import threading

import pytest

from tests.fakekube import FakeKube
from tests.objects import gated_pod
from webhook import kube
from webhook.backoff import Backoff
from webhook.controller.informer import Informer

pytestmark = pytest.mark.slow  # the fake API server


def test_relist_after_410_reports_objects_deleted_meanwhile(fake_kube: FakeKube, kube_client):
    fake_kube.create(gated_pod("kept"))
    fake_kube.create(gated_pod("deleted-while-away"))
    target = kube.Target(kube.PODS)
    changes: list[tuple[str, bool]] = []
    informer = Informer("pods", lambda: kube.list_all(kube_client, target),
                        lambda version, timeout: kube.watch(kube_client, target, version, timeout),
                        lambda key, old, new: changes.append((key[1], new is not None)),
                        backoff=Backoff(0.01, 0.05))
    stop = threading.Event()
    thread = threading.Thread(target=informer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert informer.synced.wait(5)
        fake_kube.fail("GET", "^/api/v1/pods$", status=503, times=1, when=lambda r: r.query.get("watch") == "true")
        fake_kube.drop_watches()
        fake_kube.delete("pods", "default", "deleted-while-away")
        fake_kube.compact()
        fake_kube.wait_for(lambda: ("deleted-while-away", False) in changes)
        assert informer.cached_keys() == [("default", "kept")]
        assert informer.lists == 2
    finally:
        stop.set()
        informer.stop()
        thread.join(timeout=5)
