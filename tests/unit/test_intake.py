"""The webhook intake: signatures, limits, malformed input, scope, dedupe, coalescing, queue
bounds, and the events beyond pull_request."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import string
import uuid
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.testclient import TestClient

from bot import app as app_module
from bot.app import Deliveries, Intake, create_app
from bot.config import Settings
from bot.metrics import Metrics
from bot.model import Command, WorkKey
from bot.queue import KeyedQueue
from bot.webhooks import Outcome, ResyncRequest, ShaHint, sign
from tests.rig.artifacts import app_ping, official_example, validate_webhook

SECRET = "It's a Secret to Everybody"
TEST_KEY = "-----BEGIN RSA PRIVATE KEY-----\nunused\n-----END RSA PRIVATE KEY-----\n"


def make_settings(**changes: Any) -> Settings:
    base: dict[str, Any] = {
        "github_app_id": 1,
        "github_private_key": TEST_KEY,
        "github_webhook_secret": SECRET,
        "repositories": ("*",),
    }
    base.update(changes)
    return Settings(**base)


class Rig:
    """An intake behind Starlette's TestClient, and helpers to post deliveries to it."""

    def __init__(self, queue_size: int = 100, **settings: Any) -> None:
        self.queue = KeyedQueue(queue_size)
        self.intake = Intake(make_settings(**settings), self.queue, Metrics())
        self.intake.health.started = True
        self.client = TestClient(create_app(self.intake))

    def post(
        self,
        payload: dict[str, Any] | bytes,
        event: str = "pull_request",
        *,
        delivery: str | None = None,
        secret: str = SECRET,
        headers: dict[str, str] | None = None,
        signature: str | None = None,
    ) -> Any:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        sent = {
            "Content-Type": "application/json",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
            "X-Hub-Signature-256": signature if signature is not None else sign(secret, body),
        }
        sent.update(headers or {})
        sent = {k: v for k, v in sent.items() if v != ""}
        return self.client.post("/webhook", content=body, headers=sent)

    def metric(self, name: str, **labels: str) -> float:
        value = self.intake.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    with r.client:
        yield r


def labeled(label: str = "preview", number: int | None = None) -> dict[str, Any]:
    payload = official_example("pull_request", "labeled")
    payload["label"]["name"] = label
    if number is not None:
        payload["number"] = number
        payload["pull_request"]["number"] = number
    validate_webhook("pull_request", payload)
    return payload


def test_signed_official_labeled_example_is_queued(rig: Rig) -> None:
    resp = rig.post(labeled())
    assert resp.status_code == 202
    assert resp.json()["outcome"] == "queued"
    assert len(rig.queue) == 1
    assert rig.metric("preview_bot_deliveries_total", event="pull_request", outcome="queued") == 1
    metrics = rig.client.get("/metrics").text
    assert "preview_bot_queue_depth 1.0" in metrics


def test_one_byte_changed_is_rejected(rig: Rig) -> None:
    body = json.dumps(labeled()).encode()
    tampered = body.replace(b'"preview"', b'"previeW"', 1)
    assert tampered != body
    resp = rig.post(tampered, signature=sign(SECRET, body))
    assert resp.status_code == 401
    assert len(rig.queue) == 0


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"X-Hub-Signature-256": ""}, "missing X-Hub-Signature-256"),
        ({"X-Hub-Signature-256": "", "X-Hub-Signature": "sha1=0000"}, "missing"),
        ({"X-Hub-Signature-256": "sha1=abcdef"}, "does not match"),
        ({"X-Hub-Signature-256": "sha256=" + "0" * 64}, "does not match"),
    ],
)
def test_unsigned_sha1_only_and_bad_signatures_are_rejected(
    rig: Rig, headers: dict[str, str], why: str
) -> None:
    resp = rig.post(labeled(), headers=headers)
    assert resp.status_code == 401
    assert why in resp.json()["message"]
    assert len(rig.queue) == 0


