"""Webhook deliveries -> work keys: signature check and classification, pure and fast.

The intake trusts nothing in a payload beyond "PR N of repository R may be stale": the sync
reads the PR's real state from GitHub. So this module only picks out the few fields that name
the key (repository, number, installation) and decides whether the event could matter at all.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from typing import Any

from bot.model import Work, WorkKey

SIGNATURE_HEADER = "x-hub-signature-256"
EVENT_HEADER = "x-github-event"
DELIVERY_HEADER = "x-github-delivery"

# pull_request actions that may change whether (or which SHA) a preview should exist.
# `opened` matters because a PR can be opened with the label already on it.
PR_ACTIONS = frozenset(
    {"opened", "reopened", "closed", "synchronize", "labeled", "unlabeled", "edited"}
)
LABEL_ACTIONS = frozenset({"labeled", "unlabeled"})


class Outcome(enum.Enum):
    """What the intake did with a delivery (a metrics label and the response)."""

    QUEUED = "queued"
    COALESCED = "coalesced"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    PING = "ping"
    REJECTED = "rejected"
    QUEUE_FULL = "queue_full"


@dataclass(frozen=True, slots=True)
class Classified:
    """The result of classifying a delivery: work to queue, or why there is none."""

    work: Work | None
    reason: str
    action: str = ""

    @property
    def repo(self) -> str:
        return self.work.key.repo if self.work else ""

    @property
    def number(self) -> int | None:
        return self.work.key.number if self.work else None


class BadDelivery(ValueError):
    """A delivery that can't be read: the message is safe to send back (no payload content)."""


def sign(secret: str | bytes, body: bytes) -> str:
    """The X-Hub-Signature-256 value GitHub would send for `body`."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def delivery_headers(
    secret: str | bytes, event: str, body: bytes, delivery: str | None = None
) -> dict[str, str]:
    """The headers GitHub sends with a webhook delivery of `body`, signed with `secret`.

    The one signing helper: `simulate`, the tests, the rig and the benchmarks all use it.
    GitHub also sends the legacy sha1 signature; the intake never trusts it.
    """
    key = secret.encode() if isinstance(secret, str) else secret
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/preview-bot",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(key, body),
        "X-Hub-Signature": "sha1=" + hmac.new(key, body, hashlib.sha1).hexdigest(),
    }


def verify_signature(secret: str | bytes, body: bytes, header: str | None) -> bool:
    """True when `header` is a valid sha256 signature of `body`; compared in constant time.

    sha1 (X-Hub-Signature) is deliberately not accepted: it is the weaker, legacy header.
    """
    if not header or not header.startswith("sha256="):
        return False
    return hmac.compare_digest(sign(secret, body), header)


def parse_json(body: bytes) -> dict[str, Any]:
    """The payload as a dict, or BadDelivery."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadDelivery("body is not valid JSON") from exc
    if not isinstance(payload, dict):
        raise BadDelivery("body is not a JSON object")
    return payload


def _installation(payload: dict[str, Any]) -> int | None:
    inst = payload.get("installation")
    if isinstance(inst, dict) and isinstance(inst.get("id"), int):
        return int(inst["id"])
    return None


def classify(
    event: str, payload: dict[str, Any], trigger_label: str, delivery: str = ""
) -> Classified:
    """Decide whether a delivery names a PR whose preview may need a sync."""
    action = payload.get("action")
    action = action if isinstance(action, str) else ""
    repo = payload.get("repository")
    full_name = repo.get("full_name") if isinstance(repo, dict) else None
    if event != "pull_request":
        return Classified(None, f"event {event} is not handled", action)
    if action not in PR_ACTIONS:
        return Classified(None, f"pull_request action {action or '(none)'} is not handled", action)
    if action in LABEL_ACTIONS:
        label = payload.get("label")
        name = label.get("name") if isinstance(label, dict) else None
        # Another label changing cannot change whether a preview should exist.
        if name != trigger_label:
            return Classified(None, "a label other than the trigger label changed", action)
    pr = payload.get("pull_request")
    number = payload.get("number")
    if not isinstance(number, int) and isinstance(pr, dict):
        number = pr.get("number")
    installation = _installation(payload)
    if not isinstance(full_name, str) or "/" not in full_name:
        raise BadDelivery("pull_request payload lacks repository.full_name")
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise BadDelivery("pull_request payload lacks a PR number")
    if installation is None:
        # Only an App's deliveries carry installation.id; without it we cannot get a token.
        raise BadDelivery("payload lacks installation.id (is this hook set on the GitHub App?)")
    return Classified(Work(WorkKey(full_name, number), installation, delivery), "queued", action)
