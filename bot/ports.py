"""The ports the core needs of the outside world: GitHub, one repository of it, and the cluster.

Production plugs in bot.github and bot.kube, local mode its git repository and files, the
middle test layer in-memory fakes. Ports speak the domain (bot.model), never JSON.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from bot.model import DeploymentStatus, IssueComment, ObservedApp, PullRequest

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

    async def has_kustomization(self, path: str, ref: str) -> bool:
        """Whether directory `path` on `ref` holds a kustomization file."""
        ...

    async def put_file(
        self, path: str, branch: str, content: str, message: str, sha: str | None
    ) -> tuple[str, str]:
        """Create or update a file in one commit: (blob sha, commit sha). Conflict if stale."""
        ...

    async def delete_file(self, path: str, branch: str, message: str, sha: str) -> bool:
        """Delete a file in one commit; False when it was already gone. Conflict if stale."""
        ...

    async def create_deployment(self, sha: str, environment: str, description: str) -> int: ...

    async def set_deployment_status(self, deployment_id: int, status: DeploymentStatus) -> bool:
        """Add a status; False when the deployment no longer exists."""
        ...

    async def active_deployments(self, environment: str) -> list[int]:
        """Deployments of `environment` whose latest status is not inactive (newest first)."""
        ...


class GitHubPort(Protocol):
    """GitHub for any installation of the App."""

    def repo(self, installation_id: int, repo: str) -> RepoPort: ...


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

    async def list_managed(self) -> list[ObservedApp]: ...

    async def request_sync(self, name: str) -> bool:
        """Ask Argo CD to sync the Application now (its `operation`); False when it is gone."""
        ...

    async def watch(self, on_event: OnEvent, alive: OnAlive | None = None) -> None:
        """Call `on_event` for every change of a managed Application, forever; `alive` on
        every sign of life (events, bookmarks, a new list)."""
        ...
