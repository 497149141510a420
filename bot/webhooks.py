"""Webhook deliveries -> work: signature check, decoding, classification; pure and fast.

The intake trusts nothing in a payload beyond "PR N of repository R may be stale": the sync
reads the PR's real state from GitHub. So a delivery is decoded (msgspec) into small Structs
holding only the fields that name the work (repository, PR numbers, installation, head SHA)
and the few that decide whether the event could matter at all (action, label, commenter,
check name). Everything else in the payload is skipped without being built.

What a delivery can become (`Classified`):
- work: one `Work` per PR it names (pull_request, issue_comment commands, check_run/check_suite
  listing their PRs);
- a SHA hint: a head SHA whose PRs are not named (status; checks on forks list none), for the
  bot to resolve into PRs;
- a resync request: the installation or its repositories changed (installation,
  installation_repositories); the periodic full resync converges;
- nothing, with the reason why (logged and counted as `ignored`).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from bot.model import MAX_COMMANDS, SHA_RE, Command, Work, WorkKey

if TYPE_CHECKING:
    from bot.config import Settings

SIGNATURE_HEADER = "x-hub-signature-256"
EVENT_HEADER = "x-github-event"
DELIVERY_HEADER = "x-github-delivery"

# The metric label of a request that failed verification: its headers are anyone's words.
UNVERIFIED = "unverified"
# The metric label of a verified event GitHub sent under a name missing from GITHUB_EVENTS.
OTHER_EVENT = "other"
# Every webhook event GitHub documents (@octokit/webhooks-schemas 7.6.1; a test keeps the two
# equal). A closed set, so the deliveries metric has a bounded number of series.
# fmt: off
GITHUB_EVENTS = frozenset([
    "branch_protection_configuration", "branch_protection_rule", "check_run", "check_suite",
    "code_scanning_alert", "commit_comment", "create", "custom_property",
    "custom_property_values", "delete", "dependabot_alert", "deploy_key", "deployment",
    "deployment_protection_rule", "deployment_review", "deployment_status", "discussion",
    "discussion_comment", "fork", "github_app_authorization", "gollum", "installation",
    "installation_repositories", "installation_target", "issue_comment", "issues", "label",
    "marketplace_purchase", "member", "membership", "merge_group", "meta", "milestone",
    "org_block", "organization", "package", "page_build", "ping", "project", "project_card",
    "project_column", "projects_v2_item", "public", "pull_request", "pull_request_review",
    "pull_request_review_comment", "pull_request_review_thread", "push", "registry_package",
    "release", "repository", "repository_dispatch", "repository_import",
    "repository_vulnerability_alert", "secret_scanning_alert", "secret_scanning_alert_location",
    "security_advisory", "sponsorship", "star", "status", "team", "team_add", "watch",
    "workflow_dispatch", "workflow_job", "workflow_run",
])
# fmt: on

# pull_request actions that may change whether (or which SHA) a preview should exist.
# `opened` matters because a PR can be opened with the label already on it; `edited` because
# the base branch may change; the draft ones because of the drafts policy.
PR_ACTIONS = frozenset(
    {
        "opened",
        "reopened",
        "closed",
        "synchronize",
        "labeled",
        "unlabeled",
        "edited",
        "ready_for_review",
        "converted_to_draft",
    }
)
LABEL_ACTIONS = frozenset({"labeled", "unlabeled"})
# Only a finished check can make a head ready (the bot waits for required checks to succeed);
# created/requested/rerequested only say one is on its way, which changes nothing yet.
CHECK_ACTIONS = frozenset({"completed"})
INSTALLATION_ACTIONS = frozenset({"created", "deleted", "suspend", "unsuspend"})
INSTALLATION_REPOSITORIES_ACTIONS = frozenset({"added", "removed"})

COMMAND = "/preview"
# Most words kept of one command line: commands are a word or two; a comment is 64 KB.
MAX_WORDS = 8


class Outcome(enum.Enum):
    """What the intake did with a delivery (a metrics label and the response)."""

    QUEUED = "queued"
    COALESCED = "coalesced"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    OUT_OF_SCOPE = "out_of_scope"  # a repository outside `repositories`
    SHA_HINT = "sha_hint"  # handed to Intake.on_sha
    RESYNC = "resync"  # handed to Intake.on_resync
    PING = "ping"
    REJECTED = "rejected"  # failed a check: headers, size, time, signature, payload shape
    DISCONNECTED = "disconnected"  # the client went away mid-body
    BUSY = "busy"  # refused before reading: too many requests or body bytes in flight
    QUEUE_FULL = "queue_full"
    ERROR = "error"  # the intake itself failed (a bug): answered, never a 500


def metric_event(event: str) -> str:
    """The deliveries metric's event label of a verified delivery: a known name or `other`."""
    return event if event in GITHUB_EVENTS else OTHER_EVENT


