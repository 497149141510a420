"""Plain data of a sync: what was observed, and the actions that converge on what should be."""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

SHA_RE = re.compile(r"^[0-9a-f]{40}$")

MANAGED_BY = "app.kubernetes.io/managed-by"
BOT = "preview-bot"
FINALIZER = "resources-finalizer.argocd.argoproj.io"

# Annotations on the Application: where the bot keeps what it last wrote, so a redeploy or a
# teardown needs no read of GitHub to find its comment, overlay blob or deployment.
A_REPO = "preview-bot.io/repo"
A_PR = "preview-bot.io/pr"
A_PR_URL = "preview-bot.io/pr-url"
A_HEAD_SHA = "preview-bot.io/head-sha"
A_INSTALLATION = "preview-bot.io/installation"
A_COMMENT = "preview-bot.io/comment-id"
A_OVERLAY_BLOB = "preview-bot.io/overlay-blob"
A_OVERLAY_COMMIT = "preview-bot.io/overlay-commit"
A_DEPLOYMENT = "preview-bot.io/deployment-id"
A_DEPLOYED_SHA = "preview-bot.io/deployed-sha"
A_COMMENT_STATE = "preview-bot.io/comment-state"
A_COMMENT_FP = "preview-bot.io/comment-fingerprint"
L_PR = "preview-bot.io/pr"
L_REPO = "preview-bot.io/repo"


class State(enum.Enum):
    """The preview's state as the comment shows it."""

    DEPLOYING = "deploying"
    READY = "ready"
    FAILED = "failed"
    TEARDOWN_PENDING = "teardown pending"
    DESTROYED = "destroyed"
    NOT_DEPLOYED = "not deployed"  # refused: fork PR, bad input, a name taken by another owner


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


@dataclass(frozen=True)
class ObservedApp:
    """An Application found in the cluster under the PR's name."""

    name: str
    managed: bool  # carries app.kubernetes.io/managed-by=preview-bot
    terminating: bool  # has a deletionTimestamp
    annotations: dict[str, str] = field(default_factory=dict)
    status: AppStatus = AppStatus()

    @property
    def repo(self) -> str | None:
        return self.annotations.get(A_REPO)


@dataclass(frozen=True)
class ObservedComment:
    """The bot's comment on the PR: its id, the state it shows and that state's fingerprint."""

    id: int
    state: str | None
    fingerprint: str | None


@dataclass(frozen=True)
class Observed:
    """Everything a plan needs, read at the start of one sync."""

    pr: PullRequest
    installation_id: int
    app: ObservedApp | None
    comment: ObservedComment | None
    # The blob sha of the overlay in git as far as we know it (None: no file); `overlay_known`
    # False means we did not read it (the plan then writes and lets a conflict tell us).
    overlay_blob: str | None
    overlay_known: bool
    base_ok: bool | None  # does the base overlay exist on the branch? None: not checked
    branch: str  # the branch overlays are committed to and Argo CD reads
    deployment_id: int | None  # the deployment of `deployed_sha`, when known
    deployed_sha: str | None
    deployments_done: bool = False  # a teardown already marked the deployments inactive


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
class ApplyApplication:
    manifest: dict[str, Any]


@dataclass(frozen=True)
class DeleteApplication:
    name: str


@dataclass(frozen=True)
class CreateDeployment:
    """A deployment of `sha` to `environment`, then an in_progress status with its URL."""

    sha: str
    environment: str
    environment_url: str
    log_url: str | None
    description: str


@dataclass(frozen=True)
class SetDeploymentStatus:
    """A status on a deployment; deployment_id None means the one created in this sync."""

    deployment_id: int | None
    state: str  # in_progress | success | failure | inactive | error
    environment_url: str | None
    log_url: str | None
    description: str


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
    """Write what this sync produced (ids, blob, states) into the Application's annotations."""

    name: str
    values: dict[str, str]


Action = (
    PutOverlay
    | DeleteOverlay
    | ApplyApplication
    | DeleteApplication
    | CreateDeployment
    | SetDeploymentStatus
    | DeactivateDeployments
    | UpsertComment
    | Requeue
    | RecordState
)


@dataclass(frozen=True)
class Plan:
    """The actions of one sync, in order, and the state the preview will be in."""

    state: State
    actions: tuple[Action, ...]
    reason: str


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