def test_wrong_secret_is_rejected(rig: Rig) -> None:
    resp = rig.post(labeled(), secret="not the secret")
    assert resp.status_code == 401
    # Counted under `unverified`, never under the event its unverifiable header claims.
    assert rig.metric("preview_bot_deliveries_total", event="unverified", outcome="rejected") == 1
    assert rig.metric("preview_bot_deliveries_total", event="pull_request", outcome="rejected") == 0


def test_body_over_25_mb_is_refused_by_its_length(rig: Rig) -> None:
    resp = rig.post(b"{}", headers={"Content-Length": str(25 * 1024 * 1024 + 1)})
    assert resp.status_code == 413


def test_streamed_body_over_25_mb_is_refused_while_reading(rig: Rig) -> None:
    chunk = b" " * (1024 * 1024)

    def body() -> Iterator[bytes]:
        for _ in range(26):
            yield chunk

    resp = rig.client.post(
        "/webhook",
        content=body(),
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "pull_request",
            "X-GitHub-Delivery": "big",
            "X-Hub-Signature-256": "sha256=" + "0" * 64,
        },
    )
    assert resp.status_code == 413


def test_malformed_json_is_400_without_echoing_the_body(rig: Rig) -> None:
    resp = rig.post(b'{"secret-looking": "hunter2", oops')
    assert resp.status_code == 400
    assert "hunter2" not in resp.text
    assert resp.json()["message"] == "body is not valid JSON"


@pytest.mark.parametrize("missing", ["X-GitHub-Event", "X-GitHub-Delivery"])
def test_missing_github_headers_are_400(rig: Rig, missing: str) -> None:
    resp = rig.post(labeled(), headers={missing: ""})
    assert resp.status_code == 400
    assert missing in resp.json()["message"]


