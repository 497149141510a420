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

log = logging.getLogger(__name__)

# GitHub caps webhook payloads at 25 MB; anything larger is not from GitHub.
MAX_BODY = 25 * 1024 * 1024


class BodyTooLarge(Exception):
    """The request body passed MAX_BODY while streaming."""


class EarlyAnswer(Exception):
    """An answer given before (or instead of) queueing: a refusal, a ping, a duplicate."""

    def __init__(self, status: int, message: str, outcome: Outcome = Outcome.REJECTED) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome


@dataclass
class Health:
    """What /readyz reports: ready to take deliveries, plus notes on the outside world."""

    started: bool = False
    stopping: bool = False
    # Only the leader acts; a follower is not ready, so webhooks reach the leader only.
    leading: Callable[[], bool] = lambda: True
    supervisor: Any = None  # bot.supervisor.Supervisor: the background tasks' states
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
        event = request.headers.get(EVENT_HEADER, "")
        delivery = request.headers.get(DELIVERY_HEADER, "")
        if self.health.started and not self.health.leading():
            # Not acknowledged, so nothing is lost: GitHub shows the failure (and can redeliver),
            # and the leader's resync converges the PR anyway.
            return self._answer(503, Outcome.REJECTED, event, "not the leader", delivery=delivery)
        try:
            body = await self._verified_body(request, event, delivery)
            return self._accept(event, delivery, body)
        except EarlyAnswer as early:
            return self._answer(early.status, early.outcome, event, str(early), delivery=delivery)

    async def _verified_body(self, request: Request, event: str, delivery: str) -> bytes:
        """The body, once every check that needs no parsing passed; EarlyAnswer otherwise."""
        headers = request.headers
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            raise EarlyAnswer(413, "body larger than GitHub's 25 MB cap")
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise EarlyAnswer(
                415, "Content-Type must be application/json (set it in the App's webhook settings)"
            )
        if not event or not delivery:
            missing = " and ".join(
                h for h, v in (("X-GitHub-Event", event), ("X-GitHub-Delivery", delivery)) if not v
            )
            raise EarlyAnswer(400, f"missing header {missing}")
        try:
            body = await _read_capped(request, MAX_BODY)
        except BodyTooLarge:
            raise EarlyAnswer(413, "body larger than GitHub's 25 MB cap") from None
        signature = headers.get(SIGNATURE_HEADER)
        if not verify_signature(self._secret, body, signature):
            raise EarlyAnswer(
                401,
                "missing X-Hub-Signature-256 header"
                if not signature
                else "X-Hub-Signature-256 does not match the body and the webhook secret",
            )
        return body

    def _accept(self, event: str, delivery: str, body: bytes) -> Response:
        """A verified delivery: dedupe, read, and queue its key (or say why not)."""
        if delivery in self.seen:
            raise EarlyAnswer(202, "delivery already seen", Outcome.DUPLICATE)
        try:
            payload = parse_json(body)
            if event == "ping":
                self.seen[delivery] = True
                raise EarlyAnswer(200, "pong", Outcome.PING)
            for observe in self.observers:
                observe(event, payload)
            found = classify(event, payload, self.settings.trigger_label, delivery)
        except BadDelivery as exc:
            raise EarlyAnswer(400, str(exc)) from None
        ctx = {"delivery": delivery, "action": found.action, "repo": found.repo, "pr": found.number}
        if found.work is None:
            self.seen[delivery] = True
            return self._answer(202, Outcome.IGNORED, event, found.reason, **ctx)
        outcome = self.queue.put_nowait(found.work)
        if outcome is Outcome.QUEUE_FULL:
            # Not remembered as seen: GitHub's "redeliver" button should work once there's room.
            return self._answer(503, outcome, event, "queue full, try again later", **ctx)
        self.seen[delivery] = True
        return self._answer(202, outcome, event, f"{found.work.key} {outcome.value}", **ctx)

    async def healthz(self, _: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(self, _: Request) -> Response:
        problems = []
        if not self.health.started:
            problems.append("starting")
        if self.health.stopping:
            problems.append("shutting down")
        if self.queue.full():
            problems.append("queue full")
        if self.health.started and not self.health.leading():
            problems.append("not the leader")
        notes = [f"{name}: {note}" for name, note in sorted(self.health.notes.items())]
        if self.health.supervisor is not None:
            notes += self.health.supervisor.report()
        text = "\n".join([("not ready: " + ", ".join(problems)) if problems else "ready", *notes])
        return PlainTextResponse(text + "\n", status_code=503 if problems else 200)

    async def metrics_endpoint(self, _: Request) -> Response:
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
