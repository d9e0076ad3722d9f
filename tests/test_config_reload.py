"""Reload of the policy file (a mounted ConfigMap): picked up when it changes, a broken one is rejected."""

from __future__ import annotations

import base64
import logging
import time
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support import AppClient, ServerProcess, daemonset_review
from webhook.app import create_app
from webhook.config import build_settings
from webhook.enums import Mode
from webhook.reload import ConfigReloader, FileWatcher, fingerprint

CONFIG = "policy.yaml"


def _configmap(mount: Path, text: str, generation: int) -> Path:
    """Write `text` as kubelet updates a ConfigMap volume: a new directory, then a symlink swap of ..data."""
    target = mount / f"..{generation}"
    target.mkdir(parents=True)
    (target / CONFIG).write_text(text)
    tmp_link = mount / "..data_tmp"
    tmp_link.symlink_to(target.name)
    tmp_link.replace(mount / "..data")
    path = mount / CONFIG
    if not path.is_symlink():
        path.symlink_to(f"..data/{CONFIG}")
    return path


def _app_and_watcher(path: Path, mode: Mode | None = None):
    app = create_app(build_settings(path, mode))
    watcher = FileWatcher(interval=1)
    watcher.add("config", [path], ConfigReloader(app.state.runtime))
    return app, watcher


def _metric(app, name: str) -> str:
    lines = [line for line in AppClient(app).get("/metrics").text.splitlines() if line.startswith(name)]
    return "\n".join(lines)


def test_symlink_swap_changes_the_fingerprint(tmp_path):
    path = _configmap(tmp_path, "mode: warn\n", 0)
    before = fingerprint([path])
    assert fingerprint([path]) == before
    _configmap(tmp_path, "mode: warn\n", 1)  # same content, new file: a reload is harmless and expected
    assert fingerprint([path]) != before


def test_changed_file_is_reloaded(tmp_path):
    path = _configmap(tmp_path, "mode: warn\n", 0)
    app, watcher = _app_and_watcher(path)
    _configmap(tmp_path, "mode: strip\nfailureMode: deny\n", 1)
    watcher.check()
    settings = app.state.runtime.settings
    assert settings.policy.mode is Mode.STRIP
    assert settings.allow_on_error is False
    assert 'cilium_startup_guard_config_reloads_total{result="success"} 1.0' in _metric(app, "cilium_startup_guard")


def test_unchanged_file_is_not_reloaded(tmp_path):
    path = _configmap(tmp_path, "mode: warn\n", 0)
    app, watcher = _app_and_watcher(path)
    settings = app.state.runtime.settings
    watcher.check()
    watcher.check()
    assert app.state.runtime.settings is settings


def test_broken_file_is_rejected_and_the_last_good_one_stays(tmp_path, caplog):
    path = _configmap(tmp_path, "mode: strip\n", 0)
    app, watcher = _app_and_watcher(path)
    good = app.state.runtime.settings
    _configmap(tmp_path, "mode: [strip\n", 1)
    watcher.check()
    watcher.check()  # reported once, not on every poll
    assert app.state.runtime.settings is good
    rejected = [r for r in caplog.records if r.getMessage().startswith("configuration rejected")]
    assert len(rejected) == 1
    assert rejected[0].levelno == logging.ERROR
    assert "not valid YAML" in rejected[0].error
    text = _metric(app, "cilium_startup_guard_config")
    assert 'cilium_startup_guard_config_reloads_total{result="failure"} 1.0' in text
    assert "cilium_startup_guard_config_last_reload_successful 0.0" in text
    # A file that is valid YAML but not a valid configuration is rejected the same way.
    _configmap(tmp_path, "mode: sometimes\n", 2)
    watcher.check()
    assert app.state.runtime.settings is good
    # Fixed: taken, and the gauge says so again.
    _configmap(tmp_path, "mode: deny\n", 3)
    watcher.check()
    assert app.state.runtime.settings.policy.mode is Mode.DENY
    assert "cilium_startup_guard_config_last_reload_successful 1.0" in _metric(app, "cilium_startup_guard_config")