@dataclass(frozen=True, slots=True)
class Rules:
    """What classification needs from the settings: the labels and checks the bot watches."""

    trigger_label: str
    keep_label: str = ""
    exclude_labels: frozenset[str] = frozenset()
    # Check run names or status contexts that must succeed; none: check events change nothing.
    required_checks: frozenset[str] = frozenset()
    # The image gate: any finished check or status may mean CI pushed the image, so a head
    # waiting for it is looked at again (only such heads: a dictionary lookup, see on_sha).
    image_check: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Rules:
        return cls(
            settings.trigger_label,
            settings.keep_label,
            frozenset(settings.exclude_labels),
            frozenset(settings.required_checks),
            settings.image_check,
        )

    def watches_label(self, name: str | None) -> bool:
        """A label whose change can change the plan: trigger, keep, or an excluding one."""
        return name is not None and (
            name in (self.trigger_label, self.keep_label) or name in self.exclude_labels
        )


@dataclass(frozen=True, slots=True)
class ShaHint:
    """A head SHA whose checks changed, without the PRs it heads: the bot resolves them."""

    repo: str
    sha: str
    installation_id: int


@dataclass(frozen=True, slots=True)
class ResyncRequest:
    """The installation or its repositories changed: run the full resync soon."""

    installation_id: int
    reason: str  # "installation deleted", "installation_repositories added", ...


class Classified(msgspec.Struct, frozen=True):
    """The result of classifying a delivery.

    At most one of `works`, `sha_hint` and `resync` is set; none means ignored, for `reason`.
    `repo` and `number` are for logs: the repository named (if any), the PR when exactly one.
    """

    reason: str
    action: str = ""
    works: tuple[Work, ...] = ()
    sha_hint: ShaHint | None = None
    resync: ResyncRequest | None = None
    repo: str = ""

    @property
    def number(self) -> int | None:
        return self.works[0].key.number if len(self.works) == 1 else None


class BadDelivery(ValueError):
    """A delivery that can't be read: the message is safe to send back (no payload content)."""


# ---- signatures ----------------------------------------------------------------------------

_SIGNATURE_PREFIX = "sha256="
_SIGNATURE_LENGTH = len(_SIGNATURE_PREFIX) + 64


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: str | bytes, body: bytes) -> str:
    """The X-Hub-Signature-256 value GitHub would send for `body`."""
    return "sha256=" + hmac.new(_key(secret), body, hashlib.sha256).hexdigest()


def delivery_headers(
    secret: str | bytes, event: str, body: bytes, delivery: str | None = None
) -> dict[str, str]:
    """The headers GitHub sends with a webhook delivery of `body`, signed with `secret`.

    The one signing helper: `simulate`, the tests, the rig and the benchmarks all use it.
    GitHub also sends the legacy sha1 signature; the intake never trusts it.
    """
    key = _key(secret)
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/preview-bot",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(key, body),
        "X-Hub-Signature": "sha1=" + hmac.new(key, body, hashlib.sha1).hexdigest(),
    }


def signature_digest(header: str | None) -> bytes | None:
    """The 32 bytes of a well-formed `sha256=<64 hex>` header, else None. Never raises.

    Lets the intake refuse an unsigned or malformed request before reading its body. sha1
    (X-Hub-Signature) is deliberately not accepted: it is the weaker, legacy header.
    """
    if not header or len(header) != _SIGNATURE_LENGTH or not header.startswith(_SIGNATURE_PREFIX):
        return None
    # fromhex takes ASCII hex digits only (no other script's digits), and skips ASCII
    # whitespace: 64 characters with any of it make fewer than 32 bytes. A regex was a fiftieth
    # of a delivery.
    try:
        digest = bytes.fromhex(header[len(_SIGNATURE_PREFIX) :])
    except ValueError:
        return None
    return digest if len(digest) == 32 else None


