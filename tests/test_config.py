"""Configuration: defaults < file < flags, and a bad file stops startup with one clear line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from webhook.cli import main
from webhook.config import PodScope, UnmanagedSettings, build_settings, label_selector_problem, parse_config
from webhook.enums import Mode, UnmanagedAction, UnmanagedScope
from webhook.errors import ConfigError
from webhook.policy import DEFAULT_EXEMPTIONS, Exemption


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    settings = build_settings(write(tmp_path, ""))
    assert settings.policy.mode is Mode.WARN
    assert settings.policy.exemptions == DEFAULT_EXEMPTIONS
    assert settings.allow_on_error


def test_file_settings_reach_the_policy(tmp_path: Path) -> None:
    path = write(tmp_path, """
mode: strip
allowOptOut: false
exemptions:
  - matchLabels: {app.kubernetes.io/name: node-local-dns}
  - namespace: observability
    name: logs
readinessGate: {enabled: true, conditionType: example.com/net-ready, podLabel: example.com/gated}
replacementTolerations:
  - {key: dedicated, operator: Exists, effect: NoExecute}
failureMode: deny
""")
    settings = build_settings(path)
    policy = settings.policy
    assert policy.mode is Mode.STRIP
    assert not policy.allow_opt_out
    assert policy.exemptions == (Exemption(labels=(("app.kubernetes.io/name", "node-local-dns"),)),
                                 Exemption(namespace="observability", name="logs"))
    assert (policy.gate_condition_type, policy.gate_label) == ("example.com/net-ready", "example.com/gated")
    assert policy.replacement_tolerations == ({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"},)
    assert not settings.allow_on_error


def test_flag_overrides_file_mode(tmp_path: Path) -> None:
    assert build_settings(write(tmp_path, "mode: strip"), Mode.DENY).policy.mode is Mode.DENY


@pytest.mark.parametrize("text, message", [
    pytest.param("mode: [", "not valid YAML", id="yaml-syntax"),
    pytest.param("- a\n- b", "expected a mapping", id="list"),
    pytest.param("mode: block", "mode:", id="unknown-mode"),
    pytest.param("modes: warn", "modes: unknown key", id="unknown-key"),
    pytest.param("readinessGate: {enable: true}", "readinessGate.enable: unknown key", id="unknown-nested-key"),
    pytest.param("allowOptOut: maybe", "allowOptOut", id="not-bool"),
    pytest.param("exemptions: [{}]", "empty one would match all", id="empty-exemption"),
    pytest.param("readinessGate: {conditionType: 'not valid!'}", "qualified name", id="bad-condition-type"),
    pytest.param("replacementTolerations: [{operator: Exists}]", "blanket", id="blanket-replacement"),
    pytest.param("replacementTolerations: [{key: node.cilium.io/agent-not-ready, operator: Exists}]",
                 "Cilium taint", id="replacement-tolerates-cilium"),
    pytest.param("replacementTolerations: [{key: a, effect: NoSchedule, tolerationSeconds: 5}]",
                 "tolerationSeconds", id="seconds-without-noexecute"),
    pytest.param("failureMode: maybe", "failureMode", id="bad-failure-mode"),
    pytest.param("server: {bodyTimeoutSeconds: .inf}", "server.bodyTimeoutSeconds: Input should be a finite number",
                 id="an-infinite-timeout-is-none"),
    pytest.param("controller: {renewDeadlineSeconds: .nan}", "controller.renewDeadlineSeconds", id="nan-timeout"),
    pytest.param("controller: {unmanaged: {scope: everything}}", "controller.unmanaged.scope", id="bad-scope"),
    pytest.param("controller: {unmanaged: {action: delete}}", "controller.unmanaged.action", id="bad-action"),
    pytest.param("controller: {unmanaged: {namespaces: [Kube_System]}}", "not a namespace name",
                 id="bad-namespace"),
    pytest.param("controller: {unmanaged: {selector: 'app in web'}}", "not a label requirement",
                 id="bad-selector"),
])
def test_bad_config_is_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_config(text, "config.yaml")
    assert str(caught.value).startswith("config file config.yaml: ")
    assert "\n" not in str(caught.value)


def test_missing_config_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        build_settings(tmp_path / "absent.yaml")


def test_cli_exits_2_with_one_line_on_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "mode: block")
    assert main(["serve", "--config", str(path), "--certs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("cilium-startup-guard: error: config file")
    assert "Traceback" not in err


@pytest.mark.slow
def test_serve_process_exits_2_on_unknown_key(tmp_path: Path) -> None:
    path = write(tmp_path, "mode: warn\nstrict: true\n")
    result = subprocess.run([sys.executable, "-m", "webhook", "serve", "--config", str(path), "--port", "0",
                             "--certs-dir", str(tmp_path / "certs")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "strict: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_tls_cert_without_key_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--tls-cert", str(tmp_path / "tls.crt")]) == 2
    assert "--tls-cert and --tls-key" in capsys.readouterr().err


def test_unusable_certificate_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tls.crt").write_text("not a certificate")
    (tmp_path / "tls.key").write_text("not a key")
    assert main(["serve", "--tls-cert", str(tmp_path / "tls.crt"), "--tls-key", str(tmp_path / "tls.key"),
                 "--port", "0"]) == 2
    assert "cannot use TLS certificate" in capsys.readouterr().err


def test_controller_unmanaged_section_reads_into_settings() -> None:
    file = parse_config("""
controller:
  unmanaged:
    scope: all
    action: recycle
    namespaces: [shop, payments]
    excludeNamespaces: [payments]
    selector: app.kubernetes.io/part-of=shop,tier notin (batch)
""", "config.yaml")
    settings = file.controller.unmanaged.to_settings()
    assert settings == UnmanagedSettings(UnmanagedScope.ALL, UnmanagedAction.RECYCLE, PodScope(
        ("shop", "payments"), ("payments",), "app.kubernetes.io/part-of=shop,tier notin (batch)"))
    assert not settings.pods.includes("payments") and settings.pods.includes("shop")


@pytest.mark.parametrize("scope, action, effective", [
    (UnmanagedScope.GATED, None, UnmanagedAction.RECYCLE),
    (UnmanagedScope.ALL, None, UnmanagedAction.OBSERVE),
    (UnmanagedScope.ALL, UnmanagedAction.RECYCLE, UnmanagedAction.RECYCLE),
    (UnmanagedScope.GATED, UnmanagedAction.OBSERVE, UnmanagedAction.OBSERVE),
])
def test_the_action_defaults_to_recycle_for_gated_and_observe_for_all(scope, action, effective) -> None:
    assert UnmanagedSettings(scope, action).effective_action is effective


@pytest.mark.parametrize("selector, problem", [
    ("", None), ("app=web", None), ("app==web,tier!=db", None), ("!canary", None), ("app", None),
    ("app in (web, api),tier notin (db)", None), ("example.com/team=a", None),
    ("app=", None), ("app in web", "not a label requirement"), ("=web", "not a label requirement"),
    ("-app=web", "not a valid label key"), ("app=w eb", "not a label requirement"),
    ("app=-web", "not a valid label value"),
])
def test_label_selector_problem(selector: str, problem: str | None) -> None:
    found = label_selector_problem(selector)
    assert (found is None) if problem is None else (problem in (found or ""))