def test_a_server_change_is_reported_as_waiting_for_a_restart(tmp_path, caplog):
    path = _configmap(tmp_path, "mode: warn\n", 0)
    app, watcher = _app_and_watcher(path)
    _configmap(tmp_path, "mode: strip\nserver:\n  maxConnections: 2000\n", 1)
    watcher.check()
    assert app.state.runtime.settings.policy.mode is Mode.STRIP  # the policy is taken
    assert app.state.runtime.settings.server.max_connections == 1024  # the server setting is not
    [waiting] = [r for r in caplog.records if r.getMessage().startswith("server settings changed")]
    assert waiting.levelno == logging.WARNING
    assert waiting.keys == ["server.maxConnections"]
    assert "cilium_startup_guard_config_last_reload_successful 0.0" in _metric(app, "cilium_startup_guard_config")
    _configmap(tmp_path, "mode: strip\n", 2)  # back to what is in force
    watcher.check()
    assert "cilium_startup_guard_config_last_reload_successful 1.0" in _metric(app, "cilium_startup_guard_config")


def test_removed_file_keeps_the_configuration(tmp_path):
    path = tmp_path / CONFIG
    path.write_text("mode: strip\n")
    app, watcher = _app_and_watcher(path)
    path.unlink()
    watcher.check()
    assert app.state.runtime.settings.policy.mode is Mode.STRIP


def test_mode_flag_still_wins_after_a_reload(tmp_path):
    path = _configmap(tmp_path, "mode: warn\nallowOptOut: true\n", 0)
    app, watcher = _app_and_watcher(path, mode=Mode.DENY)
    _configmap(tmp_path, "mode: strip\nallowOptOut: false\n", 1)
    watcher.check()
    policy = app.state.runtime.settings.policy
    assert policy.mode is Mode.DENY
    assert policy.allow_opt_out is False  # the rest of the file was taken


def test_watcher_thread_polls_until_stopped(tmp_path):
    path = _configmap(tmp_path, "mode: warn\n", 0)
    app = create_app(build_settings(path))
    watcher = FileWatcher(interval=0.05)
    watcher.add("config", [path], ConfigReloader(app.state.runtime))
    watcher.start()
    try:
        _configmap(tmp_path, "mode: strip\n", 1)
        deadline = time.monotonic() + 5
        while app.state.runtime.settings.policy.mode is not Mode.STRIP:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        watcher.stop()


def _mutate(client: httpx.Client) -> dict:
    review = daemonset_review()
    answer = client.post("/mutate", json=review).json()["response"]
    assert answer["uid"] == review["request"]["uid"]
    return answer


def _strips(answer: dict) -> bool:
    patch = orjson.loads(base64.b64decode(answer.get("patch", "W10=")))
    return any(op["path"].startswith("/spec/template/spec/tolerations") for op in patch)


@pytest.mark.slow
def test_real_server_reloads_a_configmap_and_rejects_a_broken_one(tmp_path):
    mount = tmp_path / "config"
    path = _configmap(mount, "mode: warn\n", 0)
    server = ServerProcess(tmp_path, "--config", str(path), "--reload-interval", "0.2")
    try:
        with httpx.Client(verify=server.context(), base_url=server.base_url) as client:
            assert not _strips(_mutate(client))
            _configmap(mount, "mode: strip\n", 1)
            deadline = time.monotonic() + 10
            while not _strips(_mutate(client)):
                assert time.monotonic() < deadline, server.log_text()
                time.sleep(0.1)
            _configmap(mount, "mode: strip\nexemptions: [{}]\n", 2)
            deadline = time.monotonic() + 10
            while "configuration rejected" not in server.log_text():
                assert time.monotonic() < deadline, server.log_text()
                time.sleep(0.05)
            assert _strips(_mutate(client))  # the last good configuration is still in force
            metrics = client.get("/metrics").text
        assert 'cilium_startup_guard_config_reloads_total{result="success"} 1.0' in metrics
        assert 'cilium_startup_guard_config_reloads_total{result="failure"} 1.0' in metrics
        assert 'cilium_startup_guard_admission_requests_total{endpoint="mutate",outcome="patched"}' in metrics
    finally:
        server.stop()
    rejected = [line for line in server.log_lines() if line["message"].startswith("configuration rejected")]
    assert len(rejected) == 1
    assert "exemptions.0" in rejected[0]["error"]
