"""Plain data of a sync: the PR, what the bot recorded, what it observed, and the actions."""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar, Union

import msgspec

SHA_RE = re.compile(r"^[0-9a-f]{40}$")

MANAGED_BY = "app.kubernetes.io/managed-by"
BOT = "preview-bot"
# Argo CD's cascade-delete finalizer: deleting the Application prunes what it deployed first.
FINALIZER = "resources-finalizer.argocd.argoproj.io"
# The bot's own finalizer, after Argo CD's: once Argo CD has pruned, the Application stays
# (terminating) until the bot has written the PR's last comment and released it, so a teardown
# always ends on GitHub too, even when the bot was down when Argo CD finished.
TEARDOWN_FINALIZER = "preview-bot.io/teardown"

# Annotations the bot applies with the Application: whose preview it is.
A_REPO = "preview-bot.io/repo"
A_PR = "preview-bot.io/pr"
A_PR_URL = "preview-bot.io/pr-url"
A_HEAD_SHA = "preview-bot.io/head-sha"
A_INSTALLATION = "preview-bot.io/installation"
# Annotations the bot merges in after each sync: its Record (see below).
# (Each Record field `x_y` is preview-bot.io/x-y; these are the ones tests and docs name.)
A_COMMENT = "preview-bot.io/comment-id"
A_COMMENT_STATE = "preview-bot.io/comment-state"
A_COMMENT_FP = "preview-bot.io/comment-fingerprint"
A_OVERLAY_BLOB = "preview-bot.io/overlay-blob"
A_OVERLAY_COMMIT = "preview-bot.io/overlay-commit"
A_DEPLOYMENT = "preview-bot.io/deployment-id"
A_DEPLOYED_SHA = "preview-bot.io/deployed-sha"
L_PR = "preview-bot.io/pr"
L_REPO = "preview-bot.io/repo"


# WorkKey, Command and Work are made for every delivery: frozen msgspec Structs, built in C,
# cost a seventh of a frozen dataclass (whose __init__ sets each field through
# object.__setattr__) and behave alike (immutable, compared and hashed by field).


class WorkKey(msgspec.Struct, frozen=True):
    """One PR of one repository: the unit of work. Deliveries for the same key coalesce.

    Equal whatever the case of the name, as GitHub's names are: the watch keys a PR by its
    Application's annotation, which may spell the repository as it was before a rename of
    case, and one PR must never be two keys (two syncs of it at once).
    """

    repo: str  # owner/name, as GitHub spells it
    number: int

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, WorkKey)
            and self.number == other.number
            # Spelled alike is the common case: no lower() then (every delivery asks).
            and (self.repo == other.repo or self.repo.lower() == other.repo.lower())
        )

    def __hash__(self) -> int:
        return hash((self.repo.lower(), self.number))

    def __str__(self) -> str:
        return f"{self.repo}#{self.number}"


# Most commands a key carries while it waits: a burst of comments cannot grow it without bound.
MAX_COMMANDS = 20


class Command(msgspec.Struct, frozen=True):
    """A `/preview ...` line from a newly created PR comment, as the delivery gave it.

    Commands are the one edge-triggered input: each is acted on once, acknowledged with a
    reaction on its comment (which also makes a repeat after a retry harmless).
    """

    comment_id: int
    author: str  # the commenter's login
    words: tuple[str, ...]  # after "/preview": () for a bare /preview, ("approve",), ...


class Work(msgspec.Struct, frozen=True):
    """A key plus what the worker needs to reach GitHub for it, and hints from deliveries.

    Hints are facts a delivery carried that the API would charge a request for: who added the
    trigger label (the `labeled` sender), and commands. Everything else is read afresh.
    """

    key: WorkKey
    installation_id: int
    delivery: str = ""
    label_actor: str | None = None  # the sender of a `labeled` delivery of the trigger label
    commands: tuple[Command, ...] = ()

    def merged(self, newer: Work) -> Work:
        """What a waiting key holds once `newer` arrives for it: the newest delivery's ids, the
        newest label actor, and every command (oldest first, at most MAX_COMMANDS)."""
        commands = self.commands
        if newer.commands:  # most deliveries carry none: no new tuple then
            commands = (commands + newer.commands)[-MAX_COMMANDS:]
        return Work(
            self.key,
            newer.installation_id,
            newer.delivery,
            newer.label_actor or self.label_actor,
            commands,
        )