def verify_signature(secret: str | bytes, body: bytes, header: str | None) -> bool:
    """True when `header` is a valid sha256 signature of `body`; compared in constant time.

    Never raises, whatever the header holds (non-ASCII, odd length, another algorithm).
    """
    given = signature_digest(header)
    return given is not None and signs(secret, body, given)


def signs(secret: str | bytes, body: bytes, digest: bytes) -> bool:
    """True when `digest` (from signature_digest) is the HMAC-SHA256 of `body`; constant time."""
    # hmac.digest is OpenSSL's one-shot HMAC: no Python HMAC object per delivery.
    return hmac.compare_digest(hmac.digest(_key(secret), body, "sha256"), digest)


# ---- decoding ------------------------------------------------------------------------------
# Only the fields classify reads; msgspec skips the rest of the payload without building it.
# Every field may be absent or null: GitHub's own shapes vary by event and action, and a
# missing field the work needs is reported by classify with a clear message.


class Present(msgspec.Struct):
    """An object whose presence is the fact (issue.pull_request): its fields are skipped."""


class Named(msgspec.Struct):
    name: str | None = None


class User(msgspec.Struct):
    login: str | None = None
    type: str | None = None

    @property
    def is_bot(self) -> bool:
        return self.type == "Bot" or (self.login or "").endswith("[bot]")


class Repository(msgspec.Struct):
    full_name: str | None = None


class Installation(msgspec.Struct):
    id: int | None = None


class PullRef(msgspec.Struct):
    number: int | None = None


class Issue(msgspec.Struct):
    number: int | None = None
    pull_request: Present | None = None


class Comment(msgspec.Struct):
    id: int | None = None
    body: str | None = None
    user: User | None = None


class Check(msgspec.Struct):
    """A check_run's or a check_suite's head: the SHA and the PRs GitHub matched to it."""

    head_sha: str | None = None
    name: str | None = None  # check runs only
    pull_requests: list[PullRef] | None = None


class Event(msgspec.Struct):
    """What every handled event carries."""

    action: str | None = None
    repository: Repository | None = None
    installation: Installation | None = None


class PullRequestEvent(Event):
    number: int | None = None
    label: Named | None = None
    sender: User | None = None
    pull_request: PullRef | None = None


class IssueCommentEvent(Event):
    issue: Issue | None = None
    comment: Comment | None = None


class CheckRunEvent(Event):
    check_run: Check | None = None


class CheckSuiteEvent(Event):
    check_suite: Check | None = None


class StatusEvent(Event):
    sha: str | None = None
    state: str | None = None
    context: str | None = None


PAYLOADS: dict[str, type[Event]] = {
    "pull_request": PullRequestEvent,
    "issue_comment": IssueCommentEvent,
    "check_run": CheckRunEvent,
    "check_suite": CheckSuiteEvent,
    "status": StatusEvent,
    "installation": Event,
    "installation_repositories": Event,
}
_DECODERS = {event: msgspec.json.Decoder(kind) for event, kind in PAYLOADS.items()}


def decode(event: str, body: bytes) -> Event | None:
    """The fields of `body` that classify needs, or None for an event it does not handle
    (which is then not parsed at all). Raises BadDelivery with a safe message."""
    decoder = _DECODERS.get(event)
    if decoder is None:
        return None
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        # msgspec names the expected type and the path of our own field: no payload content.
        raise BadDelivery(f"payload does not have GitHub's shape: {exc}") from None
    except (msgspec.DecodeError, RecursionError):
        raise BadDelivery("body is not valid JSON") from None


def from_dict(event: str, payload: dict[str, Any]) -> Event | None:
    """`decode` of an already parsed payload (tests, the manifest check)."""
    kind = PAYLOADS.get(event)
    if kind is None:
        return None
    try:
        return msgspec.convert(payload, kind)
    except msgspec.ValidationError as exc:
        raise BadDelivery(f"payload does not have GitHub's shape: {exc}") from None


