"""The webhook intake: signatures, limits, malformed input, dedupe, coalescing, queue bounds."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from bot.app import Intake, create_app
from bot.config import Settings
from bot.metrics import Metrics
from bot.model import WorkKey
from bot.queue import KeyedQueue
from bot.webhooks import sign
from tests.rig.artifacts import app_ping, official_example, validate_webhook

SECRET = "It's a Secret to Everybody"
TEST_KEY = "-----BEGIN RSA PRIVATE KEY-----\nunused\n-----END RSA PRIVATE KEY-----\n"


def make_settings(**changes: Any) -> Settings:
    base: dict[str, Any] = {
        "github_app_id": 1,
        "github_private_key": TEST_KEY,
        "github_webhook_secret": SECRET,
    }
    base.update(changes)
    return Settings(**base)


class Rig:
    """An intake behind Starlette's TestClient, and helpers to post deliveries to it."""

    def __init__(self, queue_size: int = 100) -> None:
        self.queue = KeyedQueue(queue_size)
        self.intake = Intake(make_settings(), self.queue, Metrics())
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
    assert rig.metric("preview_bot_deliveries_total", event="pull_request", outcome="rejected") == 1


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