class State(enum.Enum):
    """The preview's state as the comment shows it."""

    DEPLOYING = "deploying"
    READY = "ready"
    FAILED = "failed"
    TEARDOWN_PENDING = "teardown pending"
    DESTROYED = "destroyed"
    NOT_DEPLOYED = "not deployed"  # refused: fork PR, bad input, a name taken by another owner
    WAITING = "waiting"  # for a build, an image, an approval, ready for review
    QUEUED = "queued"  # the repository's cap of previews is reached


class Unknown(enum.Enum):
    """A value the bot does not know: never recorded, or the record was lost."""

    UNKNOWN = "unknown"


UNKNOWN = Unknown.UNKNOWN
T = TypeVar("T")
# A recorded value: UNKNOWN (not recorded), None (known: there is none), or the value.
Known = Union[T, None, Unknown]  # noqa: UP007  (a generic alias needs Union before 3.12)


def known_value(value: Known[T]) -> T | None:
    """The value, or None when there is none or it is not known."""
    return None if isinstance(value, Unknown) else value


def _int_or_unknown(text: str) -> int | Unknown:
    return int(text) if text.isdigit() else UNKNOWN


def _bool_or_unknown(text: str) -> bool | Unknown:
    return {"true": True, "false": False}.get(text, UNKNOWN)


def record_annotation(name: str) -> str:
    """The annotation that holds Record field `name`: preview-bot.io/<name with dashes>."""
    return "preview-bot.io/" + name.replace("_", "-")


# How a non-empty annotation value becomes a field's value (text fields stay text).
_DECODERS: dict[str, Any] = {
    "comment_id": _int_or_unknown,
    "deployment_id": _int_or_unknown,
    "check_run_id": _int_or_unknown,
    "activity_at": _int_or_unknown,
    "expired_at": _int_or_unknown,
    "seen_at": _int_or_unknown,
    "deployed_at": _int_or_unknown,
    "ready_seconds": _int_or_unknown,
    "keep": _bool_or_unknown,
    "kept_by_label": _bool_or_unknown,
}


@dataclass(frozen=True)
class Record:
    """What the bot last wrote for a PR, kept in its Application's annotations.

    Lets a redeploy or a teardown find its comment, overlay blob and deployment without reading
    GitHub. Each field is UNKNOWN (never recorded, or lost: read it from GitHub, or write
    blindly and let a conflict tell), None (known: there is none) or the value. In annotations,
    an absent key is UNKNOWN and an empty string is None. Before a PR has an Application (it
    waits, is queued or refused) the same record rides in the comment's hidden marker. Times
    are epoch seconds.
    """

    comment_id: Known[int] = UNKNOWN
    comment_state: Known[str] = UNKNOWN
    comment_fingerprint: Known[str] = UNKNOWN
    overlay_blob: Known[str] = UNKNOWN  # the git blob sha of the overlay file; None: no file
    overlay_commit: Known[str] = UNKNOWN  # the commit that last wrote the overlay
    deployment_id: Known[int] = UNKNOWN  # the deployment of deployed_sha; None: all inactive
    deployed_sha: Known[str] = UNKNOWN
    deployment_state: Known[str] = UNKNOWN  # the last status posted on deployment_id
    approver: Known[str] = UNKNOWN  # the writer whose label or /preview allowed the preview
    approved_sha: Known[str] = UNKNOWN  # a fork PR's head commit a writer approved
    activity_at: Known[int] = UNKNOWN  # the last push, label or command (the TTL's clock)
    keep: Known[bool] = UNKNOWN  # `/preview keep`: exempt from the TTL
    # When the TTL tore the preview down. The bot removes the label itself then, so the syncs
    # that finish the teardown still say expiry, not "the label was removed".
    expired_at: Known[int] = UNKNOWN
    kept_by_label: Known[bool] = UNKNOWN  # the last sync saw the keep label (None: it did not)
    seen_at: Known[int] = UNKNOWN  # when the bot first saw seen_sha wanted (time to ready)
    deployed_at: Known[int] = UNKNOWN  # when that head was deployed (the ready timeout's clock)
    ready_seconds: Known[int] = UNKNOWN  # time to ready of deployed_sha
    check_run_id: Known[int] = UNKNOWN  # the `preview` check run of check_run_sha
    check_run_sha: Known[str] = UNKNOWN
    check_run_state: Known[str] = UNKNOWN  # the State it last reported
    intent: Known[str] = UNKNOWN  # a create in flight ("deployment:<sha>"): find it on retry
    failure_sha: Known[str] = UNKNOWN  # the head a permanent failure was reported for
    seen_sha: Known[str] = UNKNOWN  # the head seen_at is about
    history: Known[str] = UNKNOWN  # the last state changes, JSON [[time, state, sha8], ...]

    @classmethod
    def from_annotations(cls, annotations: Mapping[str, str]) -> Record:
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = annotations.get(record_annotation(f.name))
            if raw is not None:
                values[f.name] = _DECODERS.get(f.name, str)(raw) if raw else None
        return cls(**values)

    def to_annotations(self) -> dict[str, str]:
        """The known fields as annotations; unknown ones are left out, so a merge keeps them."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is UNKNOWN:
                continue
            if isinstance(value, bool):
                out[record_annotation(f.name)] = "true" if value else "false"
            else:
                out[record_annotation(f.name)] = "" if value is None else str(value)
        return out

    @property
    def comment(self) -> ObservedComment | None:
        """The bot's comment as recorded, when its id is known."""
        if not isinstance(self.comment_id, int):
            return None
        return ObservedComment(
            self.comment_id, known_value(self.comment_state), known_value(self.comment_fingerprint)
        )

    def updated_by(self, produced: Record) -> Record:
        """The one merge rule: a field produced while executing (known in `produced`) replaces
        the planned value; the plan's value stands where execution produced nothing."""
        changes = {
            f.name: getattr(produced, f.name)
            for f in fields(produced)
            if getattr(produced, f.name) is not UNKNOWN
        }
        return replace(self, **changes)