def test_form_encoded_delivery_is_415(rig: Rig) -> None:
    resp = rig.post(labeled(), headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 415
    assert "application/json" in resp.json()["message"]


def test_ping_is_200(rig: Rig) -> None:
    resp = rig.post(app_ping(), event="ping")
    assert resp.status_code == 200
    assert resp.json()["outcome"] == "ping"


@pytest.mark.parametrize(
    ("event", "action"),
    [("issues", "opened"), ("push", None), ("pull_request", "assigned")],
)
def test_unhandled_events_are_202_and_counted(rig: Rig, event: str, action: str | None) -> None:
    resp = rig.post(official_example(event, action), event=event)
    assert resp.status_code == 202
    assert resp.json()["outcome"] == "ignored"
    assert len(rig.queue) == 0
    assert rig.metric("preview_bot_deliveries_total", event=event, outcome="ignored") == 1


def test_other_labels_do_not_queue(rig: Rig) -> None:
    resp = rig.post(labeled(label="bug"))
    assert resp.json()["outcome"] == "ignored"
    assert len(rig.queue) == 0


def test_a_delivery_seen_before_is_not_queued_again(rig: Rig) -> None:
    first = rig.post(labeled(), delivery="d-1")
    rig.queue._pending.clear()  # as if a worker took the key already
    again = rig.post(labeled(), delivery="d-1")
    assert (first.json()["outcome"], again.json()["outcome"]) == ("queued", "duplicate")
    assert again.status_code == 202
    assert len(rig.queue) == 0


def test_ten_deliveries_for_one_pr_coalesce_into_one_key(rig: Rig) -> None:
    outcomes = [rig.post(labeled()).json()["outcome"] for _ in range(10)]
    assert outcomes == ["queued"] + ["coalesced"] * 9
    assert len(rig.queue) == 1
    assert list(rig.queue._pending) == [WorkKey("Codertocat/Hello-World", 2)]


def test_a_full_queue_answers_503_and_readyz_says_so() -> None:
    r = Rig(queue_size=2)
    with r.client:
        assert r.post(labeled(number=1)).status_code == 202
        assert r.post(labeled(number=2)).status_code == 202
        full = r.post(labeled(number=3), delivery="third")
        assert full.status_code == 503
        # Coalescing still works when full: PR 1 is already waiting.
        assert r.post(labeled(number=1)).json()["outcome"] == "coalesced"
        ready = r.client.get("/readyz")
        assert ready.status_code == 503
        assert "queue full" in ready.text
        # A 503'd delivery is not remembered, so GitHub's redeliver works once there is room.
        r.queue._pending.popitem()
        assert r.post(labeled(number=3), delivery="third").status_code == 202


def test_delivery_without_installation_is_a_clear_400(rig: Rig) -> None:
    payload = labeled()
    del payload["installation"]
    resp = rig.post(payload)
    assert resp.status_code == 400
    assert "installation.id" in resp.json()["message"]


def test_healthz_and_readyz(rig: Rig) -> None:
    assert rig.client.get("/healthz").text == "ok"
    assert rig.client.get("/readyz").status_code == 200
    rig.intake.health.notes["github"] = "unreachable: connection refused"
    rig.intake.health.started = False
    ready = rig.client.get("/readyz")
    assert ready.status_code == 503
    assert "starting" in ready.text
    assert "github: unreachable" in ready.text


def test_only_a_post_to_webhook_takes_the_fast_path_the_rest_is_routed(rig: Rig) -> None:
    assert rig.client.get("/webhook").status_code == 405
    assert rig.client.put("/webhook", content=b"{}").status_code == 405
    assert rig.client.get("/nowhere").status_code == 404
    assert rig.client.get("/metrics").text.count("preview_bot_deliveries") > 0
    assert len(rig.queue) == 0


def test_the_webhook_answer_is_json_with_its_length(rig: Rig) -> None:
    resp = rig.post(labeled())
    assert resp.status_code == 202
    assert resp.headers["content-type"] == "application/json"
    assert int(resp.headers["content-length"]) == len(resp.content)
    assert resp.json() == {"outcome": "queued", "message": "Codertocat/Hello-World#2 queued"}


# ---- hardening: every refusal, and what an unverified request may cost ----------------------


def series(rig: Rig) -> set[tuple[str, str]]:
    """(event, outcome) of every deliveries series the registry holds."""
    return {
        (sample.labels["event"], sample.labels["outcome"])
        for metric in rig.intake.metrics.registry.collect()
        if metric.name == "preview_bot_deliveries"
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


@pytest.mark.parametrize(
    ("headers", "status", "why"),
    [
        ({"Content-Length": "12x"}, 400, "Content-Length is not a number"),
        ({"Content-Length": str(5 * 1024 * 1024 + 1)}, 413, "body larger than 5242880 bytes"),
        ({"Content-Type": "text/plain"}, 415, "application/json"),
        ({"X-GitHub-Event": ""}, 400, "missing header X-GitHub-Event"),
        ({"X-GitHub-Delivery": ""}, 400, "missing header X-GitHub-Delivery"),
        ({"X-Hub-Signature-256": ""}, 401, "missing X-Hub-Signature-256"),
        ({"X-Hub-Signature-256": "sha256=abc"}, 401, "does not match"),  # odd length
        ({"X-Hub-Signature-256": "sha512=" + "0" * 128}, 401, "does not match"),
        ({"X-Hub-Signature-256": "0" * 64}, 401, "does not match"),  # no prefix
        # Well-formed: the one refusal that needs the body read first.
        ({"X-Hub-Signature-256": "sha256=" + "0" * 64}, 401, "does not match"),
    ],
)
def test_refusals_before_verification_count_as_unverified(
    rig: Rig, headers: dict[str, str], status: int, why: str
) -> None:
    resp = rig.post(labeled(), headers=headers, delivery="d-refused")
    assert resp.status_code == status
    assert why in resp.json()["message"]
    assert resp.json()["outcome"] == "rejected"
    # A body left unread is not waited for: the connection goes with the answer.
    read = headers.get("X-Hub-Signature-256", "").startswith("sha256=" + "0" * 64)
    assert resp.headers.get("connection") == (None if read else "close")
    assert series(rig) == {("unverified", "rejected")}
    assert len(rig.queue) == 0 and "d-refused" not in rig.intake.seen


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"action": "opened", "number": "2"}', "at `$.number`"),
        (b'{"action": "opened", "repository": []}', "at `$.repository`"),
        (b"[]", "Expected `object`, got `array`"),
        (b'{"action": "\xff"}', "body is not valid JSON"),
        (b'{"x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "body is not valid JSON"),
    ],
)
def test_signed_bodies_of_the_wrong_shape_are_400(rig: Rig, body: bytes, why: str) -> None:
    resp = rig.post(body)
    assert resp.status_code == 400
    assert why in resp.json()["message"]
    assert series(rig) == {("pull_request", "rejected")}


