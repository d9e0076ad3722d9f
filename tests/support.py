"""Shared test helpers: recorded fixtures, a real `cilium-startup-guard serve` process, raw HTTP and in-process
app clients. Plain functions, imported by the tests that need them. Every server listens on 127.0.0.1 on an
ephemeral port and is stopped by the test that started it.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

from webhook import certs

FIXTURES = Path(__file__).parent / "fixtures"


def load_fixture(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return result


_RUNNING = re.compile(r"Uvicorn running on https://127\.0\.0\.1:(\d+)")


def make_certs(directory: Path, ca: tuple[bytes, bytes] | None = None) -> tuple[bytes, bytes]:
    """Write ca.crt, tls.crt and tls.key into `directory`, from `ca` or a new CA; returns the CA pair."""
    ca_cert, ca_key = ca or certs.build_ca()
    dns_names, ips = certs.default_sans()
    cert, key = certs.build_serving_cert(ca_cert, ca_key, dns_names, ips)
    certs.write_bundle(certs.CertificateBundle(ca_cert, ca_key, cert, key), directory)
    return ca_cert, ca_key


def client_context(*ca_pems: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.load_verify_locations(cadata="\n".join(pem.decode() for pem in ca_pems))
    return context


def daemonset_review(uid: str | None = None, namespace: str = "kube-system", name: str = "ebs-csi-node",
                     tolerations: list[dict[str, Any]] | None = None, padding: str = "") -> dict[str, Any]:
    """An AdmissionReview for a DaemonSet CREATE, as kube-apiserver sends it (the EBS CSI node plugin's shape)."""
    tolerations = [{"operator": "Exists"}] if tolerations is None else tolerations
    obj = {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name},
                     "annotations": {"padding": padding} if padding else {}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "tolerations": tolerations,
                    "containers": [{"name": "node", "image": "public.ecr.aws/ebs-csi-driver/aws-ebs-csi-driver:v1",
                                    "args": ["node", "--endpoint=$(CSI_ENDPOINT)"]}],
                },
            },
        },
    }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": uid or str(uuid.uuid4()), "kind": {"group": "apps", "version": "v1", "kind": "DaemonSet"},
        "resource": {"group": "apps", "version": "v1", "resource": "daemonsets"},
        "operation": "CREATE", "namespace": namespace, "name": name, "object": obj, "oldObject": None,
        "dryRun": False, "userInfo": {"username": "system:serviceaccount:kube-system:deployer"}}}


def _command() -> list[str]:
    script = Path(sys.executable).with_name("cilium-startup-guard")
    found = script if script.exists() else shutil.which("cilium-startup-guard")
    return [str(found)] if found else [sys.executable, "-m", "webhook"]


class ServerProcess:
    """A `cilium-startup-guard serve` process; its JSON log lines go to a file the test can read."""

    def __init__(self, directory: Path, *args: str, certs_dir: Path | None = None, dev_certs: bool = False) -> None:
        """With `dev_certs`, serve makes its own development certificates in `certs_dir`, as the README's
        command does; otherwise the test's certificates are passed with --tls-cert and --tls-key."""
        self.directory = directory
        self.certs_dir = certs_dir or directory / "certs"
        if dev_certs:
            tls = ["--certs-dir", str(self.certs_dir)]
        else:
            if not (self.certs_dir / certs.CERT_FILE).exists():
                make_certs(self.certs_dir)
            tls = ["--tls-cert", str(self.certs_dir / certs.CERT_FILE),
                   "--tls-key", str(self.certs_dir / certs.KEY_FILE)]
        directory.mkdir(parents=True, exist_ok=True)
        self.log_path = directory / "server.log"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*_command(), "serve", "--host", "127.0.0.1", "--port", "0", *tls, *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log, cwd=Path(__file__).parent.parent)
        self.port = self._wait_for_port()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _wait_for_port(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _RUNNING.search(self.log_path.read_text(errors="replace"))
            if found:
                return int(found.group(1))
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_text()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not start within {timeout} s:\n{self.log_text()}")

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.port}"

    def ca_pem(self) -> bytes:
        return (self.certs_dir / certs.CA_CERT_FILE).read_bytes()

    def context(self) -> ssl.SSLContext:
        return client_context(self.ca_pem())

    def connect(self, context: ssl.SSLContext | None = None, source: str | None = None) -> ssl.SSLSocket:
        """A TLS connection, from `source` (another 127.x address) when given: the server caps connections per
        source address."""
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10,
                                       source_address=(source, 0) if source else None)
        return (context or self.context()).wrap_socket(raw, server_hostname="localhost")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue  # the how-to-call hint is plain text
        return lines

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def http_request(conn: ssl.SSLSocket, method: str, path: str, body: bytes = b"",
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on an open connection, read back by hand (the tests need to see raw behaviour)."""
    head = {"Host": "localhost", "Content-Length": str(len(body)), **(headers or {})}
    conn.sendall(f"{method} {path} HTTP/1.1\r\n".encode()
                 + "".join(f"{k}: {v}\r\n" for k, v in head.items()).encode() + b"\r\n" + body)
    return read_response(conn)


def read_response(conn: ssl.SSLSocket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:length]


class AppClient:
    """Calls an ASGI app in process, synchronously (starlette's TestClient is deprecated with httpx)."""

    def __init__(self, app: Any) -> None:
        self.transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            async with httpx.AsyncClient(transport=self.transport, base_url="https://testserver") as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(call())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)


def nested(depth: int, leaf: bytes = b'"x"') -> bytes:
    """JSON text of `depth` nested lists (orjson.dumps stops at 255 levels; the server must not rely on that)."""
    return b"[" * depth + leaf + b"]" * depth


def with_value(review: dict[str, Any], placeholder: str, raw: bytes) -> bytes:
    """The review as JSON with the string `placeholder` replaced by raw JSON text."""
    return orjson.dumps(review).replace(orjson.dumps(placeholder), raw)


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers: an API server that hangs. Counts connections."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="silent-server", daemon=True)
        self._thread.start()

    @property
    def connections(self) -> int:
        return len(self._connections)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._connections.append(connection)

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for connection in self._connections:
            connection.close()


def unused_port() -> int:
    """A port on 127.0.0.1 that nobody listens on (bound, then released): connecting is refused."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
    return port


def kubeconfig_for(server: str, path: Path) -> Path:
    """Write a kubeconfig (context `fake`) that points the kubernetes client at `server`."""
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": "fake-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
    }), encoding="utf-8")
    return path