def parse_json(body: bytes) -> dict[str, Any]:
    """The whole payload as a dict (for intake observers only), or BadDelivery."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BadDelivery("body is not valid JSON") from exc
    if not isinstance(payload, dict):
        raise BadDelivery("body is not a JSON object")
    return payload


def repository_of(payload: Event) -> str | None:
    """The owner/name the payload names, if any (installation events name none)."""
    return payload.repository.full_name if payload.repository else None


# ---- commands ------------------------------------------------------------------------------

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# CommonMark: a fence is 3+ backticks or tildes indented at most 3 spaces; a backtick fence's
# info string has no backtick. 4 columns of indentation (or a tab) make an indented code block.
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_QUOTE = re.compile(r"^ {0,3}>")
_COMMAND_LINE = re.compile(r"^ {0,3}/preview(?:[ \t]+(.*))?$", re.IGNORECASE)


def _closes_fence(line: str, fence: str) -> bool:
    stripped = line.lstrip(" ")
    if len(line) - len(stripped) > 3:
        return False
    run = len(stripped) - len(stripped.lstrip(fence[0]))
    return run >= len(fence) and not stripped[run:].strip()


def _opens_fence(line: str) -> str | None:
    found = _FENCE.match(line)
    if found is None or (found[1][0] == "`" and "`" in found[2]):
        return None
    return found[1]


def parse_commands(body: str) -> tuple[tuple[str, ...], ...]:
    """The `/preview` command lines of a comment: for each, its words after `/preview`,
    lower-cased (at most MAX_WORDS), in order, at most MAX_COMMANDS.

    A command is a line of its own starting with `/preview` in any case, after at most 3
    spaces (more, or a tab, make an indented code block). Lines inside a fenced code block
    (``` or ~~~) or a `>` quote don't count: they show, not ask. A line right after a quote
    line continues the quote in Markdown ("lazy continuation"), so it doesn't count either.
    """
    found: list[tuple[str, ...]] = []
    fence: str | None = None
    quoted = False
    for line in _LINE_BREAK.split(body):
        if fence is not None:
            if _closes_fence(line, fence):
                fence = None
            continue
        if not line.strip():
            quoted = False
            continue
        if quoted or _QUOTE.match(line):
            quoted = True
            continue
        fence = _opens_fence(line)
        command = _COMMAND_LINE.match(line) if fence is None else None
        if command is not None:
            words = (command[1] or "").lower().split()
            found.append(tuple(words[:MAX_WORDS]))
            if len(found) == MAX_COMMANDS:
                break
    return tuple(found)


# ---- classification ------------------------------------------------------------------------


def _installation(payload: Event) -> int:
    inst = payload.installation
    if inst is None or inst.id is None:
        # Only an App's deliveries carry installation.id; without it we cannot get a token.
        raise BadDelivery("payload lacks installation.id (is this hook set on the GitHub App?)")
    return inst.id


def _repository(event: str, payload: Event) -> str:
    name = repository_of(payload)
    if name is None or name.count("/") != 1 or not all(name.split("/")):
        raise BadDelivery(f"{event} payload lacks repository.full_name")
    return name


def _number(event: str, number: int | None) -> int:
    if number is None or number < 1:
        raise BadDelivery(f"{event} payload lacks a PR number")
    return number


def classify(event: str, payload: Event | None, rules: Rules, delivery: str = "") -> Classified:
    """Decide what a delivery asks of the bot: work, a SHA hint, a resync, or nothing.

    `payload` is `decode(event, body)`: None for events that are not handled. Raises
    BadDelivery when a handled delivery lacks what its work needs.
    """
    match payload:
        case PullRequestEvent():
            return _pull_request(payload, rules, delivery)
        case IssueCommentEvent():
            return _issue_comment(payload, delivery)
        case CheckRunEvent() | CheckSuiteEvent():
            return _check(event, payload, rules, delivery)
        case StatusEvent():
            return _status(payload, rules)
        case Event() if event in ("installation", "installation_repositories"):
            return _installation_change(event, payload)
    return Classified(f"event {event} is not handled")


def _pull_request(payload: PullRequestEvent, rules: Rules, delivery: str) -> Classified:
    action = payload.action or ""
    if action not in PR_ACTIONS:
        return Classified(f"pull_request action {action or '(none)'} is not handled", action)
    label_actor = None
    if action in LABEL_ACTIONS:
        name = payload.label.name if payload.label else None
        # Another label changing cannot change whether a preview should exist.
        if not rules.watches_label(name):
            return Classified("a label the bot does not watch changed", action)
        if action == "labeled" and name == rules.trigger_label and payload.sender:
            label_actor = payload.sender.login
    repo = _repository("pull_request", payload)
    number = payload.number
    if number is None and payload.pull_request is not None:
        number = payload.pull_request.number
    key = WorkKey(repo, _number("pull_request", number))
    work = Work(key, _installation(payload), delivery, label_actor)
    return Classified("queued", action, (work,), repo=repo)


def _issue_comment(payload: IssueCommentEvent, delivery: str) -> Classified:
    action = payload.action or ""
    if action != "created":
        # An edit or a deletion must not run a command twice, or one nobody can see posted.
        return Classified(f"issue_comment {action or '(none)'}: only new comments carry commands")
    if payload.issue is None or payload.issue.pull_request is None:
        return Classified("a comment on an issue, not on a pull request", action)
    comment = payload.comment
    user = comment.user if comment else None
    if comment is None or comment.id is None or user is None or not user.login:
        raise BadDelivery("issue_comment payload lacks comment.id or comment.user.login")
    if user.is_bot:
        # Bots (this one included: its comment shows the commands) never give commands.
        return Classified("a comment by a bot", action)
    lines = parse_commands(comment.body or "")
    if not lines:
        return Classified(f"no {COMMAND} command in the comment", action)
    repo = _repository("issue_comment", payload)
    key = WorkKey(repo, _number("issue_comment", payload.issue.number))
    commands = tuple(Command(comment.id, user.login, words) for words in lines)
    work = Work(key, _installation(payload), delivery, commands=commands)
    return Classified("queued", action, (work,), repo=repo)


def _check(
    event: str, payload: CheckRunEvent | CheckSuiteEvent, rules: Rules, delivery: str
) -> Classified:
    action = payload.action or ""
    if action not in CHECK_ACTIONS:
        return Classified(f"{event} {action or '(none)'}: only a completed check matters", action)
    if not rules.required_checks and not rules.image_check:
        return Classified("no required checks are configured", action)
    check = payload.check_run if isinstance(payload, CheckRunEvent) else payload.check_suite
    if check is None:
        raise BadDelivery(f"{event} payload lacks {event}")
    required = bool(rules.required_checks) and (
        not isinstance(payload, CheckRunEvent) or check.name in rules.required_checks
    )
    if not required and not rules.image_check:
        return Classified("not a required check", action)
    repo = _repository(event, payload)
    installation = _installation(payload)
    if not required:  # only the image gate may care: heads waiting for an image
        return Classified(
            "head SHA to resolve (image)",
            action,
            sha_hint=_hint(event, repo, check.head_sha, installation),
            repo=repo,
        )
    # GitHub lists the PRs whose head is this SHA in this repository (none for forks' PRs).
    numbers = dict.fromkeys(_number(event, pr.number) for pr in check.pull_requests or ())
    if numbers:
        works = tuple(Work(WorkKey(repo, n), installation, delivery) for n in numbers)
        return Classified("queued", action, works, repo=repo)
    return Classified(
        "head SHA to resolve",
        action,
        sha_hint=_hint(event, repo, check.head_sha, installation),
        repo=repo,
    )


def _hint(event: str, repo: str, sha: str | None, installation: int) -> ShaHint:
    if sha is None or not SHA_RE.match(sha):
        raise BadDelivery(f"{event} payload lacks a 40-hex head SHA")
    return ShaHint(repo, sha, installation)


def _status(payload: StatusEvent, rules: Rules) -> Classified:
    if payload.state == "pending":
        return Classified("a pending status cannot make a head ready")
    if not rules.image_check:
        if not rules.required_checks:
            return Classified("no required checks are configured")
        if payload.context not in rules.required_checks:
            return Classified("not a required status")
    repo = _repository("status", payload)
    hint = _hint("status", repo, payload.sha, _installation(payload))
    return Classified("head SHA to resolve", sha_hint=hint, repo=repo)


def _installation_change(event: str, payload: Event) -> Classified:
    action = payload.action or ""
    wanted = INSTALLATION_ACTIONS if event == "installation" else INSTALLATION_REPOSITORIES_ACTIONS
    if action not in wanted:
        return Classified(f"{event} {action or '(none)'} changes no repository", action)
    request = ResyncRequest(_installation(payload), f"{event} {action}")
    return Classified("resync requested", action, resync=request)
