"""The HTTP face of the bot: POST /webhook, /healthz, /readyz and /metrics (Starlette).

The webhook hot path only checks, dedupes and queues: no GitHub or cluster call happens before
the 202, so GitHub's 10-second delivery timeout is never at risk, however slow the work is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from cachetools import TTLCache
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bot.config import Settings
from bot.metrics import Metrics
from bot.queue import KeyedQueue
from bot.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    BadDelivery,
    Outcome,
    classify,
    parse_json,
    verify_signature,
)

log = logging.getLogger("bot.intake")

# GitHub caps webhook payloads at 25 MB; anything larger is not from GitHub.
MAX_BODY = 25 * 1024 * 1024


class BodyTooLarge(Exception):
    """The request body passed MAX_BODY while streaming."""


@dataclass
class Health:
    """What /readyz reports: ready to take deliveries, plus notes on the outside world."""

    started: bool = False
    stopping: bool = False
    # name -> "ok" or what is wrong (GitHub, cluster). Informative only: work waits and retries.
    notes: dict[str, str] = field(default_factory=dict)


class Intake:
    """Everything the webhook endpoint needs: settings, dedupe cache, queue, metrics."""

    def __init__(self, settings: Settings, queue: KeyedQueue, metrics: Metrics) -> None:
        self.settings = settings
        self.queue = queue
        self.metrics = metrics
        self.health = Health()
        self._secret = settings.github_webhook_secret.encode()
        self.seen: TTLCache[str, bool] = TTLCache(
            maxsize=settings.delivery_cache_size, ttl=settings.delivery_ttl_seconds
        )
        # Called with (event, payload) for every verified, new delivery before it is queued.
        # Local mode uses it to learn PR state, having no GitHub to ask; production has none.
        self.observers: list[Callable[[str, dict[str, Any]], None]] = []

    def _answer(
        self, status: int, outcome: Outcome, event: str, message: str, **ctx: Any
    ) -> Response:
        self.metrics.deliveries.labels(event=event or "(none)", outcome=outcome.value).inc()
        level = (
            logging.WARNING if outcome in (Outcome.REJECTED, Outcome.QUEUE_FULL) else (logging.INFO)
        )
        log.log(level, message, extra={"event": event, "outcome": outcome.value, **ctx})
        return JSONResponse({"outcome": outcome.value, "message": message}, status_code=status)

    async def webhook(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            return await self._webhook(request)
        finally:
            self.metrics.intake_seconds.observe(time.perf_counter() - started)

    async def _webhook(self, request: Request) -> Response:
        headers = request.headers
        event = headers.get(EVENT_HEADER, "")
        delivery = headers.get(DELIVERY_HEADER, "")
        ctx: dict[str, Any] = {"delivery": delivery}
        rejected = Outcome.REJECTED

        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return self._answer(413, rejected, event, "body larger than GitHub's 25 MB cap", **ctx)
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return self._answer(
                415,
                rejected,
                event,
                "Content-Type must be application/json (set it in the App's webhook settings)",
                **ctx,
            )
        if not event or not delivery:
            missing = " and ".join(
                h for h, v in (("X-GitHub-Event", event), ("X-GitHub-Delivery", delivery)) if not v
            )
            return self._answer(400, rejected, event, f"missing header {missing}", **ctx)
        try:
            body = await _read_capped(request, MAX_BODY)
        except BodyTooLarge:
            return self._answer(413, rejected, event, "body larger than GitHub's 25 MB cap", **ctx)
        signature = headers.get(SIGNATURE_HEADER)
        if not verify_signature(self._secret, body, signature):
            why = (
                "missing X-Hub-Signature-256 header"
                if not signature
                else ("X-Hub-Signature-256 does not match the body and the webhook secret")
            )
            return self._answer(401, rejected, event, why, **ctx)
        if delivery in self.seen:
            return self._answer(202, Outcome.DUPLICATE, event, "delivery already seen", **ctx)
        try:
            payload = parse_json(body)
        except BadDelivery as exc:
            return self._answer(400, rejected, event, str(exc), **ctx)
        if event == "ping":
            self.seen[delivery] = True
            return self._answer(200, Outcome.PING, event, "pong", **ctx)
        for observe in self.observers:
            observe(event, payload)
        try:
            found = classify(event, payload, self.settings.trigger_label, delivery)
        except BadDelivery as exc:
            return self._answer(400, rejected, event, str(exc), **ctx)
        ctx.update(action=found.action, repo=found.repo, pr=found.number)
        if found.work is None:
            self.seen[delivery] = True
            return self._answer(202, Outcome.IGNORED, event, found.reason, **ctx)
        outcome = self.queue.put_nowait(found.work)
        if outcome is Outcome.QUEUE_FULL:
            # Not remembered as seen: GitHub's "redeliver" button should work once there's room.
            return self._answer(503, outcome, event, "queue full, try again later", **ctx)
        self.seen[delivery] = True
        return self._answer(202, outcome, event, f"{found.work.key} {outcome.value}", **ctx)

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(self, request: Request) -> Response:
        problems = []
        if not self.health.started:
            problems.append("starting")
        if self.health.stopping:
            problems.append("shutting down")
        if self.queue.full():
            problems.append("queue full")
        notes = [f"{name}: {note}" for name, note in sorted(self.health.notes.items())]
        text = "\n".join([("not ready: " + ", ".join(problems)) if problems else "ready", *notes])
        return PlainTextResponse(text + "\n", status_code=503 if problems else 200)

    async def metrics_endpoint(self, request: Request) -> Response:
        self.metrics.queue_depth.set(len(self.queue))
        self.metrics.syncs_running.set(self.queue.running)
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _read_capped(request: Request, limit: int) -> bytes:
    """The body, read in chunks and abandoned as soon as it passes `limit`."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


def create_app(intake: Intake, lifespan: Lifespan | None = None) -> Starlette:
    """The Starlette app around an Intake; `lifespan` starts and stops the workers."""
    routes = [
        Route("/webhook", intake.webhook, methods=["POST"]),
        Route("/healthz", intake.healthz, methods=["GET"]),
        Route("/readyz", intake.readyz, methods=["GET"]),
        Route("/metrics", intake.metrics_endpoint, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
