"""The HTTP face of the bot: POST /webhook, /healthz, /readyz and /metrics (Starlette).

The webhook hot path only checks, dedupes and queues: no GitHub or cluster call happens before
the 202, so GitHub's 10-second delivery timeout is never at risk, however slow the work is.

It is also the one part of the bot anyone on the network can reach, so what an unverified
request can cost is bounded: requests in flight (503 at once, before the body), body bytes
being buffered across all of them (503), one body's size (413, from Content-Length and while
reading), the time to send it (408), and an unsigned request is refused before its body is
read. Nothing an unverified request says becomes a metric label, and no input yields a 500.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from bot.config import Settings
from bot.logs import log_line
from bot.metrics import Metrics
from bot.queue import KeyedQueue
from bot.scope import in_scope
from bot.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    UNVERIFIED,
    BadDelivery,
    Classified,
    Outcome,
    ResyncRequest,
    Rules,
    ShaHint,
    classify,
    decode,
    metric_event,
    parse_json,
    repository_of,
    signature_digest,
    signs,
)

log = logging.getLogger(__name__)

# Body bytes all requests still reading may hold together, in bodies of the largest size: a
# flood of well-formed but forged signatures (which can only be checked once the body is in)
# then costs this much memory at most, not max_in_flight bodies. GitHub's payloads are tens of
# KB, so real deliveries never come near it.
BUFFERED_BODIES = 2
# Longest X-GitHub-Delivery written to a log line for a request that failed verification.
LOGGED_DELIVERY = 64
# The request headers the intake reads, as ASGI gives them (lower-case bytes).
_CONTENT_LENGTH = b"content-length"
_CONTENT_TYPE = b"content-type"
_EVENT = EVENT_HEADER.lower().encode()
_DELIVERY = DELIVERY_HEADER.lower().encode()
_SIGNATURE = SIGNATURE_HEADER.lower().encode()
_APPLICATION_JSON = b"application/json"
_JSON = (b"content-type", b"application/json")
_CLOSE = (b"connection", b"close")
_ENCODE = msgspec.json.Encoder().encode
_MISMATCH = "X-Hub-Signature-256 does not match the body and the webhook secret"
# The level of an answer's log line by its outcome's value (INFO for the others). Keyed by
# the value: an Enum member's hash and its .value are Python calls, and every delivery asks.
LEVELS = {
    Outcome.REJECTED.value: logging.WARNING,
    Outcome.BUSY.value: logging.WARNING,
    Outcome.QUEUE_FULL.value: logging.WARNING,
    Outcome.ERROR.value: logging.ERROR,
    Outcome.DISCONNECTED.value: logging.DEBUG,
}


class Answer(Exception):
    """What the intake answers a delivery; raised to answer early (a refusal, a ping, a
    duplicate), returned through `_answer` otherwise.

    `close` asks the server to drop the connection after answering: the client may still be
    sending a body nobody will read.
    """

    def __init__(
        self, status: int, message: str, outcome: Outcome = Outcome.REJECTED, close: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome
        self.close = close


class Disconnected(Exception):
    """The client left before its whole body arrived."""


class BodyDeadlines:
    """Cancels a body read that takes longer than `seconds`: one timer for all of them.

    A timer per request (asyncio.timeout, or call_later) was a tenth of the intake's time
    under uvloop, which makes a libuv timer for each. Here a read costs two dict operations;
    the one timer, armed while reads are running, sweeps every quarter of `seconds`, so a read
    is cancelled between `seconds` and 1.25 x `seconds` after it began.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._period = min(seconds / 4, 1.0)
        self._reading: dict[asyncio.Task[Any], float] = {}  # read -> when it must be done
        self._expired: set[asyncio.Task[Any]] = set()  # cancelled by us, not told yet
        # The loop the sweep is armed on: one closed with a sweep pending never disarms it,
        # so reads on another loop arm their own.
        self._armed_on: asyncio.AbstractEventLoop | None = None

    def begin(self) -> asyncio.Task[Any]:
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - only ever called from a request's task
        loop = task.get_loop()
        self._reading[task] = loop.time() + self.seconds
        if self._armed_on is not loop:
            self._armed_on = loop
            loop.call_later(self._period, self._sweep, loop)
        return task

    def end(self, task: asyncio.Task[Any]) -> bool:
        """The read is over; True when it was cancelled for its time and by nothing else (the
        cancellation is then taken back, so the task goes on to answer 408). A cancellation
        from elsewhere in the same turn (a server shutting down) still stands."""
        self._reading.pop(task, None)
        if task not in self._expired:
            return False
        self._expired.discard(task)
        return task.uncancel() == 0

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        late = [task for task, due in self._reading.items() if due <= now]
        for task in late:
            del self._reading[task]
            self._expired.add(task)
            task.cancel()
        if self._reading:
            loop.call_later(self._period, self._sweep, loop)
        else:
            self._armed_on = None