def test_random_event_names_on_unsigned_requests_add_no_series(rig: Rig) -> None:
    rng = random.Random(7)
    for _ in range(300):
        event = "".join(rng.choices(string.ascii_letters + string.digits + "_-", k=24))
        rig.post(b"{}", event=event, signature="")
        rig.post(b"{}", event=event, signature="sha256=" + "0" * 64)
    assert series(rig) == {("unverified", "rejected")}
    assert rig.metric("preview_bot_deliveries_total", event="unverified", outcome="rejected") == 600


def test_a_signed_event_of_an_unknown_name_counts_as_other(rig: Rig) -> None:
    resp = rig.post(b"{}", event="brand_new_event")
    assert resp.json()["outcome"] == "ignored"
    assert series(rig) == {("other", "ignored")}


def test_a_repository_out_of_scope_is_ignored_and_counted() -> None:
    r = Rig(repositories=("data-literate/*",))
    seen: list[str] = []
    r.intake.observers.append(lambda event, _payload: seen.append(event))
    with r.client:
        resp = r.post(labeled(), delivery="d-out")
        assert (resp.status_code, resp.json()["outcome"]) == (202, "out_of_scope")
        assert len(r.queue) == 0 and seen == []  # not even observed
        assert "d-out" in r.intake.seen
        assert (
            r.metric("preview_bot_deliveries_total", event="pull_request", outcome="out_of_scope")
            == 1
        )
        ping = r.post(app_ping(), event="ping")  # names no repository: not a scope question
        assert ping.status_code == 200


def test_scope_ignores_case() -> None:
    r = Rig(repositories=("codertocat/HELLO-*",))
    with r.client:
        assert r.post(labeled()).json()["outcome"] == "queued"


def pr_comment(body: str) -> dict[str, Any]:
    payload = official_example("issue_comment", "created")
    payload["issue"]["pull_request"] = {
        "url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/1",
        "html_url": "https://github.com/Codertocat/Hello-World/pull/1",
        "diff_url": "https://github.com/Codertocat/Hello-World/pull/1.diff",
        "patch_url": "https://github.com/Codertocat/Hello-World/pull/1.patch",
    }
    payload["comment"]["body"] = body
    validate_webhook("issue_comment", payload)
    return payload


def test_a_preview_command_is_queued_with_its_key(rig: Rig) -> None:
    payload = pr_comment("LGTM\n/preview approve")
    resp = rig.post(payload, event="issue_comment")
    assert resp.json()["outcome"] == "queued"
    (work,) = rig.queue._pending.values()
    assert work.key == WorkKey("Codertocat/Hello-World", payload["issue"]["number"])
    assert work.commands == (Command(payload["comment"]["id"], "Codertocat", ("approve",)),)
    assert rig.post(pr_comment("no command"), event="issue_comment").json()["outcome"] == (
        "ignored"
    )


def check_run(numbers: list[int]) -> dict[str, Any]:
    payload = official_example("check_run", "completed")
    payload["installation"] = {"id": 9, "node_id": "x"}
    payload["check_run"]["name"] = "build"
    payload["check_run"]["pull_requests"] = [
        {**payload["check_run"]["pull_requests"][0], "number": n} for n in numbers
    ]
    return payload


def test_a_completed_required_check_queues_each_pr_it_lists() -> None:
    r = Rig(required_checks=("build",))
    with r.client:
        resp = r.post(check_run([3, 4]), event="check_run")
        assert resp.json() == {
            "outcome": "queued",
            "message": "Codertocat/Hello-World#3 Codertocat/Hello-World#4 queued",
        }
        assert list(r.queue._pending) == [
            WorkKey("Codertocat/Hello-World", 3),
            WorkKey("Codertocat/Hello-World", 4),
        ]


