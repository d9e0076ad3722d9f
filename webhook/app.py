"""The HTTP face of the webhook: routes, error mapping, health checks and /metrics.

Reads the raw body and hands it to admission.py; no decision is made here and no Kubernetes API is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from webhook import admission
from webhook.admission import BadReview
from webhook.bodylimit import BodyReader, content_length
from webhook.config import Settings
from webhook.enums import Endpoint, ErrorReason, Outcome
from webhook.listener import source_of
from webhook.logs import clip
from webhook.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from webhook.metrics import Metrics

log = logging.getLogger(__name__)

JSON_MEDIA_TYPE = "application/json"
_JSON_CONTENT_TYPE = (b"content-type", JSON_MEDIA_TYPE.encode())
# Larger answers go out in pieces of this size, each once the client has taken the one before (the protocol
# pauses writing while the TLS layer holds anything): a client that stops reading holds one piece, not all.
ANSWER_CHUNK_BYTES = 64 * 1024
# Fields taken from the request are logged at most as long as Kubernetes lets them be (a longer one cannot come
# from kube-apiserver): namespace a DNS-1123 label, names DNS-1123 subdomains, kinds DNS-1035 labels once lower-cased
# (https://github.com/kubernetes/kubernetes/blob/03014f486c86dbe8a7fbe275fe14250854aab219/staging/src/k8s.io/
# apimachinery/pkg/util/validation/validation.go). An error message is clipped like the answer's status message.
MAX_NAMESPACE_LENGTH = 63
MAX_NAME_LENGTH = 253
MAX_KIND_LENGTH = 63
MAX_ERROR_LENGTH = admission.MAX_MESSAGE_LENGTH
# Reviews with a body at least this large (kube-apiserver's are 5-50 KB) are reviewed on one worker thread, one
# after the other, while the event loop goes on answering the rest: the policy is Python code, which hands the
# GIL back every few milliseconds, so a 3 MiB review no longer holds up every request behind it. One source
# address has one such review in hand at a time (SourceTurns).
LARGE_REVIEW_BYTES = 256 * 1024


class Runtime:
    """What may change while the app runs: the settings (config reload) and draining (SIGTERM).

    Both are replaced whole by one assignment, so a request sees either the old or the new value.
    """

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.draining = False
        self.large_reviews_done = 0
        self.turns = SourceTurns()
        self._large_reviews: ThreadPoolExecutor | None = None

    def large_reviews(self) -> ThreadPoolExecutor:
        """The worker thread for large reviews, started on first use."""
        if self._large_reviews is None:
            self._large_reviews = ThreadPoolExecutor(max_workers=1, thread_name_prefix="large-review")
        return self._large_reviews

    def close(self) -> None:
        if self._large_reviews is not None:
            self._large_reviews.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Turn:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class SourceTurns:
    """One large review at a time per source address: the next one from the same source is not even read before
    the one in hand has been answered. A client that sends many at once holds up its own, not anyone else's, and
    holds one body in memory, not all of them."""

    def __init__(self) -> None:
        self._turns: dict[str, _Turn] = {}

    @contextlib.asynccontextmanager
    async def turn(self, source: str) -> AsyncIterator[None]:
        entry = self._turns.setdefault(source, _Turn())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._turns[source]


class WebhookApp(FastAPI):
    """FastAPI, except that a POST to a review path goes straight to its route.

    FastAPI's middleware stack and router cost about 25 us per request: more than the policy itself. A
    review needs none of them: its route reads the body within the limits and handle_review() answers every
    error itself. The router lists the review routes as well, so other methods on their paths get FastAPI's
    405, and app.routes shows them.
    """

    def __init__(self, reviews: dict[str, ReviewRoute], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reviews = reviews

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            review = self.reviews.get(scope["path"])
            if review is not None:
                await review(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings) -> WebhookApp:
    runtime = Runtime(settings, Metrics())
    limits = settings.server
    reader = BodyReader(limits.max_body_bytes, limits.body_timeout, runtime.metrics.count_refusal)
    routes = {f"/{endpoint.value}": ReviewRoute(endpoint, runtime, reader) for endpoint in Endpoint}
    app = WebhookApp(routes, title="cilium-startup-guard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runtime = runtime
    for path, route in routes.items():
        app.router.routes.append(Route(path, route, methods=["POST"]))

    # 404 and 405 are FastAPI's JSON {"detail": ...}; an error outside a review is JSON too, not text.
    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error", exc_info=exc, extra={"path": request.url.path})
        return _response({"detail": "internal error"}, 500)

    @app.get("/healthz")
    async def healthz() -> Response:
        return _response({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if runtime.draining:
            return _response({"status": "draining"}, 503)
        return _response({"status": "ready"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(runtime.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    return app


class ReviewRoute:
    """POST /mutate or /validate as a plain ASGI app: raw bytes in, raw bytes out.

    FastAPI's request handling (dependency solving, Request and Response objects, an exit stack per request)
    would cost more than the review itself.
    """

    def __init__(self, endpoint: Endpoint, runtime: Runtime, reader: BodyReader) -> None:
        self.endpoint = endpoint
        self.runtime = runtime
        self.reader = reader

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = content_length(scope)
        if declared is not None and declared < LARGE_REVIEW_BYTES:
            await self._review(scope, receive, send)
            return
        # Large, or chunked and so of a size unknown until read (kube-apiserver always sends Content-Length).
        client = scope.get("client")
        async with self.runtime.turns.turn(source_of(client[0]) if client else ""):
            await self._review(scope, receive, send)

    async def _review(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await self.reader.read(scope, receive, send)
        if body is None:
            return  # refused (413, 408) or the client left
        content_type = next((value.decode("latin-1") for name, value in scope["headers"]
                             if name == b"content-type"), "")
        if len(body) < LARGE_REVIEW_BYTES:
            status, answer = handle_review(content_type, body, self.endpoint, self.runtime)
        else:
            status, answer = await asyncio.get_running_loop().run_in_executor(
                self.runtime.large_reviews(), handle_review, content_type, body, self.endpoint, self.runtime)
            self.runtime.large_reviews_done += 1
        del body  # not held while a slow client reads the answer
        await send({"type": "http.response.start", "status": status, "headers": [
            _JSON_CONTENT_TYPE, (b"content-length", str(len(answer)).encode())]})
        if len(answer) <= ANSWER_CHUNK_BYTES:
            await send({"type": "http.response.body", "body": answer})
            return
        for start in range(0, len(answer), ANSWER_CHUNK_BYTES):
            end = start + ANSWER_CHUNK_BYTES
            await send({"type": "http.response.body", "body": answer[start:end], "more_body": end < len(answer)})


def handle_review(content_type: str, body: bytes, endpoint: Endpoint, runtime: Runtime) -> tuple[int, bytes]:
    """One admission request, from its Content-Type and body to the HTTP status and JSON body of the answer."""
    started = time.perf_counter()
    metrics = runtime.metrics
    if content_type.split(";")[0].strip().lower() != JSON_MEDIA_TYPE:
        metrics.count_error(endpoint, ErrorReason.UNSUPPORTED_MEDIA_TYPE)
        return _answer({"detail": f"Content-Type must be {JSON_MEDIA_TYPE}, got {content_type or 'none'}"}, 415)
    settings = runtime.settings  # one read: a reload mid-request does not mix two configurations
    review: admission.Review | None = None
    try:
        review = admission.parse_review(body)
        decision = admission.decide(review, settings.policy, endpoint)
        answer = admission.build_response(review.uid, decision, endpoint)
    except BadReview as err:
        return _refuse(err, endpoint, metrics, started)
    except Exception:
        # failureMode decides; the caller gets a short answer, the log gets the traceback.
        uid = review.uid if review is not None else None
        log.exception("admission review failed", extra={"uid": uid, "endpoint": endpoint.value})
        metrics.count_error(endpoint, ErrorReason.INTERNAL)
        metrics.observe_review(endpoint, Outcome.ERROR, time.perf_counter() - started)
        if review is None:
            return _answer({"detail": "internal error"}, 500)
        _log_decision(review, endpoint, settings, Outcome.ERROR, started)
        return _answer(admission.internal_error_response(review.uid, settings.allow_on_error))

    outcome = admission.outcome_of(decision, endpoint)
    metrics.observe_review(endpoint, outcome, time.perf_counter() - started)
    if decision.blanket_seen:
        metrics.count_blanket(endpoint, review.namespace, decision.blanket_seen, decision.blanket_stripped)
    _log_decision(review, endpoint, settings, outcome, started)
    return _answer(answer)


def _refuse(err: BadReview, endpoint: Endpoint, metrics: Metrics, started: float) -> tuple[int, bytes]:
    metrics.count_error(endpoint, ErrorReason.BAD_REQUEST)
    metrics.observe_review(endpoint, Outcome.ERROR, time.perf_counter() - started)
    log.warning("bad admission request", extra={
        "uid": err.uid, "endpoint": endpoint.value, "error": clip(str(err), MAX_ERROR_LENGTH),
        "outcome": Outcome.ERROR.value, "duration_ms": _elapsed_ms(started)})
    if err.uid is None:
        return _answer({"detail": str(err)}, 400)
    return _answer(admission.error_response(err.uid, str(err)))


def _log_decision(review: admission.Review, endpoint: Endpoint, settings: Settings, outcome: Outcome,
                  started: float) -> None:
    log.info("admission decision", extra={"fields": {
        "uid": review.uid, "endpoint": endpoint.value, "kind": clip(review.kind, MAX_KIND_LENGTH),
        "namespace": clip(review.namespace, MAX_NAMESPACE_LENGTH), "name": clip(review.display_name, MAX_NAME_LENGTH),
        "operation": review.operation, "dry_run": review.dry_run,
        "mode": settings.policy.mode.value, "outcome": outcome.value, "duration_ms": _elapsed_ms(started)}})


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _answer(content: Any, status_code: int = 200) -> tuple[int, bytes]:
    return status_code, orjson.dumps(content)


def _response(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type=JSON_MEDIA_TYPE)
