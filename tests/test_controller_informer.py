"""The list-then-watch cache, with the real kubernetes client against the fake API server."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fakekube import FakeKube
from tests.objects import gated_pod
from webhook import kube
from webhook.backoff import Backoff
from webhook.controller.informer import Informer

pytestmark = pytest.mark.slow  # the fake API server


def pod_informer(kube_client: Any, on_change: Callable[..., Any], **options: Any) -> Informer:
    target = kube.Target(kube.PODS)
    return Informer("pods", lambda version: kube.list_all(kube_client, target, resource_version=version),
                    lambda version, timeout: kube.watch(kube_client, target, version, timeout),
                    on_change, backoff=Backoff(0.01, 0.05), **options)


@contextlib.contextmanager
def running(informer: Informer) -> Iterator[None]:
    """The informer on a thread of its own until the block ends; the block starts once it has listed."""
    stop = threading.Event()
    thread = threading.Thread(target=informer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert informer.synced.wait(5)
        yield
    finally:
        stop.set()
        informer.stop()
        thread.join(timeout=5)


def test_relist_after_410_reports_objects_deleted_meanwhile(fake_kube: FakeKube, kube_client):
    fake_kube.create(gated_pod("kept"))
    fake_kube.create(gated_pod("deleted-while-away"))
    changes: list[tuple[str, bool]] = []
    informer = pod_informer(kube_client, lambda key, old, new: changes.append((key[1], new is not None)))
    with running(informer):
        fake_kube.fail("GET", "^/api/v1/pods$", status=503, times=1, when=lambda r: r.query.get("watch") == "true")
        fake_kube.drop_watches()
        fake_kube.delete("pods", "default", "deleted-while-away")
        fake_kube.compact()
        fake_kube.wait_for(lambda: ("deleted-while-away", False) in changes)
        assert informer.cached_keys() == [("default", "kept")]
        assert informer.lists == 2


def test_a_transform_shapes_what_is_cached_and_handed_on(fake_kube: FakeKube, kube_client):
    fake_kube.create(gated_pod("listed"))
    handed: list[dict] = []
    informer = pod_informer(kube_client, lambda key, old, new: handed.append(new) if new else None,
                            transform=lambda pod: {"metadata": pod["metadata"], "trimmed": True})
    with running(informer):
        fake_kube.create(gated_pod("watched"))
        fake_kube.wait_for(lambda: len(handed) == 2)
        assert all(set(obj) == {"metadata", "trimmed"} for obj in handed)
        assert informer.get(("default", "watched")) == handed[1]
