"""TLS of the real server: certificate hot reload under load, TLS 1.2 minimum, HTTPS only."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
import warnings
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support import ServerProcess, client_context, daemonset_review, http_request, make_certs
from webhook import certs

pytestmark = pytest.mark.slow  # a `serve` process


def _secret_mount(mount: Path, bundle_dir: Path, generation: int) -> None:
    """Lay out or update `mount` as kubelet does for a Secret: files are symlinks into ..data, and ..data is
    swapped atomically to a new timestamped directory."""
    target = mount / f"..{generation}"
    target.mkdir(parents=True)
    for name in (certs.CERT_FILE, certs.KEY_FILE, certs.CA_CERT_FILE):
        (target / name).write_bytes((bundle_dir / name).read_bytes())
    tmp_link = mount / "..data_tmp"
    tmp_link.symlink_to(target.name)
    tmp_link.replace(mount / "..data")
    for name in (certs.CERT_FILE, certs.KEY_FILE, certs.CA_CERT_FILE):
        if not (mount / name).is_symlink():
            (mount / name).symlink_to(f"..data/{name}")


def _served_certificate(port: int, context: ssl.SSLContext) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as conn:
        der = conn.getpeercert(binary_form=True)
        assert der is not None
        return der


def _der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


def _wait_for_certificate(port: int, context: ssl.SSLContext, cert_pem: bytes, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while _served_certificate(port, context) != _der(cert_pem):
        assert time.monotonic() < deadline, "the server did not pick up the new certificate"
        time.sleep(0.05)


def _count(metrics: str, series: str) -> float:
    return next(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(series))


def _replace(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".new")
    partial.write_bytes(data)
    partial.replace(path)


class _Load:
    """Keeps calling /mutate on one keep-alive connection and on a new connection per request."""

    def __init__(self, server: ServerProcess, context: ssl.SSLContext) -> None:
        self.server = server
        self.context = context
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._keep_alive), threading.Thread(target=self._new_connections)]

    def __enter__(self) -> _Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _record(self, status: int, body: bytes, uid: str) -> None:
        with self.lock:
            if status == 200 and orjson.loads(body)["response"]["uid"] == uid:
                self.ok += 1
            else:
                self.failures.append(f"{status} {body[:200]!r}")

    def _keep_alive(self) -> None:
        with httpx.Client(verify=self.context, base_url=self.server.base_url, timeout=10) as client:
            while not self.stop.is_set():
                review = daemonset_review()
                try:
                    response = client.post("/mutate", json=review)
                    self._record(response.status_code, response.content, review["request"]["uid"])
                except Exception as err:
                    with self.lock:
                        self.failures.append(f"keep-alive: {err!r}")

    def _new_connections(self) -> None:
        while not self.stop.is_set():
            review = daemonset_review()
            try:
                with self.server.connect(self.context) as conn:
                    status, _, body = http_request(conn, "POST", "/mutate", orjson.dumps(review),
                                                   {"Content-Type": "application/json", "Connection": "close"})
                self._record(status, body, review["request"]["uid"])
            except Exception as err:
                with self.lock:
                    self.failures.append(f"new connection: {err!r}")


def test_rotated_certificates_are_served_without_a_failed_request(tmp_path):
    first_ca = make_certs(tmp_path / "bundle-0")
    second_ca = certs.build_ca("second CA")
    mount = tmp_path / "mount"
    _secret_mount(mount, tmp_path / "bundle-0", 0)
    trust = client_context(first_ca[0], second_ca[0])
    server = ServerProcess(tmp_path, "--reload-interval", "0.2", certs_dir=mount)
    try:
        with _Load(server, trust) as load:
            # 1 and 2: the Secret is updated (symlink swap), from the same CA and then from a new one.
            for generation, ca in ((1, first_ca), (2, second_ca)):
                bundle = tmp_path / f"bundle-{generation}"
                make_certs(bundle, ca)
                _secret_mount(mount, bundle, generation)
                _wait_for_certificate(server.port, trust, (bundle / certs.CERT_FILE).read_bytes())
            # 3 and 4: the files are replaced one after the other, in both orders, with a pause long enough
            # for the server to see a certificate that does not match its key.
            for generation, ca, order in ((3, first_ca, (certs.KEY_FILE, certs.CERT_FILE)),
                                          (4, second_ca, (certs.CERT_FILE, certs.KEY_FILE))):
                bundle = tmp_path / f"bundle-{generation}"
                make_certs(bundle, ca)
                for name in order:
                    _replace(mount / name, (bundle / name).read_bytes())
                    time.sleep(0.6)
                _wait_for_certificate(server.port, trust, (bundle / certs.CERT_FILE).read_bytes())
            time.sleep(0.3)
        assert load.failures == []
        assert load.ok > 50
        with httpx.Client(verify=trust, base_url=server.base_url) as client:
            metrics = client.get("/metrics").text
        # At least: a poll that races a file replacement reads the pair once more, which is harmless.
        assert _count(metrics, 'cilium_startup_guard_certificate_reloads_total{result="success"}') >= 4
        assert _count(metrics, 'cilium_startup_guard_certificate_reloads_total{result="failure"}') >= 2
        print(f"\n{load.ok} requests during 4 rotations, none failed")
    finally:
        server.stop()
    assert not any("PRIVATE KEY" in line for line in server.log_text().splitlines())


def test_broken_certificate_keeps_the_one_in_use(tmp_path):
    server = ServerProcess(tmp_path, "--reload-interval", "0.2")
    try:
        before = _served_certificate(server.port, server.context())
        (server.certs_dir / certs.CERT_FILE).write_bytes(b"not a certificate\n")
        deadline = time.monotonic() + 10
        while "certificate not reloaded" not in server.log_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _served_certificate(server.port, server.context()) == before
    finally:
        server.stop()


def _tls11_client(ca_pem: bytes) -> ssl.SSLContext:
    context = client_context(ca_pem)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 offers no TLS 1.1 suites at the default level
    return context


def _negotiated_by_permissive_server(certs_dir: Path, client: ssl.SSLContext) -> str | None:
    """Which version `client` gets from a server that accepts anything: proves it really offers TLS 1.1."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certs_dir / certs.CERT_FILE, certs_dir / certs.KEY_FILE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server.minimum_version = ssl.TLSVersion.TLSv1_1
    server.set_ciphers("DEFAULT:@SECLEVEL=0")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def accept() -> None:
            conn, _ = listener.accept()
            with contextlib.suppress(OSError), server.wrap_socket(conn, server_side=True):
                pass

        thread = threading.Thread(target=accept)
        thread.start()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                client.wrap_socket(raw, server_hostname="localhost") as conn:
            version = conn.version()
        thread.join(timeout=10)
    return version


def test_tls_1_1_is_refused(tmp_path):
    server = ServerProcess(tmp_path)
    try:
        client = _tls11_client(server.ca_pem())
        assert _negotiated_by_permissive_server(server.certs_dir, client) == "TLSv1.1"
        with pytest.raises((ssl.SSLError, ConnectionError)):
            server.connect(client)
        with server.connect() as conn:
            assert conn.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        server.stop()


def test_tls_1_2_is_accepted(tmp_path):
    server = ServerProcess(tmp_path)
    try:
        context = server.context()
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        with server.connect(context) as conn:
            assert conn.version() == "TLSv1.2"
            status, _, _ = http_request(conn, "GET", "/healthz")
            assert status == 200
    finally:
        server.stop()


def test_plain_http_gets_no_answer(tmp_path):
    server = ServerProcess(tmp_path)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            reply = raw.recv(4096)
        assert b"HTTP/1.1 200" not in reply and b'"status"' not in reply
    finally:
        server.stop()
