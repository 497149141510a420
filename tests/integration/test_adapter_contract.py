"""One contract for the adapters' ports, run on local mode's adapters and on the real ones.

Each test runs twice: against local mode's stand-in (bot.local: git repository, files) and
against the production adapter on the rig (bot.github.GitHub on the GitHub fake over HTTP,
bot.kube.ArgoCD on the test API server), so local mode cannot drift from production.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
import yaml

from bot.config import Settings
from bot.errors import Conflict, PermanentError
from bot.github import GitHub
from bot.kube import ArgoCD
from bot.local.cluster import FileCluster
from bot.local.github import LocalGitHub
from bot.local.layout import Layout
from bot.local.repo import LocalRepo, skeleton_infra
from bot.model import (
    A_COMMENT,
    FINALIZER,
    SHA_RE,
    DeploymentStatus,
    ListedDeployment,
    ObservedApp,
    PullRequest,
    git_blob_sha,
)
from bot.ports import ClusterPort, GitHubPort, OnEvent, RepoPort
from bot.render import render_application
from tests.rig.kube import KubeRig

OWNER, NAME = "data-literate", "dex"
REPO = f"{OWNER}/{NAME}"
BRANCH = "main"
OVERLAY = "infra/argocd/previews/pr-7/kustomization.yaml"
BASE_DIR = "infra/argocd/overlays/preview"
SETTINGS = Settings(github_app_id=1, github_private_key="unused", github_webhook_secret="s")


# ---- GitHubPort ------------------------------------------------------------------------------


@dataclass
class GitSide:
    """A GitHubPort on a repository holding the infra tree, and a peek into that repository."""

    github: GitHubPort
    installation: int
    read: Callable[[str], str | None]  # the file's text on BRANCH, read behind the port's back
    other_actor_commits: Callable[[dict[str, str]], None]  # someone else commits to BRANCH

    @property
    def port(self) -> RepoPort:
        """The repository, through the installation: what a sync talks to."""
        return self.github.repo(self.installation, REPO)


class GitBackend(Protocol):
    def open(self) -> contextlib.AbstractAsyncContextManager[GitSide]: ...


class LocalGitBackend:
    """Local mode: LocalGitHub on a fresh repository made like `serve --local` makes it."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[GitSide]:
        repo = LocalRepo.create(self.tmp / "repo", skeleton_infra())
        port = LocalGitHub(Layout(self.tmp), repo, REPO, SETTINGS)

        def read(path: str) -> str | None:
            data = repo.read(str(repo.branch_sha(BRANCH)), path)
            return None if data is None else data.decode()

        def other(files: dict[str, str]) -> None:
            head = str(repo.branch_sha(BRANCH))
            commit = repo.make_commit(
                head,
                {p: t.encode() for p, t in files.items()},
                "Change by someone else",
                ("octocat", "o@example.com"),
            )
            assert repo.move_branch(BRANCH, commit, head)

        yield GitSide(port, 1, read, other)


class FakeGitBackend:
    """Production: bot.github.GitHub over HTTP to the GitHub fake (contract-checked)."""

    def __init__(self, fake: Any) -> None:
        self.fake = fake

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[GitSide]:
        from tests.rig.harness import skeleton_files

        fake = self.fake
        fake.create_repo(OWNER, NAME, files=skeleton_files())
        settings = Settings(
            github_app_id=fake.app_id,
            github_private_key=fake.private_key_pem,
            github_webhook_secret="s",
            github_api_url=fake.url,
        )
        async with aiohttp.ClientSession() as session:
            yield GitSide(
                GitHub(session, settings),
                fake.installation_for(OWNER).id,
                lambda path: fake.read_file(OWNER, NAME, BRANCH, path),
                lambda files: fake.commit_as_other_actor(OWNER, NAME, BRANCH, files),
            )


@pytest.fixture(params=["local", pytest.param("github", marks=pytest.mark.rig)])
def git_backend(request: pytest.FixtureRequest, tmp_path: Path) -> GitBackend:
    if request.param == "local":
        return LocalGitBackend(tmp_path)
    return FakeGitBackend(request.getfixturevalue("github"))


