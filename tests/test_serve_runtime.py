"""What the `serve` process runs on: uvloop and the httptools-based protocol, and no Kubernetes client.

The admission path does no Kubernetes I/O (STYLE.md); loading the client would only cost start-up time and
memory in every webhook replica.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tests.support import ServerProcess, load_fixture, make_certs
from webhook import libc
from webhook.certs import CERT_FILE, KEY_FILE
from webhook.config import build_settings
from webhook.listener import ConnectionLimits, Listener, Slot
from webhook.protocol import GuardedHttpToolsProtocol
from webhook.server import TRIM_AFTER_CONNECTIONS, build_server

pytestmark = pytest.mark.slow  # a `serve` process or server


def test_importing_the_server_and_the_app_loads_no_kubernetes_client() -> None:
    # A fresh interpreter: this one may have imported kubernetes for other tests.
    code = ("import sys, webhook.server, webhook.app; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'kubernetes'))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_serve_process_loads_no_kubernetes_client(tmp_path: Path, monkeypatch) -> None:
    # Python reports every import on stderr, which is the server's log file.
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    with ServerProcess(tmp_path, "--mode", "strip") as server, httpx.Client(verify=server.context()) as client:
        assert client.post(f"{server.base_url}/mutate", json=load_fixture("daemonset_ebs_csi_node.json")).is_success
        assert client.get(f"{server.base_url}/metrics").is_success
    imports = [line.rsplit("|", 1)[1].strip() for line in server.log_text().splitlines()
               if line.startswith("import time:")]
    assert "webhook.server" in imports  # the report is there
    assert [name for name in imports if name.split(".")[0] == "kubernetes"] == []


def test_serve_runs_on_uvloop_with_the_guarded_httptools_protocol(tmp_path: Path) -> None:
    make_certs(tmp_path)
    server = build_server(build_settings(port=0), tmp_path / CERT_FILE, tmp_path / KEY_FILE)
    assert issubclass(server.config.http_protocol_class, GuardedHttpToolsProtocol)
    assert issubclass(server.config.http_protocol_class, HttpToolsProtocol)
    loop_factory = server.config.get_loop_factory()
    assert loop_factory is not None
    loop = loop_factory()  # what uvicorn.Server.run() runs the server on
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
        for sock in server.sockets:  # bound by build_server
            sock.close()


def test_freed_memory_is_handed_back_after_connections_ended_or_a_large_review(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    make_certs(tmp_path)
    server = build_server(build_settings(port=0), tmp_path / CERT_FILE, tmp_path / KEY_FILE)
    try:
        trims: list[int] = []
        monkeypatch.setattr(libc, "trim_heap", lambda: trims.append(0))
        server.listener = Listener([], server.context, ConnectionLimits(100, 100, 5.0), start_http=lambda _: None)
        table = server.listener.table

        def end_connections(count: int) -> None:
            for _ in range(count):
                slot = table.admit("192.0.2.1")
                assert isinstance(slot, Slot)
                slot.release()

        end_connections(TRIM_AFTER_CONNECTIONS - 1)
        server._give_back_memory()
        assert trims == []  # a few connections: not worth a trim
        end_connections(1)
        server._give_back_memory()
        assert len(trims) == 1
        server.runtime.large_reviews_done += 1
        server._give_back_memory()
        assert len(trims) == 2
        server._give_back_memory()
        assert len(trims) == 2  # nothing new since
    finally:
        for sock in server.sockets:
            sock.close()