def _refused(status: int, message: str, outcome: Outcome = Outcome.REJECTED) -> Answer:
    """A refusal of an unverified request: its unread body is abandoned with the connection."""
    return Answer(status, message, outcome, close=True)


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


def _no_sha_hook(_: ShaHint) -> None:
    """The default Intake.on_sha: SHA hints are dropped (the resync still converges)."""


def _no_resync_hook(_: ResyncRequest) -> None:
    """The default Intake.on_resync: the periodic resync converges anyway."""


class Deliveries:
    """The delivery ids taken in the last `ttl` seconds, at most `maxsize` of them, oldest
    forgotten first.

    A dict from the id's hash to the time it was taken, and the hashes in the order taken (a
    constant TTL makes that the expiry order): about 110 bytes an id instead of the ~300 of a
    TTLCache of strings, so 100,000 deliveries an hour cost ~11 MiB, not ~29. Two ids sharing
    a 64-bit hash within the window (odds ~1e-10 at 100,000) would make the second a
    duplicate; the resync still heals what it asked for.
    """

    def __init__(self, maxsize: int, ttl: float, clock: Callable[[], float] = time.monotonic):
        self.maxsize = maxsize
        self.ttl = ttl
        self._clock = clock
        self._taken: dict[int, float] = {}
        self._order: deque[int] = deque()  # the same keys, oldest first

    def __contains__(self, delivery: str) -> bool:
        taken = self._taken.get(hash(delivery))
        return taken is not None and self._clock() - taken < self.ttl

    def __len__(self) -> int:
        return len(self._taken)

    def add(self, delivery: str) -> None:
        now = self._clock()
        key = hash(delivery)
        if key not in self._taken:  # taken again (never, in practice): keeps its first time
            self._taken[key] = now
            self._order.append(key)
        # Forget from the oldest end: what is over the size, and what expired.
        taken, order = self._taken, self._order
        while order and (len(order) > self.maxsize or now - taken[order[0]] >= self.ttl):
            del taken[order.popleft()]


