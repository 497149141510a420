"""In-memory ports (GitHubPort, RepoPort, ClusterPort) for the middle test layer: the Syncer and
the Bot tested in milliseconds, with no HTTP. The one fake of the ports; the fakes of GitHub's
and Kubernetes' HTTP APIs live in tests/rig.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from bot.errors import Conflict
from bot.model import (
    CheckReport,
    DeploymentStatus,
    IssueComment,
    LabelEvent,
    ListedDeployment,
    ObservedApp,
    PullRequest,
    git_blob_sha,
    released_finalizers,
)
from bot.parse import app_from_object, is_argocd_finalizer
from bot.ports import OnAlive, OnEvent, RepoInfo

REPO = "data-literate/DEX"
BOT_LOGIN = "preview-bot[bot]"
APP_ID = 1


@dataclass
class Deployment:
    id: int
    sha: str
    environment: str
    statuses: list[DeploymentStatus] = field(default_factory=list)
    marked: bool = True  # made by the bot (its payload marker); False: by hand, another tool

    @property
    def state(self) -> str | None:
        return self.statuses[-1].state if self.statuses else None


class MemoryRepo:
    """One repository: PRs, comments, files on branches, deployments; every call logged."""

    def __init__(self, name: str = REPO, files: dict[str, str] | None = None) -> None:
        self.name = name
        self.pulls: dict[int, PullRequest] = {}
        self.comments_: dict[int, IssueComment] = {}
        self.comment_pr: dict[int, int] = {}
        self.branches: dict[str, dict[str, str]] = {"main": dict(files or {})}
        self.commits: list[str] = []
        self.heads: dict[str, str] = {"main": f"{0:040x}"}  # branch -> its last commit
        self.deployments: dict[int, Deployment] = {}
        self.calls: list[str] = []
        self.permissions: dict[str, str] = {}  # login -> permission; default write
        self.label_events: dict[tuple[int, str], LabelEvent] = {}
        self.reactions: list[tuple[int, str]] = []
        self.checks: dict[str, dict[str, tuple[str, str | None]]] = {}  # sha -> name -> state
        self.check_runs: dict[int, CheckReport] = {}
        # method name -> exceptions to raise on its next calls, in order (fault injection)
        self.faults: dict[str, list[BaseException]] = {}
        self.after_faults: dict[str, list[BaseException]] = {}
        self._ids = itertools.count(1)

    def _call(self, method: str) -> None:
        self.calls.append(method)
        pending = self.faults.get(method)
        if pending:
            raise pending.pop(0)

    def fail_next(self, method: str, *errors: BaseException) -> None:
        self.faults.setdefault(method, []).extend(errors)

    def fail_after(self, method: str, *errors: BaseException) -> None:
        """The next calls of `method` take effect, then raise (an answer lost on the way)."""
        self.after_faults.setdefault(method, []).extend(errors)

    def _applied(self, method: str) -> None:
        pending = self.after_faults.get(method)
        if pending:
            raise pending.pop(0)

    def open_pull(self, number: int, head_sha: str, **changes: Any) -> PullRequest:
        pr = PullRequest(
            repo=self.name,
            number=number,
            state="open",
            merged=False,
            labels=frozenset({"preview"}),
            head_sha=head_sha,
            head_repo=self.name,
            default_branch="main",
            html_url=f"https://github.com/{self.name}/pull/{number}",
            repo_html_url=f"https://github.com/{self.name}",
            comment_count=0,
        )
        self.pulls[number] = replace(pr, **changes)
        for label in self.pulls[number].labels:  # added by a maintainer, at time 0
            self.label_events.setdefault((number, label), LabelEvent("maintainer", 0))
        return self.pulls[number]

    def change_pull(self, number: int, **changes: Any) -> PullRequest:
        self.pulls[number] = replace(self.pulls[number], **changes)
        return self.pulls[number]

    def label(self, number: int, label: str, actor: str = "maintainer", at: int = 0) -> None:
        """Someone adds a label to the PR (as GitHub records the event)."""
        pr = self.pulls[number]
        self.pulls[number] = replace(pr, labels=pr.labels | {label})
        self.label_events[(number, label)] = LabelEvent(actor, at)

    def add_foreign_deployment(self, sha: str, environment: str) -> int:
        """Someone else (a person, another tool) creates a deployment: no marker, no status."""
        dep = Deployment(next(self._ids), sha, environment, marked=False)
        self.deployments[dep.id] = dep
        return dep.id

    def comments_on(self, number: int) -> list[IssueComment]:
        return [c for cid, c in self.comments_.items() if self.comment_pr[cid] == number]

    def add_comment(self, number: int, body: str, author: str = "octocat") -> int:
        cid = next(self._ids)
        app_id = APP_ID if author == BOT_LOGIN else None
        self.comments_[cid] = IssueComment(cid, author, app_id, body)
        self.comment_pr[cid] = number
        pr = self.pulls[number]
        self.pulls[number] = replace(pr, comment_count=(pr.comment_count or 0) + 1)
        return cid

    # ---- RepoPort ---------------------------------------------------------------------------

    async def get_pull(self, number: int) -> PullRequest:
        self._call("get_pull")
        return self.pulls[number]

    async def comments(self, number: int) -> AsyncIterator[IssueComment]:
        self._call("comments")
        for comment in self.comments_on(number):
            yield comment

    async def create_comment(self, number: int, body: str) -> int:
        self._call("create_comment")
        made = self.add_comment(number, body, BOT_LOGIN)
        self._applied("create_comment")
        return made

    async def edit_comment(self, comment_id: int, body: str) -> bool:
        self._call("edit_comment")
        if comment_id not in self.comments_:
            return False
        self.comments_[comment_id] = replace(self.comments_[comment_id], body=body)
        return True

    async def get_file_sha(self, path: str, ref: str) -> str | None:
        self._call("get_file_sha")
        text = self._tree(ref).get(path)
        return None if text is None else git_blob_sha(text)

    def _tree(self, ref: str) -> dict[str, str]:
        """The files of a branch, or of a branch's head commit (older commits are not kept)."""
        branch = next((b for b, head in self.heads.items() if head == ref), ref)
        return self.branches.get(branch, {})

    async def list_files(self, path: str, ref: str) -> list[str] | None:
        self._call("list_files")
        prefix = f"{path}/" if path else ""
        found = [p for p in self.branches.get(ref, {}) if p.startswith(prefix)]
        return found or None

    def _commit(self, branch: str, path: str, content: str | None) -> str:
        files = self.branches[branch]
        if content is None:
            files.pop(path, None)
        else:
            files[path] = content
        sha = f"{next(self._ids):040x}"
        self.commits.append(sha)
        self.heads[branch] = sha
        return sha

    async def put_file(
        self, path: str, branch: str, content: str, message: str, sha: str | None
    ) -> tuple[str, str]:
        self._call("put_file")
        current = self.branches[branch].get(path)
        if current is not None and sha != git_blob_sha(current):
            raise Conflict(f"{path} does not match {sha}")
        made = git_blob_sha(content), self._commit(branch, path, content)
        self._applied("put_file")
        return made

    async def delete_file(self, path: str, branch: str, message: str, sha: str) -> bool:
        self._call("delete_file")
        current = self.branches[branch].get(path)
        if current is None:
            return False
        if sha != git_blob_sha(current):
            raise Conflict(f"{path} does not match {sha}")
        self._commit(branch, path, None)
        return True

    async def find_deployment(self, sha: str, environment: str) -> int | None:
        self._call("find_deployment")
        mine = [
            d.id for d in self.deployments.values() if (d.sha, d.environment) == (sha, environment)
        ]
        return max(mine) if mine else None

    async def create_deployment(self, sha: str, environment: str, description: str) -> int:
        self._call("create_deployment")
        dep = Deployment(next(self._ids), sha, environment)
        self.deployments[dep.id] = dep
        self._applied("create_deployment")
        return dep.id

    async def set_deployment_status(self, deployment_id: int, status: DeploymentStatus) -> bool:
        self._call("set_deployment_status")
        dep = self.deployments.get(deployment_id)
        if dep is None:
            return False
        dep.statuses.append(status)
        self._applied("set_deployment_status")
        return True

    async def active_deployments(self, environment: str) -> list[int]:
        self._call("active_deployments")
        return sorted(
            (
                d.id
                for d in self.deployments.values()
                if d.environment == environment and d.state != "inactive"
            ),
            reverse=True,
        )

    async def recent_deployments(self) -> list[ListedDeployment]:
        self._call("recent_deployments")
        newest = sorted(self.deployments.values(), key=lambda d: d.id, reverse=True)[:100]
        return [ListedDeployment(d.id, d.sha, d.environment, d.marked) for d in newest]

    async def permission(self, user: str) -> str:
        self._call("permission")
        return self.permissions.get(user, "write")

    async def label_event(self, number: int, label: str) -> LabelEvent | None:
        self._call("label_event")
        return self.label_events.get((number, label))

    async def set_label(self, number: int, label: str, present: bool) -> None:
        self._call("set_label")
        pr = self.pulls[number]
        labels = pr.labels | {label} if present else pr.labels - {label}
        self.pulls[number] = replace(pr, labels=labels)

    async def add_reaction(self, comment_id: int, content: str) -> None:
        self._call("add_reaction")
        if (comment_id, content) not in self.reactions:
            self.reactions.append((comment_id, content))

    async def check_states(self, sha: str) -> dict[str, tuple[str, str | None]]:
        self._call("check_states")
        return dict(self.checks.get(sha, {}))

    async def report_check(self, report: CheckReport) -> int:
        self._call("report_check")
        run_id = report.check_run_id or next(self._ids)
        self.check_runs[run_id] = replace(report, check_run_id=run_id)
        return run_id

    async def find_check(self, sha: str, name: str) -> int | None:
        self._call("find_check")
        mine = [rid for rid, r in self.check_runs.items() if r.sha == sha]
        return max(mine) if mine else None

    async def open_pulls(self) -> list[PullRequest]:
        self._call("open_pulls")
        return [pr for pr in self.pulls.values() if pr.state == "open"]

    async def delete_files(self, paths: list[str], branch: str, message: str) -> str | None:
        self._call("delete_files")
        files = self.branches[branch]
        present = [p for p in paths if p in files]
        if not present:
            return None
        for path in present:
            files.pop(path)
        sha = f"{next(self._ids):040x}"
        self.commits.append(sha)
        self.heads[branch] = sha
        return sha

    async def branch_head(self, branch: str) -> str | None:
        self._call("branch_head")
        return self.heads.get(branch) if branch in self.branches else None