async def test_put_file_creates_then_updates_given_the_current_sha(
    git_backend: GitBackend,
) -> None:
    async with git_backend.open() as side:
        gh = side.port
        assert await gh.get_file_sha(OVERLAY, BRANCH) is None
        blob, commit = await gh.put_file(OVERLAY, BRANCH, "a: 1\n", "create", None)
        assert blob == git_blob_sha("a: 1\n")
        assert SHA_RE.match(commit)
        assert await gh.get_file_sha(OVERLAY, BRANCH) == blob
        blob2, commit2 = await gh.put_file(OVERLAY, BRANCH, "a: 2\n", "update", blob)
        assert blob2 == git_blob_sha("a: 2\n")
        assert commit2 != commit
        assert await gh.get_file_sha(OVERLAY, BRANCH) == blob2
        assert side.read(OVERLAY) == "a: 2\n"


async def test_put_file_with_a_stale_or_missing_sha_is_a_conflict(git_backend: GitBackend) -> None:
    async with git_backend.open() as side:
        gh = side.port
        first, _ = await gh.put_file(OVERLAY, BRANCH, "a: 1\n", "create", None)
        second, _ = await gh.put_file(OVERLAY, BRANCH, "a: 2\n", "update", first)
        with pytest.raises(Conflict):  # the file exists: a create must name its sha
            await gh.put_file(OVERLAY, BRANCH, "a: 3\n", "again", None)
        with pytest.raises(Conflict):  # someone changed it since we read `first`
            await gh.put_file(OVERLAY, BRANCH, "a: 3\n", "stale", first)
        assert await gh.get_file_sha(OVERLAY, BRANCH) == second
        assert side.read(OVERLAY) == "a: 2\n"


async def test_put_file_lands_on_a_branch_someone_else_moved(git_backend: GitBackend) -> None:
    async with git_backend.open() as side:
        gh = side.port
        blob, _ = await gh.put_file(OVERLAY, BRANCH, "a: 1\n", "create", None)
        side.other_actor_commits({"docs/notes.md": "unrelated\n"})
        await gh.put_file(OVERLAY, BRANCH, "a: 2\n", "update", blob)
        assert side.read("docs/notes.md") == "unrelated\n"  # their commit is kept, not undone
        assert side.read(OVERLAY) == "a: 2\n"


async def test_branch_head_is_the_commit_that_last_wrote_it(git_backend: GitBackend) -> None:
    async with git_backend.open() as side:
        gh = side.port
        blob, commit = await gh.put_file(OVERLAY, BRANCH, "a: 1\n", "create", None)
        assert await gh.branch_head(BRANCH) == commit
        assert await gh.get_file_sha(OVERLAY, commit) == blob  # a commit reads as a ref
        assert await gh.branch_head("no-such-branch") is None


async def test_delete_file(git_backend: GitBackend) -> None:
    async with git_backend.open() as side:
        gh = side.port
        blob, _ = await gh.put_file(OVERLAY, BRANCH, "a: 1\n", "create", None)
        with pytest.raises(Conflict):
            await gh.delete_file(OVERLAY, BRANCH, "stale", git_blob_sha("other\n"))
        assert await gh.delete_file(OVERLAY, BRANCH, "remove", blob) is True
        assert await gh.get_file_sha(OVERLAY, BRANCH) is None
        assert side.read(OVERLAY) is None
        assert await gh.delete_file(OVERLAY, BRANCH, "again", blob) is False


async def test_list_files_and_directories(git_backend: GitBackend) -> None:
    async with git_backend.open() as side:
        gh = side.port
        files = await gh.list_files("infra/argocd", BRANCH)
        assert files is not None and f"{BASE_DIR}/kustomization.yaml" in files
        assert all(f.startswith("infra/argocd/") for f in files)
        assert await gh.list_files("no/such/dir", BRANCH) is None
        assert await gh.list_files(BASE_DIR, "no-such-branch") is None
        with pytest.raises(PermanentError):  # a directory where a file is expected
            await gh.get_file_sha(BASE_DIR, BRANCH)


