"""The floor for bench/run.py: the least an admission webhook on this stack can do per request.

A bare ASGI app on the same uvicorn as `cilium-startup-guard serve` (uvloop, httptools, TLS 1.2 or newer, the
same keep-alive): it reads the body, parses it once with orjson and answers an allowed AdmissionReview. It
echoes the request uid, because kube-apiserver refuses an answer whose uid does not match; nothing else varies.
GET /healthz answers for the cold-start measurement.

Imports neither FastAPI nor the webhook package: the floor must not pay for what it does not use.
"""

from __future__ import annotations

import argparse
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import uvicorn

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]
HEALTHY = b'{"status":"ok"}'


async def app(scope: Message, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/healthz":
        await _answer(send, HEALTHY)
        return
    body = b""
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return  # the client left
        body += message.get("body", b"")
        more = message.get("more_body", False)
    uid = orjson.loads(body)["request"]["uid"]
    await _answer(send, orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                      "response": {"uid": uid, "allowed": True}}))


async def _answer(send: Send, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    # As webhook.tls.build_context, written out: importing webhook.tls would load `cryptography` into the floor.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20")
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(cert, key)
    return context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-cert", type=Path, required=True)
    parser.add_argument("--tls-key", type=Path, required=True)
    args = parser.parse_args()
    context = tls_context(args.tls_cert, args.tls_key)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, loop="auto", http="httptools", lifespan="off",
        ssl_context_factory=lambda _config, _default: context,
        timeout_keep_alive=120, log_config=None, access_log=False, server_header=False, proxy_headers=False)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