@dataclass(frozen=True)
class PullRequest:
    """A PR as GitHub has it now (read from the API, never from the delivery's payload)."""

    repo: str  # owner/name of the base repository
    number: int
    state: str  # open | closed
    merged: bool
    labels: frozenset[str]
    head_sha: str
    head_repo: str | None  # owner/name of the head repository; None when the fork is gone
    default_branch: str
    html_url: str
    repo_html_url: str
    draft: bool = False
    # GitHub's count of the PR's issue comments; 0 spares listing them to find ours.
    # None when unknown (local mode's payload-made PRs).
    comment_count: int | None = None

    @property
    def is_fork(self) -> bool:
        return self.head_repo != self.repo


@dataclass(frozen=True)
class AppStatus:
    """What Argo CD says about an Application (its .status)."""

    sync: str | None = None  # Synced | OutOfSync | Unknown
    health: str | None = None  # Healthy | Progressing | Degraded | Missing | Suspended | Unknown
    revision: str | None = None
    operation_phase: str | None = None  # Running | Succeeded | Failed | Error | Terminating
    message: str | None = None

    @property
    def verdict(self) -> tuple[str | None, str | None, str | None, str | None]:
        """What Argo CD concluded (sync, health, operation phase) and about which revision: a
        change of it is news (the same Healthy about the newly pinned revision means ready)."""
        return self.sync, self.health, self.operation_phase, self.revision


@dataclass(frozen=True)
class ObservedApp:
    """An Application as the cluster has it, with what the bot wrote on it."""

    name: str
    managed: bool  # carries app.kubernetes.io/managed-by=preview-bot
    terminating: bool  # has a deletionTimestamp
    repo: str | None = None  # the PR's repository (annotation), None when absent
    number: int | None = None  # the PR's number (annotation)
    installation_id: int | None = None  # the installation that deployed it (annotation)
    head_sha: str | None = None  # the head SHA the last apply deployed (annotation)
    record: Record = Record()
    status: AppStatus = AppStatus()
    held: bool = False  # carries the bot's finalizer (TEARDOWN_FINALIZER)
    pruned: bool = False  # Argo CD's resources finalizer (any variant) is not (or no more) on it

    @property
    def releasable(self) -> bool:
        """Being deleted, Argo CD done pruning, and the bot's finalizer still on it: the bot
        finishes the teardown on GitHub, then releases it (ReleaseApplication)."""
        return self.terminating and self.pruned and self.held

    def owned_by(self, repo: str) -> bool:
        """The ownership rule: the bot's label and this repository's annotation, both.

        Two repositories with the same name template would otherwise fight over dex-pr-42, and
        a labelled Application without the annotation is someone else's (the label alone is
        easy to copy). GitHub's names are case-insensitive.
        """
        return self.managed and self.repo is not None and self.repo.lower() == repo.lower()

    def work(self, delivery: str) -> Work | None:
        """The PR this Application belongs to, when the bot's annotations say it in full."""
        if not self.managed or self.repo is None or "/" not in self.repo:
            return None
        if self.number is None or self.installation_id is None:
            return None
        return Work(WorkKey(self.repo, self.number), self.installation_id, delivery)


