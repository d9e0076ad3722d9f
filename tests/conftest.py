"""Shared fixtures: the fake Kubernetes API server and a real kubernetes client pointed at it; and the rule that a
test using them is marked slow, so that `pytest -m "not slow"` stays the fast inner loop."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakekube import FakeKube
from tests.installs import RenderedInstalls

# Each of these starts the fake API server.
FAKE_API_SERVER = frozenset({"fake_kube", "kubeconfig_path", "kube_client"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [item.nodeid for item in items if FAKE_API_SERVER & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("these tests start the fake API server but are not marked slow "
                                f"(@pytest.mark.slow): {', '.join(unmarked)}")


@pytest.fixture
def fake_kube() -> Iterator[FakeKube]:
    fake = FakeKube().start()
    yield fake
    fake.stop()


@pytest.fixture
def kubeconfig_path(fake_kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # The client honours proxy variables; the fake server is always local.
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(fake_kube.kubeconfig()), encoding="utf-8")
    return path


@pytest.fixture
def kube_client(kubeconfig_path: Path) -> Iterator[object]:
    from webhook import kubeclient

    client = kubeclient.connect(kubeconfig_path, "fake")
    yield client
    client.close()


@pytest.fixture
def start(kubeconfig_path: Path) -> Iterator[Callable[..., Any]]:
    """start(options=None, *, lead=True): a gate controller replica (tests/controller_harness.py), ready, and the
    leader unless `lead` is False or it runs dry; stopped after the test."""
    from tests.controller_harness import Replica, options, wait_until

    replicas: list[Replica] = []

    def start_replica(opts: Any = None, *, lead: bool = True) -> Replica:
        replica = Replica(kubeconfig_path, opts or options())
        replicas.append(replica)
        wait_until(replica.controller.is_ready)
        if lead and not replica.controller.options.dry_run:
            wait_until(lambda: replica.controller.leading)
        return replica

    yield start_replica
    for replica in replicas:
        if replica.thread.is_alive():
            replica.stop()


@pytest.fixture(scope="session")
def rendered_installs(tmp_path_factory: pytest.TempPathFactory) -> RenderedInstalls:
    """Every install (kustomize overlays and Helm chart variants, tests/installs.py) by name, each rendered once."""
    return RenderedInstalls(tmp_path_factory.mktemp("installs"))
