"""The HTTP face of the webhook: routes, error mapping and health checks.

Reads the raw body and hands it to admission.py; no decision is made here and no Kubernetes API is called.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response

from webhook import admission
from webhook.admission import BadReview, Endpoint, Outcome
from webhook.config import Settings

log = logging.getLogger(__name__)

JSON_MEDIA_TYPE = "application/json"


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(title="cilium-startup-guard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings

    @app.post("/mutate")
    async def mutate(request: Request) -> Response:
        return await _review(request, Endpoint.MUTATE)

    @app.post("/validate")
    async def validate(request: Request) -> Response:
        return await _review(request, Endpoint.VALIDATE)

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        return _json({"status": "ready"})

    return app


async def _review(request: Request, endpoint: Endpoint) -> Response:
    started = time.perf_counter()
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != JSON_MEDIA_TYPE:
        return _json({"detail": f"Content-Type must be {JSON_MEDIA_TYPE}, got {content_type or 'none'}"}, 415)
    settings: Settings = request.app.state.settings
    body = await request.body()
    try:
        review = admission.parse_review(body)
    except BadReview as err:
        return _refuse(err, endpoint, started)

    try:
        decision = admission.decide(review, settings.policy, endpoint)
    except BadReview as err:
        return _refuse(err, endpoint, started)
    except Exception:
        log.exception("admission review failed", extra={"uid": review.uid, "endpoint": endpoint.value})
        answer = admission.internal_error_response(review.uid, settings.allow_on_error)
        _log_decision(review, endpoint, settings, Outcome.ERROR, started)
        return _json(answer)

    _log_decision(review, endpoint, settings, admission.outcome_of(decision, endpoint), started)
    return _json(admission.build_response(review.uid, decision, endpoint))


def _refuse(err: BadReview, endpoint: Endpoint, started: float) -> Response:
    log.warning("bad admission request", extra={
        "uid": err.uid, "endpoint": endpoint.value, "error": str(err), "outcome": Outcome.ERROR.value,
        "duration_ms": _elapsed_ms(started)})
    if err.uid is None:
        return _json({"detail": str(err)}, 400)
    return _json(admission.error_response(err.uid, str(err)))


def _log_decision(review: admission.Review, endpoint: Endpoint, settings: Settings, outcome: Outcome,
                  started: float) -> None:
    log.info("admission decision", extra={"fields": {
        "uid": review.uid, "endpoint": endpoint.value, "kind": review.kind, "namespace": review.namespace,
        "name": review.name, "operation": review.operation, "dry_run": review.dry_run,
        "mode": settings.policy.mode.value, "outcome": outcome.value, "duration_ms": _elapsed_ms(started)}})


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _json(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type=JSON_MEDIA_TYPE)