async def test_delete_files_in_one_commit(git_backend: GitBackend) -> None:
    async with git_backend.open() as side:
        gh = side.port
        await gh.put_file(OVERLAY, BRANCH, "a: 1\n", "create", None)
        other = OVERLAY.replace("pr-7", "pr-8")
        await gh.put_file(other, BRANCH, "b: 1\n", "create", None)
        commit = await gh.delete_files([OVERLAY, other, "not/there.yaml"], BRANCH, "orphans")
        assert commit is not None and SHA_RE.match(commit)
        assert side.read(OVERLAY) is None and side.read(other) is None
        assert await gh.delete_files([OVERLAY], BRANCH, "again") is None


async def test_recent_deployments_newest_first_with_the_bots_marker(
    git_backend: GitBackend,
) -> None:
    async with git_backend.open() as side:
        gh = side.port
        assert await gh.recent_deployments() == []
        sha = await gh.branch_head(BRANCH)
        assert sha is not None
        first = await gh.create_deployment(sha, "dex-pr-7", "first")
        second = await gh.create_deployment(sha, "dex-pr-8", "second")
        await gh.set_deployment_status(first, DeploymentStatus("inactive", "gone"))
        assert await gh.recent_deployments() == [  # an inactive one is still listed
            ListedDeployment(second, sha, "dex-pr-8", True),
            ListedDeployment(first, sha, "dex-pr-7", True),
        ]


# ---- ClusterPort -----------------------------------------------------------------------------


@dataclass
class ClusterSide:
    port: ClusterPort
    watch: Callable[[OnEvent], Coroutine[Any, Any, None]]
    finish_deletion: Callable[[str], Awaitable[None]]  # what Argo CD does after pruning
    raw: Callable[[str], Awaitable[dict[str, Any] | None]]  # the object, behind the port's back


class ClusterBackend(Protocol):
    def open(self) -> contextlib.AbstractAsyncContextManager[ClusterSide]: ...


class FilesBackend:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[ClusterSide]:
        files = FileCluster(self.tmp / "cluster", "argocd")

        async def nothing_to_finish(_: str) -> None:
            return None

        async def raw(name: str) -> dict[str, Any] | None:
            path = self.tmp / "cluster" / f"{name}.yaml"
            return yaml.safe_load(path.read_text()) if path.exists() else None

        yield ClusterSide(files, lambda on: files.watch(on, poll=0.05), nothing_to_finish, raw)


