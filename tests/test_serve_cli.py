"""`cilium-startup-guard serve` and the top-level command at their edges: bad ports, a port in use, --version."""

from __future__ import annotations

import importlib.metadata
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ServerProcess, make_certs
from webhook.certs import CERT_FILE, KEY_FILE
from webhook.cli import main


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    make_certs(tmp_path)
    script = Path(sys.executable).with_name("cilium-startup-guard")
    return subprocess.run([str(script), "serve", "--tls-cert", str(tmp_path / CERT_FILE),
                           "--tls-key", str(tmp_path / KEY_FILE), *args],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("port", ["70000", "-1", "https", "8443.5"])
def test_a_port_outside_0_to_65535_is_a_usage_error(capsys, port):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--port", port])
    assert exit_info.value.code == 2
    assert "argument --port: expected a port number" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_on_a_port_in_use_exits_2_with_one_line(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        done = _serve(tmp_path, "--port", str(taken.getsockname()[1]))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "cannot listen on 127.0.0.1:" in done.stderr and "Address already in use" in done.stderr


@pytest.mark.slow
def test_serve_run_twice_on_one_port_exits_2_before_the_app_starts(tmp_path):
    with ServerProcess(tmp_path / "first") as first:
        done = _serve(tmp_path, "--port", str(first.port))
        assert first.process.poll() is None  # the first one is untouched
    assert done.returncode == 2
    assert "Address already in use" in done.stderr
    assert "Application startup complete" not in done.stderr


def test_version_comes_from_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"cilium-startup-guard {importlib.metadata.version('cilium-startup-guard')}\n"