class MemoryGitHub:
    """GitHubPort over MemoryRepos; every installation sees every repository."""

    def __init__(self, *repos: MemoryRepo) -> None:
        self.repos = {r.name: r for r in repos}

    def repo(self, installation_id: int, repo: str) -> MemoryRepo:
        return self.repos[repo]

    async def installations(self) -> list[int]:
        return [5]

    async def installation_repos(self, installation_id: int) -> list[RepoInfo]:
        return [RepoInfo(name, installation_id, "main") for name in self.repos]

    async def bot_login(self) -> str | None:
        return BOT_LOGIN

    def rate_remaining(self, installation_id: int) -> float | None:
        return None


class MemoryCluster:
    """ClusterPort over a dict of Application objects; deletions wait for `finish_deletion`
    when the object carries a finalizer, as Argo CD's resources finalizer makes them wait."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self._watchers: list[asyncio.Queue[tuple[str, dict[str, Any]]]] = []
        self.faults: dict[str, list[BaseException]] = {}

    def _call(self, method: str) -> None:
        self.calls.append(method)
        pending = self.faults.get(method)
        if pending:
            raise pending.pop(0)

    def fail_next(self, method: str, *errors: BaseException) -> None:
        self.faults.setdefault(method, []).extend(errors)

    def _emit(self, kind: str, obj: dict[str, Any]) -> None:
        for queue in self._watchers:
            queue.put_nowait((kind, copy.deepcopy(obj)))

    def set_status(self, name: str, **status: Any) -> None:
        """Play Argo CD: write .status (sync/health/phase) and tell the watchers."""
        obj = self.objects[name]
        obj["status"] = {
            "sync": {"status": status.get("sync"), "revision": status.get("revision")},
            "health": {"status": status.get("health")},
            "operationState": {"phase": status.get("phase")},
        }
        self._emit("MODIFIED", obj)

    def finish_deletion(self, name: str) -> None:
        """Play Argo CD after pruning: its finalizer goes, and so does the object unless
        another finalizer (the bot's) still holds it."""
        meta = self.objects[name]["metadata"]
        meta["finalizers"] = [f for f in meta.get("finalizers") or [] if not is_argocd_finalizer(f)]
        self._let_go(name)

    def _let_go(self, name: str) -> None:
        """A terminating object with no finalizer left is gone; with some, it changed."""
        obj = self.objects[name]
        if obj["metadata"].get("finalizers"):
            self._emit("MODIFIED", obj)
            return
        self.objects.pop(name)
        self._emit("DELETED", obj)

    async def get(self, name: str) -> ObservedApp | None:
        self._call("get")
        obj = self.objects.get(name)
        return None if obj is None else app_from_object(obj)

    async def apply(self, manifest: dict[str, Any]) -> None:
        self._call("apply")
        name = manifest["metadata"]["name"]
        old = self.objects.get(name)
        obj = copy.deepcopy(manifest)
        if old is not None:
            kept = old["metadata"].get("annotations") or {}
            obj["metadata"]["annotations"] = {**kept, **obj["metadata"].get("annotations", {})}
            if "status" in old:
                obj["status"] = old["status"]
        self.objects[name] = obj
        self._emit("MODIFIED" if old else "ADDED", obj)

    async def annotate(self, name: str, annotations: dict[str, str]) -> bool:
        self._call("annotate")
        obj = self.objects.get(name)
        if obj is None:
            return False
        obj["metadata"]["annotations"] = {**obj["metadata"].get("annotations", {}), **annotations}
        self._emit("MODIFIED", obj)
        return True

    async def delete(self, name: str) -> bool:
        self._call("delete")
        obj = self.objects.get(name)
        if obj is None:
            return True
        if obj["metadata"].get("finalizers"):
            obj["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
            self._emit("MODIFIED", obj)
            return False
        self.objects.pop(name)
        self._emit("DELETED", obj)
        return True

    async def release(self, name: str) -> bool:
        self._call("release")
        obj = self.objects.get(name)
        if obj is None:
            return False
        meta = obj["metadata"]
        kept = released_finalizers(meta)
        if kept is None:
            return False
        meta["finalizers"] = kept
        if meta.get("deletionTimestamp"):
            self._let_go(name)
        else:
            self._emit("MODIFIED", obj)
        return True

    async def list_managed(self) -> list[ObservedApp]:
        self._call("list_managed")
        apps = [app_from_object(obj) for obj in self.objects.values()]
        return [app for app in apps if app.managed]

    async def request_sync(self, name: str) -> bool:
        self._call("request_sync")
        obj = self.objects.get(name)
        if obj is None:
            return False
        obj["operation"] = {"initiatedBy": {"username": "preview-bot"}, "sync": {}}
        return True

    async def watch(self, on_event: OnEvent, alive: OnAlive | None = None) -> None:
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._watchers.append(queue)
        try:
            for obj in list(self.objects.values()):
                await on_event("SYNCED", app_from_object(obj))
            while True:
                if alive is not None:
                    alive()
                kind, obj = await queue.get()
                await on_event(kind, app_from_object(obj))
        finally:
            self._watchers.remove(queue)