def test_a_check_whose_prs_do_not_all_fit_is_503_and_can_be_redelivered() -> None:
    r = Rig(queue_size=1, required_checks=("build",))
    with r.client:
        first = r.post(check_run([3, 4]), event="check_run", delivery="d-check")
        assert (first.status_code, first.json()["outcome"]) == (503, "queue_full")
        assert "d-check" not in r.intake.seen
        r.queue._pending.clear()
        again = r.post(check_run([3, 4]), event="check_run", delivery="d-check")
        assert again.status_code == 503  # still one too many, but nothing was lost


def test_a_bare_head_sha_goes_to_the_sha_hook() -> None:
    r = Rig(required_checks=("build",))
    hints: list[ShaHint] = []
    r.intake.on_sha = hints.append
    payload = official_example("status")
    payload["context"] = "build"
    payload["installation"] = {"id": 9, "node_id": "x"}
    with r.client:
        resp = r.post(payload, event="status")
        assert (resp.status_code, resp.json()["outcome"]) == (202, "sha_hint")
        assert hints == [ShaHint(payload["repository"]["full_name"], payload["sha"], 9)]
        assert len(r.queue) == 0
        # The default hook drops it: no resolver wired, nothing breaks.
        r.intake.on_sha = Intake(make_settings(), r.queue, Metrics()).on_sha
        assert r.post(payload, event="status").json()["outcome"] == "sha_hint"


def test_a_head_sha_the_queue_cannot_take_is_503_and_can_be_redelivered() -> None:
    r = Rig(required_checks=("build",))
    r.intake.on_sha = lambda _hint: Outcome.QUEUE_FULL  # what Bot.on_sha says when refused
    payload = official_example("status")
    payload["context"] = "build"
    payload["installation"] = {"id": 9, "node_id": "x"}
    with r.client:
        resp = r.post(payload, event="status", delivery="d-status")
        assert (resp.status_code, resp.json()["outcome"]) == (503, "queue_full")
        assert "d-status" not in r.intake.seen


def test_installation_changes_go_to_the_resync_hook(rig: Rig) -> None:
    requests: list[ResyncRequest] = []
    rig.intake.on_resync = requests.append
    payload = official_example("installation", "created")
    resp = rig.post(payload, event="installation")
    assert (resp.status_code, resp.json()["outcome"]) == (202, "resync")
    assert requests == [ResyncRequest(payload["installation"]["id"], "installation created")]


def test_the_whole_body_is_parsed_only_for_observers(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(body: bytes) -> dict[str, Any]:
        raise AssertionError("parse_json called without observers")

    monkeypatch.setattr(app_module, "parse_json", refuse)
    assert rig.post(labeled()).json()["outcome"] == "queued"
    monkeypatch.undo()
    got: list[dict[str, Any]] = []
    rig.intake.observers.append(lambda _event, payload: got.append(payload))
    assert rig.post(labeled(number=9)).json()["outcome"] == "queued"
    assert got[0]["pull_request"]["number"] == 9


@pytest.mark.parametrize(
    ("error", "status", "outcome"),
    [(RuntimeError("bug"), 503, "error"), (ValueError("odd"), 400, "rejected")],
)
def test_nothing_a_request_holds_yields_a_500(
    rig: Rig, caplog: pytest.LogCaptureFixture, error: Exception, status: int, outcome: str
) -> None:
    def broken(event: str, payload: dict[str, Any]) -> None:
        raise error

    rig.intake.observers.append(broken)
    resp = rig.post(labeled(), delivery="d-bug")
    assert (resp.status_code, resp.json()["outcome"]) == (status, outcome)
    assert "bug" not in resp.text and "odd" not in resp.text and "Traceback" not in resp.text
    assert "d-bug" not in rig.intake.seen  # a redelivery is tried afresh
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)
    assert series(rig) == {("pull_request", outcome)}


# ---- the same at the ASGI level: bodies that trickle, stall or stop ----------------------------

Receive = Callable[[], Awaitable[dict[str, Any]]]


@dataclass
class Sent:
    """What the intake answered at the ASGI level."""

    status_code: int
    headers: dict[str, str]
    body: bytes