class ArgoCDBackend:
    def __init__(self, kube: KubeRig, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[ClusterSide]:
        from tests.rig.argocd import ArgoCDStandIn

        async with self.kube.kubeapi() as api, await self.kube.api_client() as standin_client:
            argocd = ArgoCD(api, self.namespace)
            standin = ArgoCDStandIn(standin_client, self.namespace)

            async def finish(name: str) -> None:
                await standin.finish_deletion(name)  # the bot's finalizer still holds it

            yield ClusterSide(argocd, argocd.watch, finish, standin.find)


@pytest.fixture(params=["files", pytest.param("argocd", marks=pytest.mark.rig)])
def cluster_backend(request: pytest.FixtureRequest, tmp_path: Path) -> ClusterBackend:
    if request.param == "files":
        return FilesBackend(tmp_path)
    return ArgoCDBackend(request.getfixturevalue("kube"), request.getfixturevalue("argocd_ns"))


def manifest(sha: str = "1" * 40, branch: str = "main") -> dict[str, Any]:
    pr = PullRequest(
        repo=REPO,
        number=7,
        state="open",
        merged=False,
        labels=frozenset({"preview"}),
        head_sha=sha,
        head_repo=REPO,
        default_branch="main",
        html_url=f"https://github.com/{REPO}/pull/7",
        repo_html_url=f"https://github.com/{REPO}",
    )
    return render_application(SETTINGS, pr, branch, 1)


async def test_get_of_a_missing_application_is_none(cluster_backend: ClusterBackend) -> None:
    async with cluster_backend.open() as side:
        assert await side.port.get("dex-pr-404") is None
        assert await side.port.annotate("dex-pr-404", {A_COMMENT: "1"}) is False
        assert await side.port.delete("dex-pr-404") is True


async def test_apply_creates_then_updates(cluster_backend: ClusterBackend) -> None:
    async with cluster_backend.open() as side:
        first = manifest()
        await side.port.apply(first)
        got = await side.raw("dex-pr-7")
        assert got is not None
        assert got["spec"] == first["spec"]
        assert got["metadata"]["labels"] == first["metadata"]["labels"]
        assert got["metadata"]["finalizers"] == first["metadata"]["finalizers"]
        seen = await side.port.get("dex-pr-7")
        assert seen is not None and (seen.managed, seen.repo, seen.number) == (True, REPO, 7)
        second = manifest("2" * 40, branch="previews")
        await side.port.apply(second)
        got = await side.raw("dex-pr-7")
        assert got is not None
        assert got["spec"]["source"]["targetRevision"] == "previews"
        seen = await side.port.get("dex-pr-7")
        assert seen is not None and seen.head_sha == "2" * 40


async def test_annotate_merges_and_survives_the_next_apply(cluster_backend: ClusterBackend) -> None:
    async with cluster_backend.open() as side:
        await side.port.apply(manifest())
        assert await side.port.annotate("dex-pr-7", {A_COMMENT: "12"}) is True
        got = await side.port.get("dex-pr-7")
        assert got is not None
        assert got.record.comment_id == 12
        assert got.head_sha == "1" * 40  # the apply's own are kept
        # Another field manager owns the bookkeeping: a forced apply must not drop it.
        await side.port.apply(manifest("3" * 40))
        got = await side.port.get("dex-pr-7")
        assert got is not None
        assert got.record.comment_id == 12
        assert got.head_sha == "3" * 40


async def test_delete_then_get_is_none(cluster_backend: ClusterBackend) -> None:
    async with cluster_backend.open() as side:
        await side.port.apply(manifest())
        if not await side.port.delete("dex-pr-7"):
            # A real cluster keeps it terminating until Argo CD has pruned (its finalizer),
            # then until the bot releases it (its own).
            pending = await side.port.get("dex-pr-7")
            assert pending is not None
            assert pending.terminating and pending.held and not pending.pruned
            await side.finish_deletion("dex-pr-7")
            pruned = await side.port.get("dex-pr-7")
            assert pruned is not None and pruned.releasable
            assert await side.port.release("dex-pr-7") is True
        assert await side.port.get("dex-pr-7") is None
        assert await side.port.release("dex-pr-7") is False  # gone: nothing to release


async def test_a_fresh_application_is_held_and_release_leaves_it_running(
    cluster_backend: ClusterBackend,
) -> None:
    async with cluster_backend.open() as side:
        await side.port.apply(manifest())
        seen = await side.port.get("dex-pr-7")
        assert seen is not None and seen.held and not seen.pruned and not seen.releasable
        assert await side.port.release("dex-pr-7") is True
        got = await side.raw("dex-pr-7")
        assert got is not None and got["metadata"]["finalizers"] == [FINALIZER]
        assert await side.port.release("dex-pr-7") is False  # off already: nothing written


async def test_watch_reports_an_applied_application(cluster_backend: ClusterBackend) -> None:
    async with cluster_backend.open() as side:
        seen: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

        async def on_event(kind: str, app: ObservedApp) -> None:
            await seen.put((kind, app.name))

        task = asyncio.create_task(side.watch(on_event))
        try:
            await side.port.apply(manifest())
            async with asyncio.timeout(10):
                while (event := await seen.get())[1] != "dex-pr-7":
                    pass
            assert event[0] in ("ADDED", "SYNCED", "MODIFIED")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
