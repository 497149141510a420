"""In-memory state of the GitHub fake: users, installations, repositories and what lives in them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tests.rig.github.gitstore import GitStore


@dataclass
class User:
    """A user, organization or bot account."""

    login: str
    id: int
    type: str = "User"  # "User", "Organization" or "Bot"


@dataclass
class Installation:
    """An installation of the test App on one account."""

    id: int
    account: User
    permissions: dict[str, str]
    repository_selection: str  # "all" or "selected"
    repositories: set[str]  # full names; only used with "selected"
    created_at: datetime
    suspended: bool = False

    def covers(self, full_name: str) -> bool:
        owner = full_name.split("/", 1)[0]
        if owner.lower() != self.account.login.lower():
            return False
        return self.repository_selection == "all" or full_name.lower() in {
            r.lower() for r in self.repositories
        }


@dataclass
class Token:
    """An installation access token."""

    token: str
    installation_id: int
    expires_at: float
    permissions: dict[str, str]
    repositories: frozenset[str] | None  # lower-case full names when narrowed at creation


@dataclass
class RateBucket:
    """A primary rate-limit window (GitHub counts per installation, not per token)."""

    limit: int
    reset: int
    used: int = 0

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used, 0)


@dataclass
class Label:
    id: int
    name: str
    color: str = "ededed"
    description: str | None = None
    default: bool = False


REACTIONS = ("+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes")
CI_APP = "github-actions"  # the App whose check runs the fake's CI helpers make


@dataclass
class Reaction:
    """One user's reaction (+1, -1, laugh, confused, heart, hooray, rocket, eyes) to a comment."""

    id: int
    user: User
    content: str
    created_at: datetime


@dataclass
class Comment:
    id: int
    number: int
    body: str
    user: User
    created_at: datetime
    updated_at: datetime
    via_app: bool = False
    reactions: list[Reaction] = field(default_factory=list)
    # The body before the last edit: what an `edited` webhook's changes.body.from carries.
    previous_body: str | None = None


@dataclass
class IssueEvent:
    """One entry of GET /repos/{o}/{r}/issues/{n}/events, recorded when it happens."""

    id: int
    number: int
    event: str  # labeled, unlabeled, closed, reopened, merged, ready_for_review, ...
    actor: User
    created_at: datetime
    label: Label | None = None  # for labeled / unlabeled (name and color as they were)
    commit_id: str | None = None  # for merged
    via_app: bool = False  # done with an installation token: performed_via_github_app


@dataclass
class Pull:
    """A pull request; `head_sha` follows its branch while it is open (like GitHub)."""

    repo: Repo
    number: int
    id: int
    title: str
    body: str | None
    user: User
    head_ref: str
    head_sha: str
    head_repo: Repo
    base_ref: str
    created_at: datetime
    updated_at: datetime
    state: str = "open"
    draft: bool = False
    merged: bool = False
    locked: bool = False
    labels: list[str] = field(default_factory=list)
    closed_at: datetime | None = None
    merged_at: datetime | None = None
    merged_by: User | None = None
    merge_commit_sha: str | None = None
    head_history: list[str] = field(default_factory=list)
    # The label of the last labeled/unlabeled change: what a webhook for it carries.
    last_label: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)

    @property
    def fork(self) -> bool:
        return self.head_repo is not self.repo


@dataclass
class DeploymentStatus:
    id: int
    state: str
    description: str
    environment: str
    target_url: str
    log_url: str
    environment_url: str
    creator: User
    created_at: datetime
    updated_at: datetime
    via_app: bool = False


@dataclass
class Deployment:
    id: int
    sha: str
    ref: str
    task: str
    payload: Any
    environment: str
    original_environment: str
    description: str | None
    creator: User
    created_at: datetime
    updated_at: datetime
    transient_environment: bool
    production_environment: bool
    via_app: bool = False
    statuses: list[DeploymentStatus] = field(default_factory=list)

    @property
    def latest_state(self) -> str | None:
        return self.statuses[-1].state if self.statuses else None


@dataclass
class CheckRun:
    id: int
    head_sha: str
    name: str
    status: str
    conclusion: str | None
    started_at: datetime | None
    completed_at: datetime | None
    details_url: str | None
    external_id: str | None
    output: dict[str, Any]
    check_suite_id: int
    created_at: datetime
    app: str | None = None  # the slug of the App that made it; None: the test App itself


@dataclass
class CommitStatus:
    id: int
    sha: str
    state: str
    target_url: str | None
    description: str | None
    context: str
    creator: User
    created_at: datetime
    updated_at: datetime


@dataclass
class Repo:
    """A repository; `git` is None for metadata-only forks (their commits live in the base)."""

    id: int
    owner: User
    name: str
    default_branch: str
    private: bool
    git: GitStore | None
    created_at: datetime
    updated_at: datetime
    pushed_at: datetime
    description: str | None = None
    parent: Repo | None = None
    labels: dict[str, Label] = field(default_factory=dict)
    pulls: dict[int, Pull] = field(default_factory=dict)
    comments: dict[int, Comment] = field(default_factory=dict)
    deployments: dict[int, Deployment] = field(default_factory=dict)
    check_runs: dict[int, CheckRun] = field(default_factory=dict)
    statuses: list[CommitStatus] = field(default_factory=list)
    collaborators: dict[str, str] = field(default_factory=dict)
    next_number: int = 1
    issue_events: list[IssueEvent] = field(default_factory=list)

    @property
    def full_name(self) -> str:
        return f"{self.owner.login}/{self.name}"

    @property
    def fork(self) -> bool:
        return self.parent is not None

    @property
    def store(self) -> GitStore:
        if self.git is None:
            raise LookupError(f"{self.full_name} is a fork without its own git store")
        return self.git


@dataclass
class Recorded:
    """One request the fake answered."""

    method: str
    path: str  # canonical /repos/{owner}/{repo}/... path, decoded
    status: int
    installation: int | None
    route: str | None  # the OpenAPI path template, None when the fake has no such route
    query: str
    raw_path: str
    token_request: bool
    # None when served; else the fault that answered instead: fail_next, fail_after_apply,
    # cut_next or cut_after_apply (a cut has status 0: the client got no answer at all), or
    # fail_randomly / fail_randomly_after_apply (FakeGitHub.fail_randomly's 5xx).
    injected: str | None
    duration: float
    at: float  # when it was answered, by the fake's clock
    arrived: float = 0.0  # when it came in, by the fake's clock
    # When the answer announced a rate-limit window, GitHub wants no request before this:
    # remaining 0 holds the installation until x-ratelimit-reset ("installation"); a 403/429
    # with retry-after (a secondary limit) holds the whole App for retry-after ("app").
    pause_until: float | None = None
    pause_scope: str | None = None


@dataclass
class Fault:
    """A canned answer for the next `count` matching requests."""

    method: str | None
    pattern: re.Pattern[str]
    status: int
    count: int
    headers: dict[str, str]
    body: Any
    # fail_next: answered instead of served; fail_after_apply: served, then answered with
    # `status`; cut_next / cut_after_apply: the connection is closed before / after serving.
    kind: str = "fail_next"


@dataclass(frozen=True)
class RandomFaults:
    """GitHub having a bad day: a share of the requests answered with a 5xx (see
    FakeGitHub.fail_randomly)."""

    rate: float
    seed: int
    statuses: tuple[int, ...]
    after_apply: float  # of the failed writes, the share GitHub applied before failing
    method: str | None
    pattern: re.Pattern[str]


@dataclass
class Delay:
    method: str | None
    pattern: re.Pattern[str]
    seconds: float
    count: int
