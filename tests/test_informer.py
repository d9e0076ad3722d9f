"""The list-then-watch cache and the work queue."""

from __future__ import annotations

import threading
import time

from tests.fakekube import FakeKube
from tests.objects import gated_pod
from webhook import kube
from webhook.backoff import Backoff
from webhook.informer import Informer, WorkQueue


def test_queue_holds_a_key_once():
    queue = WorkQueue()
    queue.add(("ns", "a"))
    queue.add(("ns", "a"))
    assert queue.get(timeout=0) == ("ns", "a")
    assert queue.get(timeout=0) is None


def test_delayed_key_is_handed_out_when_due():
    queue = WorkQueue()
    queue.add_after(("ns", "late"), 0.2)
    queue.add(("ns", "now"))
    assert queue.get(timeout=0) == ("ns", "now")
    assert queue.get(timeout=0.05) is None
    assert queue.get(timeout=1) == ("ns", "late")


def test_closed_queue_hands_out_nothing():
    queue = WorkQueue()
    queue.close()
    started = time.monotonic()
    assert queue.get(timeout=5) is None
    assert time.monotonic() - started < 1


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
