"""The ports the core needs of the outside world: GitHub, one repository of it, and the cluster.

Production plugs in bot.github and bot.kube, local mode its git repository and files, the
middle test layer in-memory fakes. Ports speak the domain (bot.model), never JSON.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bot.model import (
    CheckReport,
    DeploymentStatus,
    IssueComment,
    LabelEvent,
    ListedDeployment,
    ObservedApp,
    PullRequest,
)

# A watch event: ("ADDED" | "MODIFIED" | "DELETED" | "SYNCED" (from the initial list), app).
OnEvent = Callable[[str, ObservedApp], Awaitable[None]]
# Called whenever a watch shows it is alive (an event, a bookmark, a fresh list), so a
# supervisor can restart a watch that stalled.
OnAlive = Callable[[], None]


class RepoPort(Protocol):
    """One repository, as one installation of the App sees it: what a sync needs of GitHub."""

    async def get_pull(self, number: int) -> PullRequest: ...

    def comments(self, number: int) -> AsyncIterator[IssueComment]:
        """The PR's comments, oldest first, page by page (stop early to save requests)."""
        ...

    async def create_comment(self, number: int, body: str) -> int: ...

    async def edit_comment(self, comment_id: int, body: str) -> bool:
        """Edit a comment; False when it no longer exists."""
        ...

    async def get_file_sha(self, path: str, ref: str) -> str | None: ...

    async def put_file(
        self, path: str, branch: str, content: str, message: str, sha: str | None
    ) -> tuple[str, str]:
        """Create or update a file in one commit: (blob sha, commit sha). Conflict if stale."""
        ...

    async def delete_file(self, path: str, branch: str, message: str, sha: str) -> bool:
        """Delete a file in one commit; False when it was already gone. Conflict if stale."""
        ...

    async def create_deployment(self, sha: str, environment: str, description: str) -> int:
        """A deployment carrying the bot's payload marker (PR, SHA, environment)."""
        ...

    async def find_deployment(self, sha: str, environment: str) -> int | None:
        """The bot's deployment of `sha` to `environment`, found by its payload marker (an
        earlier attempt may have created it and lost the answer)."""
        ...

    async def set_deployment_status(self, deployment_id: int, status: DeploymentStatus) -> bool:
        """Add a status; False when the deployment no longer exists."""
        ...

    async def active_deployments(self, environment: str) -> list[int]:
        """Deployments of `environment` whose latest status is not inactive (newest first)."""
        ...

    async def recent_deployments(self) -> list[ListedDeployment]:
        """The repository's newest deployments, every environment, newest first: one page of
        up to 100 (a conditional read: an unchanged list is free)."""
        ...

    async def permission(self, user: str) -> str:
        """The user's permission on the repository: admin, write, read or none."""
        ...

    async def label_event(self, number: int, label: str) -> LabelEvent | None:
        """Who added `label` to the PR last, and when (None when it was never added)."""
        ...

    async def set_label(self, number: int, label: str, present: bool) -> None: ...

    async def add_reaction(self, comment_id: int, content: str) -> None: ...

    async def check_states(self, sha: str) -> dict[str, tuple[str, str | None]]:
        """Check runs and commit statuses of a commit by name: (success | pending | failure,
        a link)."""
        ...

    async def report_check(self, report: CheckReport) -> int:
        """Create the `preview` check run (report.check_run_id None) or update it; its id."""
        ...

    async def find_check(self, sha: str, name: str) -> int | None:
        """The bot's check run `name` on `sha`, if an earlier attempt created it."""
        ...

    async def list_files(self, path: str, ref: str) -> list[str] | None:
        """Every file under directory `path` on `ref` (paths from the repository root); None
        when `path` is not there."""
        ...

    async def open_pulls(self) -> list[PullRequest]:
        """The repository's open PRs (a conditional read: an unchanged list is free)."""
        ...

    async def delete_files(self, paths: list[str], branch: str, message: str) -> str | None:
        """Delete files in one commit (its sha), None when none of them existed."""
        ...

    async def branch_head(self, branch: str) -> str | None:
        """The commit `branch` points at; None when there is no such branch."""
        ...


@dataclass(frozen=True)
class RepoInfo:
    """A repository an installation covers."""

    full_name: str
    installation_id: int
    default_branch: str


class GitHubPort(Protocol):
    """GitHub for any installation of the App."""

    def repo(self, installation_id: int, repo: str) -> RepoPort: ...

    async def installations(self) -> list[int]:
        """The App's installations (their ids)."""
        ...

    async def installation_repos(self, installation_id: int) -> list[RepoInfo]:
        """Every repository the installation covers."""
        ...

    async def bot_login(self) -> str | None:
        """The App's bot user (`<slug>[bot]`), read once; None when unknown."""
        ...

    def rate_remaining(self, installation_id: int) -> float | None:
        """The fraction of the installation's hourly requests left, when known."""
        ...


class ImagePort(Protocol):
    """An image registry: does image:tag exist?"""

    async def manifest_exists(self, image: str, tag: str) -> bool: ...


class ClusterPort(Protocol):
    """Argo CD Applications in one namespace (bot.kube.ArgoCD, or local mode's files)."""

    async def get(self, name: str) -> ObservedApp | None: ...

    async def apply(self, manifest: dict[str, Any]) -> None:
        """Create or update the Application in one write."""
        ...

    async def annotate(self, name: str, annotations: dict[str, str]) -> bool:
        """Merge annotations into the Application; False when it is gone."""
        ...

    async def delete(self, name: str) -> bool:
        """Delete the Application; True when it is gone, False while its finalizer holds it."""
        ...

    async def release(self, name: str) -> bool:
        """Remove the bot's finalizer from the Application (then a pending deletion ends);
        True when this call took it off, False when there was nothing to take off (the
        Application is gone, or no longer carries it: released already, by another replica or
        an attempt whose answer was lost)."""
        ...

    async def list_managed(self) -> list[ObservedApp]: ...

    async def request_sync(self, name: str) -> bool:
        """Ask Argo CD to sync the Application now (its `operation`); False when it is gone."""
        ...

    async def watch(self, on_event: OnEvent, alive: OnAlive | None = None) -> None:
        """Call `on_event` for every change of a managed Application, forever; `alive` on
        every sign of life (events, bookmarks, a new list)."""
        ...
