"""`cilium-startup-guard controller`: its flags, its exits, and that other commands never load the client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakekube import FakeKube
from tests.objects import agent_pod, endpoint, gate_status, gated_pod, node
from webhook import cli
from webhook.cli import controller as controller_verb
from webhook.config import ConfigFile, PodScope, UnmanagedSettings, load_config
from webhook.enums import UnmanagedAction, UnmanagedScope

FLAGS = {"--kubeconfig", "--context", "--config", "--grace-period", "--recycle-rate", "--release-after",
               "--metrics-port", "--lease-namespace", "--lease-name", "--cilium-namespace",
               "--cilium-agent-selector", "--dry-run", "--release-all", "--workers", "--unmanaged-scope",
               "--unmanaged-action",
               "--namespace", "--exclude-namespace", "--selector"}
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def quiet_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    # main() would otherwise point the root logger at this test's captured stderr for the rest of the run.
    monkeypatch.setattr(controller_verb, "configure_logging", lambda level="info": None)


def test_controller_takes_exactly_its_documented_flags():
    parser = cli.build_parser()
    [commands] = [a for a in parser._actions if a.dest == "command"]
    controller = commands.choices["controller"]
    flags = {s for a in controller._actions for s in a.option_strings} - {"-h", "--help"}
    assert flags == FLAGS


@pytest.mark.slow
def test_serve_and_review_never_import_the_kubernetes_client(tmp_path: Path):
    manifest = tmp_path / "ds.yaml"
    manifest.write_text("apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x, namespace: y}\n"
                        "spec: {template: {spec: {containers: []}}}\n", encoding="utf-8")
    script = ("import sys, webhook.cli, webhook.server, webhook.app\n"
              f"webhook.cli.main(['review', {str(manifest)!r}])\n"
              "print('LOADED' if 'kubernetes' in sys.modules else 'CLEAN')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.stdout.strip().endswith("CLEAN"), result.stderr


@pytest.mark.slow
def test_release_all_from_the_command_line(fake_kube: FakeKube, kubeconfig_path: Path):
    fake_kube.create(gated_pod("a"))
    fake_kube.create(gated_pod("b", phase="Pending", node=""))
    status = cli.main(["controller", "--kubeconfig", str(kubeconfig_path), "--context", "fake", "--release-all"])
    assert status == 0
    assert [gate_status(p) for p in fake_kube.list("pods")] == ["True", "True"]


def test_controller_outside_a_cluster_without_kubeconfig_exits_2(monkeypatch, capsys):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert cli.main(["controller", "--release-all"]) == 2
    assert "--kubeconfig" in capsys.readouterr().err


@pytest.mark.slow
def test_controller_refuses_lease_timings_out_of_order(tmp_path: Path, kubeconfig_path: Path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text("controller:\n  leaseDurationSeconds: 15\n  renewDeadlineSeconds: 20\n", encoding="utf-8")
    assert cli.main(["controller", "--kubeconfig", str(kubeconfig_path), "--config", str(config)]) == 2
    assert "renewDeadlineSeconds" in capsys.readouterr().err


def parse(*argv: str):
    return cli.build_parser().parse_args(["controller", *argv])


def test_unmanaged_settings_come_from_the_file_and_flags_win(tmp_path: Path):
    config = tmp_path / "config.yaml"
    config.write_text("controller:\n  unmanaged: {scope: all, namespaces: [shop], selector: app=web}\n",
                      encoding="utf-8")
    file = load_config(config)
    from_file = controller_verb.unmanaged_settings(parse(), file)
    assert from_file == UnmanagedSettings(UnmanagedScope.ALL, None, PodScope(("shop",), (), "app=web"))
    assert from_file.effective_action is UnmanagedAction.OBSERVE
    flags = controller_verb.unmanaged_settings(parse("--unmanaged-action", "recycle", "--namespace", "pay",
                                                     "--namespace", "shop", "--exclude-namespace", "kube-system"),
                                               file)
    assert flags == UnmanagedSettings(UnmanagedScope.ALL, UnmanagedAction.RECYCLE,
                                      PodScope(("pay", "shop"), ("kube-system",), "app=web"))
    assert controller_verb.unmanaged_settings(parse(), ConfigFile()) == UnmanagedSettings()


@pytest.mark.parametrize("flag, value", [
    pytest.param("--unmanaged-scope", "everything", id="unknown-scope"),
    pytest.param("--namespace", "Not_A_Namespace", id="bad-namespace"),
    pytest.param("--selector", "app in web", id="bad-selector"),
    pytest.param("--grace-period", "-1", id="negative-grace"),
    pytest.param("--recycle-rate", "lots", id="not-a-number"),
    pytest.param("--metrics-port", "70000", id="port-out-of-range"),
])
def test_controller_rejects_bad_flag_values(flag, value, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["controller", flag, value])
    assert exited.value.code == 2


@pytest.mark.slow
def test_controller_process_sets_gates_and_releases_its_lease_on_sigterm(fake_kube: FakeKube,
                                                                         kubeconfig_path: Path):
    fake_kube.create(node("node-a"))
    fake_kube.create(agent_pod("node-a"))
    pod = fake_kube.create(gated_pod("agent-1"))
    fake_kube.create(endpoint(pod))
    env = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "webhook", "controller", "--kubeconfig", str(kubeconfig_path), "--context", "fake",
         "--metrics-port", "0", "--lease-namespace", "default"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        fake_kube.wait_for(lambda: gate_status(fake_kube.get("pods", "default", "agent-1")) == "True", timeout=30)
        lease = fake_kube.get("leases.coordination.k8s.io", "default", "cilium-startup-guard-controller")
        assert lease["spec"]["holderIdentity"]
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    lease = fake_kube.get("leases.coordination.k8s.io", "default", "cilium-startup-guard-controller")
    assert lease["spec"]["holderIdentity"] == ""
    logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any(entry["message"] == "released the lease" for entry in logs)
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in logs)
