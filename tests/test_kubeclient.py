"""webhook/kubeclient.py: connecting from a kubeconfig or the in-cluster configuration, the client's settings and
the answer hook, with the real kubernetes client against the fake API server (tests/fakekube.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakekube import FakeKube
from webhook import kube, kubeclient


@pytest.mark.slow
def test_connect_uses_the_kubeconfig_context(kubeconfig_path: Path, fake_kube: FakeKube):
    client = kubeclient.connect(kubeconfig_path, "fake")
    try:
        kube.get_pod(client, "default", "absent")
    finally:
        client.close()
    assert fake_kube.calls("GET", "/api/v1/namespaces/default/pods/absent")


@pytest.mark.slow
def test_connect_names_an_unknown_context(kubeconfig_path: Path):
    with pytest.raises(kubeclient.KubeConfigError, match="nope"):
        kubeclient.connect(kubeconfig_path, "nope")


def test_connect_without_kubeconfig_outside_a_cluster_asks_for_one(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(kubeclient.KubeConfigError, match="--kubeconfig"):
        kubeclient.connect(None)


@pytest.mark.parametrize("content", [
    pytest.param("{{{ not yaml", id="not-yaml"),
    pytest.param("just a string", id="a-string"),
    pytest.param("clusters: 5", id="wrong-types"),
    pytest.param("", id="empty"),
])
def test_connect_reports_a_malformed_kubeconfig_in_one_line(tmp_path: Path, content: str):
    path = tmp_path / "kubeconfig"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(kubeclient.KubeConfigError) as caught:
        kubeclient.connect(path)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_default_kubeconfig_is_kubeconfig_variable_then_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KUBECONFIG", "/a/config:/b/config")
    assert kubeclient.default_kubeconfig() == Path("/a/config:/b/config")
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert kubeclient.default_kubeconfig() is None  # no ~/.kube/config: in-cluster
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text("{}", encoding="utf-8")
    assert kubeclient.default_kubeconfig() == tmp_path / ".kube" / "config"


@pytest.mark.slow
def test_the_answer_hook_sees_each_status_and_unreachable_servers(fake_kube: FakeKube, kubeconfig_path: Path):
    seen: list[int] = []
    client = kubeclient.connect(kubeconfig_path, "fake", retries=0, on_answer=lambda status, error: seen.append(status))
    try:
        kube.get_pod(client, "default", "absent")  # 404: an answer
        fake_kube.fail("GET", "/pods/absent$", status=503)
        with pytest.raises(kube.ApiError):
            kube.get_pod(client, "default", "absent")
        kube.list_all(client, kube.Target(kube.NODES))
        fake_kube.stop()
        with pytest.raises(kube.ApiError) as raised:
            kube.get_pod(client, "default", "absent")
        assert raised.value.status == 0
    finally:
        client.close()
    assert seen == [404, 503, 200, 0]


@pytest.mark.slow
def test_the_proxy_of_the_environment_is_read_once_and_kept(kubeconfig_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    client = kubeclient.connect(kubeconfig_path, "fake")
    try:
        monkeypatch.setenv("HTTP_PROXY", "http://other.example:3128")
        client.api_client.configuration.host = client.api_client.configuration.host  # as the token refresh does
        assert client.api_client.configuration.proxy == "http://proxy.example:3128"
    finally:
        client.close()