async def webhook(it: Intake, receive: Receive, signature: bytes = b"sha256=" + b"0" * 64) -> Sent:
    """POST /webhook to the intake's ASGI handler with `receive` giving the body."""
    headers = [
        (b"content-type", b"application/json"),
        (b"x-github-event", b"pull_request"),
        (b"x-github-delivery", b"d-asgi"),
        (b"x-hub-signature-256", signature),
    ]
    scope = {"type": "http", "method": "POST", "path": "/webhook", "headers": headers}
    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await it.webhook(scope, receive, send)
    start, body = sent
    assert start["type"] == "http.response.start" and body["type"] == "http.response.body"
    answered = {k.decode(): v.decode() for k, v in start["headers"]}
    return Sent(start["status"], answered, body["body"])


class Body:
    """A request body sent as the test says: chunks, then a stall until released, or a
    disconnect."""

    def __init__(self, *chunks: bytes, stall: bool = False, disconnect: bool = False) -> None:
        self.chunks = list(chunks)
        self.stall = stall
        self.disconnect = disconnect
        self.released = asyncio.Event()
        self.stalled = asyncio.Event()  # set once every chunk is out and it waits
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.chunks:
            return {"type": "http.request", "body": self.chunks.pop(0), "more_body": True}
        if self.disconnect:
            return {"type": "http.disconnect"}
        if self.stall:
            self.stalled.set()
            await self.released.wait()
        return {"type": "http.request", "body": b"", "more_body": False}


def intake(**settings: Any) -> Intake:
    return Intake(make_settings(**settings), KeyedQueue(10), Metrics())


def outcome_of(resp: Sent) -> tuple[int, str]:
    return resp.status_code, json.loads(resp.body)["outcome"]


async def test_requests_beyond_max_in_flight_get_503_before_their_body_is_read() -> None:
    it = intake(max_in_flight=2)
    stalled = [Body(b"{", stall=True) for _ in range(2)]
    tasks = [asyncio.create_task(webhook(it, body)) for body in stalled]
    await asyncio.gather(*(body.stalled.wait() for body in stalled))
    third = Body(b"{}")
    resp = await webhook(it, third)
    assert outcome_of(resp) == (503, "busy")
    assert resp.headers["connection"] == "close"
    assert third.calls == 0  # not a byte read
    for body in stalled:
        body.released.set()
    assert [outcome_of(r) for r in await asyncio.gather(*tasks)] == [(401, "rejected")] * 2
    assert it.in_flight == 0 and it.buffered == 0


async def test_body_bytes_held_across_requests_are_capped() -> None:
    it = intake(max_body_bytes=1000)  # so at most 2000 bytes buffered at once
    stalled = [Body(b" " * 900, stall=True) for _ in range(2)]
    tasks = [asyncio.create_task(webhook(it, body)) for body in stalled]
    await asyncio.gather(*(body.stalled.wait() for body in stalled))
    assert it.buffered == 1800
    resp = await webhook(it, Body(b" " * 300))
    assert outcome_of(resp) == (503, "busy")
    assert "body bytes" in json.loads(resp.body)["message"]
    for body in stalled:
        body.released.set()
    await asyncio.gather(*tasks)
    assert it.buffered == 0
    resp = await webhook(it, Body(b" " * 900))  # room again
    assert outcome_of(resp) == (401, "rejected")


async def test_a_body_that_does_not_arrive_in_time_is_408() -> None:
    it = intake(body_timeout_seconds=0.05)
    body = Body(b"{", stall=True)
    resp = await webhook(it, body)
    assert outcome_of(resp) == (408, "rejected")
    assert "body not received within 0.05s" in resp.body.decode()
    assert resp.headers["connection"] == "close"
    assert it.in_flight == 0 and it.buffered == 0
    body.released.set()