@dataclass(frozen=True)
class IssueComment:
    """A comment on the PR as GitHub has it: who wrote it, and what it says."""

    id: int
    author: str  # the user's login; `<app-slug>[bot]` for an App
    app_id: int | None  # performed_via_github_app.id, when an App wrote it
    body: str


@dataclass(frozen=True)
class ObservedComment:
    """The bot's comment on the PR: its id, the state it shows and that state's fingerprint."""

    id: int
    state: str | None
    fingerprint: str | None
    record: Record | None = None  # the record its hidden marker carries (before an Application)


@dataclass(frozen=True)
class LabelEvent:
    """Who added a label to a PR, and when (epoch seconds)."""

    actor: str
    at: int


@dataclass(frozen=True)
class CheckReport:
    """The `preview` check run as the bot reports it: queued, in progress or completed."""

    sha: str
    status: str  # queued | in_progress | completed
    conclusion: str | None  # success | failure | neutral (completed only)
    title: str
    summary: str
    details_url: str | None = None
    check_run_id: int | None = None  # update this one; None: create


@dataclass(frozen=True)
class LabelSeen:
    """Who last added the trigger label, when, and whether they may write to the repository."""

    actor: str
    at: int | None  # epoch seconds; None when only the delivery told us (it is now)
    writer: bool


@dataclass(frozen=True)
class CommandSeen:
    """A command with what the sync learned of its author."""

    command: Command
    writer: bool  # the author has write, maintain or admin permission


@dataclass(frozen=True)
class ChecksSeen:
    """The required checks on a commit: success when all succeeded, failure when one failed."""

    state: str  # success | pending | failure
    name: str  # the check that decides the state (the first pending or failed one)
    url: str | None = None


@dataclass(frozen=True)
class CapSeen:
    """The repository's cap on running previews, as this PR meets it."""

    in_use: int
    limit: int
    position: int  # 1-based place in the queue, by label time


@dataclass(frozen=True)
class Observed:
    """Everything a plan needs, read at the start of one sync."""

    pr: PullRequest
    installation_id: int
    app: ObservedApp | None
    record: Record  # the Application's record, else the last one this process saw
    comment: ObservedComment | None  # from the record, or found on GitHub
    base_ok: bool | None  # does the base overlay exist on the branch? None: not checked
    branch: str  # the branch overlays are committed to and Argo CD reads
    namespace_ok: bool | None = None  # is the shared Namespace component there? None: unknown
    label: LabelSeen | None = None  # read only when the record holds no approval
    commands: tuple[CommandSeen, ...] = ()  # from the delivery, with their authors' rights
    checks: ChecksSeen | None = None  # read only when required checks gate the deploy
    image: bool | None = None  # does the image exist? read only with the image check
    cap: CapSeen | None = None  # read only when a cap applies and no preview runs


# ---- actions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PutOverlay:
    path: str
    content: str
    blob_sha: str
    previous_blob: str | None
    branch: str
    message: str


@dataclass(frozen=True)
class DeleteOverlay:
    path: str
    previous_blob: str | None
    branch: str
    message: str


@dataclass(frozen=True)
class PutSharedFile:
    """A file every preview of the repository shares (the Namespace component): created once,
    left alone when it exists."""

    path: str
    content: str
    branch: str
    message: str


@dataclass(frozen=True)
class ApplyApplication:
    """Server-side apply the Application; its source is pinned to the commit that wrote the
    overlay (this sync's, else the recorded one), so Argo CD's synced revision says exactly
    which overlay it runs."""

    manifest: dict[str, Any]


@dataclass(frozen=True)
class RequestSync:
    """Ask Argo CD to sync the Application now (`/preview redeploy`)."""

    name: str


@dataclass(frozen=True)
class SetLabel:
    """Add or remove a label on the PR (`/preview` adds the trigger label; expiry removes it)."""

    name: str
    present: bool


@dataclass(frozen=True)
class AddReaction:
    """Acknowledge a command: eyes when taken, +1 when done, confused when refused."""

    comment_id: int
    content: str


