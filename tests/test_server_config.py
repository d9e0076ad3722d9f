"""The server: section of the config file and the serve flags that override it."""

from __future__ import annotations

import pytest

from webhook.cli import main
from webhook.config import ServerSettings, build_settings, reload_settings
from webhook.errors import ConfigError


def test_defaults_without_a_file():
    assert build_settings().server == ServerSettings()
    assert ServerSettings().max_body_bytes == 3 * 1024 * 1024


def test_file_keys_are_camel_case_and_flags_win(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("server:\n  maxBodyBytes: 2048\n  bodyTimeoutSeconds: 3\n  reloadIntervalSeconds: 0.5\n")
    server = build_settings(path, server={"body_timeout": 7.5, "header_timeout": None}).server
    assert (server.max_body_bytes, server.body_timeout, server.reload_interval, server.header_timeout) == (
        2048, 7.5, 0.5, ServerSettings.header_timeout)


@pytest.mark.parametrize("text, problem", [
    pytest.param("server:\n  maxBodyBytes: 10\n", "server.maxBodyBytes", id="too-small"),
    pytest.param("server:\n  bodyTimeoutSeconds: 0\n", "server.bodyTimeoutSeconds", id="zero-timeout"),
    pytest.param("server:\n  bodyTimeout: 5\n", "unknown key", id="unknown-key"),
    pytest.param("server:\n  maxBodyBytes: lots\n", "server.maxBodyBytes", id="not-a-number"),
])
def test_bad_server_section_is_a_config_error(tmp_path, text, problem):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        build_settings(path)


@pytest.mark.parametrize("value", ["0", "inf", "nan"])
def test_bad_flag_value_stops_serve_with_exit_status_2(capsys, value):
    assert main(["serve", "--body-timeout", value]) == 2
    assert "body_timeout" in capsys.readouterr().err


def test_reload_keeps_the_server_settings_of_start_up(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("server:\n  maxBodyBytes: 4096\n")
    settings = build_settings(path)
    path.write_text("mode: strip\nserver:\n  maxBodyBytes: 999999\n")
    reloaded, waiting = reload_settings(settings)
    assert reloaded.server.max_body_bytes == 4096
    assert reloaded.policy.mode.value == "strip"
    assert waiting == ("maxBodyBytes",)


def test_reload_with_the_server_settings_of_start_up_has_nothing_waiting(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("server:\n  maxBodyBytes: 4096\n")
    settings = build_settings(path)
    path.write_text("mode: strip\nserver:\n  maxBodyBytes: 4096\n")
    assert reload_settings(settings)[1] == ()


def test_a_server_key_a_flag_overrides_does_not_wait_for_a_restart(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("server:\n  writeTimeoutSeconds: 3\n")
    settings = build_settings(path, server={"write_timeout": 7.0})
    path.write_text("server:\n  writeTimeoutSeconds: 4\n  maxConnections: 2000\n")
    assert reload_settings(settings)[1] == ("maxConnections",)