async def test_one_timer_times_out_the_slow_bodies_only_and_disarms_when_none_is_read() -> None:
    it = intake(body_timeout_seconds=0.2)
    slow = [Body(b"{", stall=True) for _ in range(2)]
    late = Body(b"{", stall=True)  # arrives in time, after a while
    tasks = [asyncio.create_task(webhook(it, body)) for body in [*slow, late]]
    await asyncio.sleep(0.1)
    late.released.set()
    answers = await asyncio.gather(*tasks)
    assert [outcome_of(a)[0] for a in answers] == [408, 408, 401]  # 401: a made-up signature
    for body in slow:
        body.released.set()
    await asyncio.sleep(0.1)  # the sweep after the last read ends finds none and stops
    assert it._deadlines._armed_on is None and not it._deadlines._reading
    assert outcome_of(await webhook(it, Body(b"{}"))) == (401, "rejected")  # and re-arms


async def test_a_shutdowns_cancel_in_the_sweeps_turn_still_cancels_the_request() -> None:
    it = intake(body_timeout_seconds=60)
    body = Body(b"{", stall=True)
    task = asyncio.create_task(webhook(it, body))
    await body.stalled.wait()
    deadlines = it._deadlines
    deadlines._reading[task] = 0.0  # overdue: the next sweep cancels it
    deadlines._sweep(asyncio.get_running_loop())
    task.cancel()  # and the server, shutting down, in the same turn
    with pytest.raises(asyncio.CancelledError):
        await task
    assert it.in_flight == 0 and it.buffered == 0 and not deadlines._expired
    body.released.set()


async def test_a_client_that_leaves_mid_body_is_logged_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="bot.app")
    it = intake()
    resp = await webhook(it, Body(b"{", disconnect=True))
    assert outcome_of(resp) == (400, "disconnected")
    (line,) = [r for r in caplog.records if r.name == "bot.app"]
    assert line.levelno == logging.DEBUG
    assert it.buffered == 0


@pytest.mark.parametrize(
    "signature",
    [
        b"sha256=" + b"\xff" * 64,  # latin-1 bytes: a non-ASCII str in Starlette's headers
        b"sha256=" + "é".encode() * 32,
        b"sha256=" + b"0" * 63,
        b"\x00",
    ],
)
async def test_odd_signature_bytes_are_401_before_the_body(signature: bytes) -> None:
    body = Body(b"{}")
    resp = await webhook(intake(), body, signature)
    assert outcome_of(resp) == (401, "rejected")
    assert body.calls == 0


def test_delivery_ids_are_remembered_for_their_ttl_and_at_most_maxsize() -> None:
    now = [0.0]
    seen = Deliveries(maxsize=3, ttl=60, clock=lambda: now[0])
    for i in range(3):
        seen.add(f"d-{i}")
    assert all(f"d-{i}" in seen for i in range(3)) and "d-9" not in seen
    seen.add("d-3")  # over the size: the oldest is forgotten
    assert "d-0" not in seen and "d-3" in seen and len(seen) == 3
    now[0] = 59.9
    assert "d-1" in seen
    now[0] = 60.0  # expired: a redelivery is taken afresh, and the next add forgets it
    assert "d-1" not in seen
    seen.add("d-4")
    assert len(seen) == 1 and "d-4" in seen


def test_a_hundred_thousand_deliveries_stay_bounded() -> None:
    seen = Deliveries(maxsize=1000, ttl=3600)
    ids = [str(uuid.uuid4()) for _ in range(100_000)]
    for delivery in ids:
        seen.add(delivery)
    assert len(seen) == 1000 and len(seen._order) == 1000
    assert ids[-1] in seen and ids[0] not in seen


async def test_headers_as_any_iterable_and_the_first_of_repeated_ones() -> None:
    # ASGI promises an iterable of header pairs (uvicorn gives a list); when a header is
    # repeated, the first counts, as in Starlette.
    it = intake()
    body = json.dumps(labeled()).encode()
    pairs = [
        (b"content-type", b"application/json"),
        (b"x-github-event", b"pull_request"),
        (b"x-github-delivery", b"d-first"),
        (b"x-github-delivery", b"d-second"),
        (b"x-hub-signature-256", sign(SECRET, body).encode()),
        (b"x-hub-signature-256", b"sha256=" + b"0" * 64),
    ]
    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/webhook", "headers": iter(pairs)}
    await it.webhook(scope, Body(body), send)
    assert sent[0]["status"] == 202
    assert "d-first" in it.seen and "d-second" not in it.seen