@dataclass(frozen=True)
class ReportCheck:
    """Create or update the `preview` check run of `sha` (closing the previous head's one as
    neutral when the head moved)."""

    sha: str
    state: State
    title: str
    summary: str
    details_url: str | None


@dataclass(frozen=True)
class DeleteApplication:
    name: str


@dataclass(frozen=True)
class ReleaseApplication:
    """Remove the bot's finalizer from a terminating Application Argo CD has pruned, so it
    goes. Always the plan's last action: after it the Application and its record are gone."""

    name: str


@dataclass(frozen=True)
class CreateDeployment:
    """A deployment of `sha` to `environment`, then an in_progress status with its URL.

    With `recover`, an earlier attempt may have created it (its response lost): look for ours
    by its payload marker first.
    """

    sha: str
    environment: str
    environment_url: str
    log_url: str | None
    description: str
    recover: bool = False


@dataclass(frozen=True)
class DeploymentStatus:
    """A status of a GitHub deployment, as the bot posts it."""

    state: str  # in_progress | success | failure | inactive | error
    description: str
    environment_url: str | None = None
    log_url: str | None = None


@dataclass(frozen=True)
class ListedDeployment:
    """A deployment as the repository's list shows it: enough to tell a preview's own from a
    stray (no statuses: reading those costs a request per deployment)."""

    id: int
    sha: str
    environment: str
    marked: bool  # carries the bot's payload marker: the bot made it


@dataclass(frozen=True)
class SetDeploymentStatus:
    """A status on a deployment; deployment_id None means the one created in this sync."""

    deployment_id: int | None
    state: str  # in_progress | success | failure | inactive | error
    environment_url: str | None
    log_url: str | None
    description: str

    @property
    def status(self) -> DeploymentStatus:
        return DeploymentStatus(self.state, self.description, self.environment_url, self.log_url)


@dataclass(frozen=True)
class DeactivateDeployments:
    """Mark the environment's deployments inactive; unknown ids are looked up (a fallback)."""

    environment: str
    known_id: int | None


@dataclass(frozen=True)
class CommentText:
    body: str
    state: State
    fingerprint: str


@dataclass(frozen=True)
class UpsertComment:
    """Create or edit the one comment (create when the id is unknown or the comment is gone)."""

    comment_id: int | None
    text: CommentText


@dataclass(frozen=True)
class Requeue:
    """Sync this PR again after `seconds`, unless an event does it sooner."""

    seconds: float


@dataclass(frozen=True)
class RecordState:
    """Write the PR's record into its Application, merged with what this sync produced."""

    name: str
    record: Record


Action = (
    PutOverlay
    | PutSharedFile
    | RequestSync
    | SetLabel
    | AddReaction
    | ReportCheck
    | DeleteOverlay
    | ApplyApplication
    | DeleteApplication
    | CreateDeployment
    | SetDeploymentStatus
    | DeactivateDeployments
    | UpsertComment
    | Requeue
    | RecordState
    | ReleaseApplication
)


@dataclass(frozen=True)
class Plan:
    """The actions of one sync, in order, and the state the preview will be in."""

    state: State
    actions: tuple[Action, ...]
    reason: str


def released_finalizers(metadata: Mapping[str, Any]) -> list[str] | None:
    """The finalizers an Application object keeps once the bot releases it (every one but
    TEARDOWN_FINALIZER, in order), or None when it carries none of the bot's: nothing to
    release. The one rule every ClusterPort's `release` writes."""
    finalizers = list(metadata.get("finalizers") or [])
    if TEARDOWN_FINALIZER not in finalizers:
        return None
    return [f for f in finalizers if f != TEARDOWN_FINALIZER]


def git_blob_sha(content: str) -> str:
    """The git blob sha of `content`: lets us know what GitHub stores without asking it."""
    data = content.encode()
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def label_safe(value: str) -> str:
    """A Kubernetes label value naming `value`: [A-Za-z0-9._-], <= 63 chars, alnum at the ends.

    `owner/name` becomes `owner_name` (GitHub owners cannot contain `_`, so it stays readable and
    unambiguous); long values are cut and suffixed with a hash so they stay distinct.
    """
    text = re.sub(r"[^A-Za-z0-9._-]", "_", value)
    if len(text) > 63:
        digest = hashlib.sha256(value.encode()).hexdigest()[:10]
        text = f"{text[:52]}-{digest}"
    return text.strip("._-") or "x"