class Intake:
    """Everything the webhook endpoint needs: settings, dedupe cache, queue, metrics, limits."""

    def __init__(self, settings: Settings, queue: KeyedQueue, metrics: Metrics) -> None:
        self.settings = settings
        self.queue = queue
        self.metrics = metrics
        self.health = Health()
        self.rules = Rules.from_settings(settings)
        self._secret = settings.github_webhook_secret.encode()
        self.seen = Deliveries(settings.delivery_cache_size, settings.delivery_ttl_seconds)
        # Called with (event, payload) for every verified, new, in-scope delivery before it is
        # classified. Local mode uses it to learn PR state, having no GitHub to ask; production
        # has none, and then the body is never parsed in full.
        self.observers: list[Callable[[str, dict[str, Any]], None]] = []
        # Called with what a check or status delivery names only by head SHA, and with resync
        # requests (installation changes). Called on the event loop before the 202: they must
        # not block (hand the work to a task or a queue). on_sha returns Outcome.QUEUE_FULL
        # when the queue refused what it asked for (the delivery is then answered 503).
        self.on_sha: Callable[[ShaHint], object] = _no_sha_hook
        self.on_resync: Callable[[ResyncRequest], None] = _no_resync_hook
        self.in_flight = 0  # webhook requests being handled now
        self.buffered = 0  # body bytes held by requests still reading theirs
        self._buffer_limit = BUFFERED_BODIES * settings.max_body_bytes
        self._deadlines = BodyDeadlines(settings.body_timeout_seconds)

    def _answer(self, answer: Answer, event: str, **ctx: Any) -> Answer:
        """Count and log an answer; `event` is already a metric label."""
        outcome = answer.outcome._value_  # .value is a property: a Python call
        self.metrics.intake.delivered(event, outcome)
        level = LEVELS.get(outcome, logging.INFO)
        log_line(log, level, str(answer), {"event": event, "outcome": outcome, **ctx})
        return answer

    async def webhook(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /webhook, as a plain ASGI app: Starlette's Request, routing and middleware were
        a fifth of the intake's time, and it needs none of them."""
        started = time.perf_counter()
        if self.in_flight >= self.settings.max_in_flight:
            # Before anything is read: a flood costs a counter check per request.
            busy = _refused(503, "too many deliveries in flight, try again later", Outcome.BUSY)
            answer = self._answer(busy, UNVERIFIED)
        else:
            self.in_flight += 1
            try:
                answer = await self._webhook(scope["headers"], receive)
            finally:
                self.in_flight -= 1
        start, body = _answer_messages(answer)
        await send(start)
        await send(body)
        self.metrics.intake.observe(time.perf_counter() - started)

    async def _webhook(self, raw_headers: list[tuple[bytes, bytes]], receive: Receive) -> Answer:
        # Reversed: the first of repeated headers wins, as in Starlette. (ASGI promises an
        # iterable; uvicorn gives a list.)
        listed = raw_headers if isinstance(raw_headers, list) else list(raw_headers)
        headers = dict(reversed(listed))
        event = headers.get(_EVENT, b"").decode("latin-1")
        delivery = headers.get(_DELIVERY, b"").decode("latin-1")
        label = UNVERIFIED  # until the signature matches, the headers are anyone's words
        if self.health.started and not self.health.leading():
            # Not acknowledged, so nothing is lost: GitHub shows the failure (and can redeliver),
            # and the leader's resync converges the PR anyway.
            return self._answer(_refused(503, "not the leader", Outcome.BUSY), label)
        try:
            body = await self._verified_body(headers, receive, event, delivery)
            label = metric_event(event)
            return self._accept(event, label, delivery, body)
        except Answer as early:
            shown = delivery if label != UNVERIFIED else delivery[:LOGGED_DELIVERY]
            return self._answer(early, label, delivery=shown)
        except Exception as exc:
            # The last line: a bug must not answer 500 with a traceback, nor stop the server.
            log.exception("intake failed on a delivery", extra={"event": label})
            failed = (
                Answer(400, "the delivery could not be read")
                if isinstance(exc, ValueError)
                else Answer(503, "the delivery was not taken; redeliver it", Outcome.ERROR)
            )
            return self._answer(failed, label)

    async def _verified_body(
        self, headers: dict[bytes, bytes], receive: Receive, event: str, delivery: str
    ) -> bytes:
        """The body, once every check passed; Answer otherwise. Each check that needs no
        body comes before reading it."""
        length = headers.get(_CONTENT_LENGTH)
        if length is not None:
            if not length.isdigit():  # bytes.isdigit: ASCII digits only
                raise _refused(400, "Content-Length is not a number")
            if int(length) > self.settings.max_body_bytes:
                raise _refused(413, self._too_large())
        ctype = headers.get(_CONTENT_TYPE, b"")
        if ctype != _APPLICATION_JSON and ctype.split(b";")[0].strip().lower() != _APPLICATION_JSON:
            raise _refused(
                415, "Content-Type must be application/json (set it in the App's webhook settings)"
            )
        if not event or not delivery:
            missing = " and ".join(
                h for h, v in (("X-GitHub-Event", event), ("X-GitHub-Delivery", delivery)) if not v
            )
            raise _refused(400, f"missing header {missing}")
        signature = headers.get(_SIGNATURE)
        if not signature:
            raise _refused(401, "missing X-Hub-Signature-256 header")
        digest = signature_digest(signature.decode("latin-1"))
        if digest is None:
            raise _refused(401, _MISMATCH)
        body = await self._read_body(receive)
        if not signs(self._secret, body, digest):
            raise Answer(401, _MISMATCH)
        return body

    def _too_large(self) -> str:
        return f"body larger than {self.settings.max_body_bytes} bytes"

    async def _read_body(self, receive: Receive) -> bytes:
        """The whole body within body_timeout_seconds, read in chunks and abandoned as soon as
        it passes max_body_bytes or the bytes buffered by all requests pass their limit."""
        chunks: list[bytes] = []
        task = self._deadlines.begin()
        try:
            more = True
            size = 0
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    raise Disconnected
                chunk: bytes = message.get("body", b"")
                more = message.get("more_body", False)
                size += len(chunk)
                if size > self.settings.max_body_bytes:
                    raise _refused(413, self._too_large())
                if self.buffered + len(chunk) > self._buffer_limit:
                    raise _refused(503, "too many body bytes in flight", Outcome.BUSY)
                self.buffered += len(chunk)
                chunks.append(chunk)
        except asyncio.CancelledError:
            if not self._deadlines.end(task):
                raise
            seconds = self.settings.body_timeout_seconds
            raise _refused(408, f"body not received within {seconds:g}s") from None
        except Disconnected:
            raise Answer(400, "client disconnected mid-body", Outcome.DISCONNECTED) from None
        finally:
            self._deadlines.end(task)
            # What is read is joined and checked with no await in between: once this returns,
            # no other request can run while the body is held.
            self.buffered -= sum(map(len, chunks))
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _accept(self, event: str, label: str, delivery: str, body: bytes) -> Answer:
        """A verified delivery: dedupe, decode, scope, classify, and act on what it asks."""
        if delivery in self.seen:
            raise Answer(202, "delivery already seen", Outcome.DUPLICATE)
        if event == "ping":
            self.seen.add(delivery)
            raise Answer(200, "pong", Outcome.PING)
        try:
            payload = decode(event, body)
            repo = repository_of(payload) if payload is not None else None
            if repo is not None and not in_scope(self.settings.repositories, repo):
                self.seen.add(delivery)
                ctx = {"delivery": delivery, "repo": repo}
                out = Answer(202, "repository not in scope", Outcome.OUT_OF_SCOPE)
                return self._answer(out, label, **ctx)
            if self.observers:
                whole = parse_json(body)
                for observe in self.observers:
                    observe(event, whole)
            found = classify(event, payload, self.rules, delivery)
        except BadDelivery as exc:
            raise Answer(400, str(exc)) from None
        return self._act(found, label, delivery)

    def _act(self, found: Classified, label: str, delivery: str) -> Answer:
        """Queue the work, or hand on the hint or the resync request; 202 unless the queue is
        full (then 503, and the delivery is not remembered so that a redelivery works)."""
        ctx = {"delivery": delivery, "action": found.action, "repo": found.repo, "pr": found.number}
        if found.sha_hint is not None:
            if self.on_sha(found.sha_hint) is Outcome.QUEUE_FULL:
                # As for any work: not remembered, so GitHub's redelivery works later.
                full = Answer(503, "queue full, try again later", Outcome.QUEUE_FULL)
                return self._answer(full, label, **ctx)
            answer = Answer(202, f"head {found.sha_hint.sha} to resolve", Outcome.SHA_HINT)
        elif found.resync is not None:
            self.on_resync(found.resync)
            answer = Answer(202, found.resync.reason, Outcome.RESYNC)
        elif not found.works:
            answer = Answer(202, found.reason, Outcome.IGNORED)
        else:
            works = found.works
            if len(works) == 1:  # a PR's delivery: every one but a check naming several PRs
                outcome = self.queue.put_nowait(works[0])
                keys = str(works[0].key)
            else:
                outcomes = {self.queue.put_nowait(work) for work in works}
                # Refused if any was refused, else queued if any was new.
                outcome = next(
                    (o for o in (Outcome.QUEUE_FULL, Outcome.QUEUED) if o in outcomes),
                    Outcome.COALESCED,
                )
                keys = " ".join(str(work.key) for work in works)
            if outcome is Outcome.QUEUE_FULL:
                # Not remembered as seen: GitHub's "redeliver" button should work once there's
                # room, and the keys that did fit coalesce with it then.
                full = Answer(503, "queue full, try again later", Outcome.QUEUE_FULL)
                return self._answer(full, label, **ctx)
            answer = Answer(202, f"{keys} {outcome._value_}", outcome)
        self.seen.add(delivery)
        return self._answer(answer, label, **ctx)

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
        self.metrics.webhooks_in_flight.set(self.in_flight)
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)


Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]


def _answer_messages(answer: Answer) -> tuple[Message, Message]:
    """The ASGI messages of the answer as JSON: {"outcome": ..., "message": ...}."""
    body = _ENCODE({"outcome": answer.outcome._value_, "message": str(answer)})
    headers = [_JSON, (b"content-length", b"%d" % len(body))]
    if answer.close:
        headers.append(_CLOSE)
    return (
        {"type": "http.response.start", "status": answer.status, "headers": headers},
        {"type": "http.response.body", "body": body},
    )


class Server:
    """The bot's ASGI app: POST /webhook straight to the intake, the rest through Starlette
    (the probes, /metrics, the lifespan, 404 and 405)."""

    def __init__(self, intake: Intake, lifespan: Lifespan | None = None) -> None:
        self.intake = intake
        self.routes = Starlette(
            routes=[
                Route("/webhook", _WebhookEndpoint(intake), methods=["POST"]),
                Route("/healthz", intake.healthz, methods=["GET"]),
                Route("/readyz", intake.readyz, methods=["GET"]),
                Route("/metrics", intake.metrics_endpoint, methods=["GET"]),
            ],
            lifespan=lifespan,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/webhook" and scope["method"] == "POST":
            await self.intake.webhook(scope, receive, send)
        else:
            await self.routes(scope, receive, send)


class _WebhookEndpoint:
    """The intake as a Starlette route's ASGI endpoint (a path Starlette resolves itself, as
    under a root_path, still reaches it)."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.intake.webhook(scope, receive, send)


def create_app(intake: Intake, lifespan: Lifespan | None = None) -> Server:
    """The bot's ASGI app around an Intake; `lifespan` starts and stops the workers."""
    return Server(intake, lifespan)
