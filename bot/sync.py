"""One sync of one PR: observe (GitHub + cluster) -> plan (pure) -> execute (adapters).

Reads are kept to what the plan needs: the PR itself always (the payload may be stale), the
Application (free: not GitHub's rate limit), and GitHub's comment list, overlay or base only
when the Application's annotations cannot answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cachetools import LRUCache

from bot.config import Settings
from bot.github import Conflict, PermanentError, TemporaryError
from bot.kube import ClusterUnavailable, observed_app
from bot.metrics import Metrics
from bot.model import (
    A_COMMENT,
    A_COMMENT_FP,
    A_COMMENT_STATE,
    A_DEPLOYED_SHA,
    A_DEPLOYMENT,
    A_OVERLAY_BLOB,
    A_OVERLAY_COMMIT,
    ApplyApplication,
    CommentText,
    CreateDeployment,
    DeactivateDeployments,
    DeleteApplication,
    DeleteOverlay,
    Observed,
    ObservedComment,
    Plan,
    PullRequest,
    PutOverlay,
    RecordState,
    Requeue,
    SetDeploymentStatus,
    UpsertComment,
)
from bot.plan import needs_base_check, plan_failure, plan_sync
from bot.render import names
from bot.webhooks import Work, WorkKey

log = logging.getLogger(__name__)

MAX_WRITE_ATTEMPTS = 3


class GitHubPort(Protocol):
    """What a sync needs of GitHub (bot.github.GitHub, or local mode's stand-in)."""

    async def get_pull(self, installation_id: int, repo: str, number: int) -> PullRequest: ...
    async def find_comment(
        self, installation_id: int, repo: str, number: int
    ) -> ObservedComment | None: ...
    async def create_comment(
        self, installation_id: int, repo: str, number: int, body: str
    ) -> int: ...
    async def edit_comment(
        self, installation_id: int, repo: str, comment_id: int, body: str
    ) -> bool: ...
    async def get_file_sha(
        self, installation_id: int, repo: str, path: str, ref: str
    ) -> str | None: ...
    async def has_kustomization(
        self, installation_id: int, repo: str, path: str, ref: str
    ) -> bool: ...
    async def put_file(
        self,
        installation_id: int,
        repo: str,
        path: str,
        branch: str,
        content: str,
        message: str,
        sha: str | None,
    ) -> tuple[str, str]: ...
    async def delete_file(
        self, installation_id: int, repo: str, path: str, branch: str, message: str, sha: str
    ) -> bool: ...
    async def create_deployment(
        self, installation_id: int, repo: str, sha: str, environment: str, description: str
    ) -> int: ...
    async def set_deployment_status(
        self,
        installation_id: int,
        repo: str,
        deployment_id: int,
        state: str,
        environment_url: str | None,
        log_url: str | None,
        description: str,
    ) -> bool: ...
    async def active_deployments(
        self, installation_id: int, repo: str, environment: str
    ) -> list[int]: ...


class ClusterPort(Protocol):
    """What a sync needs of the cluster (bot.kube.ArgoCD, or local mode's files)."""

    async def get(self, name: str) -> dict[str, Any] | None: ...
    async def apply(self, manifest: dict[str, Any]) -> None: ...
    async def annotate(self, name: str, annotations: dict[str, str]) -> bool: ...
    async def delete(self, name: str) -> bool: ...
    async def list_managed(self) -> list[dict[str, Any]]: ...


@dataclass
class Outcome:
    """What one sync did, for logs and tests."""

    plan: Plan
    executed: list[str] = field(default_factory=list)
    requeue_after: float | None = None


@dataclass
class _Results:
    """Ids and shas produced while executing, recorded in the Application at the end."""

    values: dict[str, str] = field(default_factory=dict)
    app_gone: bool = False


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


class Syncer:
    """Runs syncs; one instance per process, shared by the workers."""

    def __init__(
        self,
        settings: Settings,
        github: GitHubPort,
        cluster: ClusterPort,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.github = github
        self.cluster = cluster
        self.metrics = metrics
        self.clock = clock
        # What each PR's Application annotations last said: once the Application is gone this
        # spares reading GitHub for the comment, overlay and deployments. Lost on a restart;
        # the reads then happen once (the comment's marker, the file, the deployments list).
        self._last: LRUCache[WorkKey, dict[str, str]] = LRUCache(maxsize=10_000)

    # ---- observe -------------------------------------------------------------------------

    async def observe(self, work: Work) -> Observed:
        key, inst = work.key, work.installation_id
        pr = await self.github.get_pull(inst, key.repo, key.number)
        n = names(self.settings, pr.repo, pr.number)
        obj = await self.cluster.get(n.app)
        app = observed_app(obj) if obj is not None else None
        ours = app is not None and app.managed and app.repo in (None, pr.repo)
        if app is None:
            ann = self._last.get(key, {})
        else:
            ann = app.annotations if ours else {}
            self._last[key] = dict(ann)
        branch = self.settings.deploy_branch or pr.default_branch

        comment: ObservedComment | None = None
        if _int(ann.get(A_COMMENT)) is not None:
            comment = ObservedComment(
                int(ann[A_COMMENT]), ann.get(A_COMMENT_STATE), ann.get(A_COMMENT_FP)
            )
        elif pr.comment_count != 0:  # a PR with no comments at all has none of ours
            comment = await self.github.find_comment(inst, key.repo, key.number)

        overlay_known = A_OVERLAY_BLOB in ann
        overlay_blob = ann.get(A_OVERLAY_BLOB) or None
        base_ok: bool | None = None
        if needs_base_check(pr, self.settings, overlay_known, app is None or ours):
            base_ok = await self.github.has_kustomization(inst, pr.repo, n.base_dir, branch)
        return Observed(
            pr=pr,
            installation_id=inst,
            app=app,
            comment=comment,
            overlay_blob=overlay_blob,
            overlay_known=overlay_known,
            base_ok=base_ok,
            branch=branch,
            deployment_id=_int(ann.get(A_DEPLOYMENT)),
            deployed_sha=ann.get(A_DEPLOYED_SHA),
            deployments_done=ann.get(A_DEPLOYMENT) == "",
        )

    # ---- the whole sync ------------------------------------------------------------------

    async def sync(self, work: Work) -> Outcome:
        """Observe, plan and execute for one key; raises TemporaryError for a retry."""
        started = time.perf_counter()
        ctx = {"repo": work.key.repo, "pr": work.key.number, "delivery": work.delivery}
        observed: Observed | None = None
        try:
            observed = await self.observe(work)
            plan = plan_sync(observed, self.settings, self.clock())
            ctx["sha"] = observed.pr.head_sha[:8]
            outcome = Outcome(plan)
            if plan.actions:
                log.info(
                    "plan: %s (%d actions)",
                    plan.reason,
                    len(plan.actions),
                    extra={**ctx, "status": plan.state.value},
                )
            await self.execute(observed, plan, outcome)
        except (TemporaryError, ClusterUnavailable) as exc:
            self._count("retry", started)
            log.warning("sync will be retried: %s", exc, extra=ctx)
            raise
        except PermanentError as exc:
            self._count("failed", started)
            if observed is not None:
                await self._report(observed, exc, ctx)
            raise
        except Exception:
            self._count("failed", started)
            raise
        self._count("ok", started)
        if outcome.executed:
            log.info(
                "synced: %s", ", ".join(outcome.executed), extra={**ctx, "status": plan.state.value}
            )
        return outcome

    async def _report(self, observed: Observed, exc: PermanentError, ctx: dict[str, Any]) -> None:
        """Put a permanent failure on the PR, once; never mask the original error."""
        plan = plan_failure(observed, self.settings, self.clock(), str(exc))
        try:
            await self.execute(observed, plan, Outcome(plan))
        except Exception as report_exc:  # the comment itself may be what GitHub refuses
            log.warning("could not report the failure on the PR: %s", report_exc, extra=ctx)

    def _count(self, result: str, started: float) -> None:
        if self.metrics is not None:
            self.metrics.syncs.labels(result=result).inc()
            self.metrics.sync_seconds.observe(time.perf_counter() - started)

    # ---- execute -------------------------------------------------------------------------

    async def execute(self, obs: Observed, plan: Plan, outcome: Outcome) -> None:
        res = _Results()
        pr, inst = obs.pr, obs.installation_id
        for action in plan.actions:
            match action:
                case PutOverlay():
                    await self._put_overlay(obs, action, res)
                case DeleteOverlay():
                    await self._delete_overlay(obs, action, res)
                case ApplyApplication():
                    await self.cluster.apply(action.manifest)
                case DeleteApplication():
                    res.app_gone = await self.cluster.delete(action.name)
                case CreateDeployment():
                    dep = await self.github.create_deployment(
                        inst, pr.repo, action.sha, action.environment, action.description
                    )
                    await self.github.set_deployment_status(
                        inst,
                        pr.repo,
                        dep,
                        "in_progress",
                        action.environment_url,
                        action.log_url,
                        action.description,
                    )
                    res.values[A_DEPLOYMENT] = str(dep)
                case SetDeploymentStatus():
                    dep_id = action.deployment_id or _int(res.values.get(A_DEPLOYMENT))
                    if dep_id is not None:
                        await self.github.set_deployment_status(
                            inst,
                            pr.repo,
                            dep_id,
                            action.state,
                            action.environment_url,
                            action.log_url,
                            action.description,
                        )
                case DeactivateDeployments():
                    await self._deactivate(obs, action)
                case UpsertComment():
                    await self._upsert_comment(obs, action, res)
                case Requeue():
                    outcome.requeue_after = action.seconds
                case RecordState():
                    values = {**action.values, **res.values}
                    key = WorkKey(pr.repo, pr.number)
                    self._last[key] = {**self._last.get(key, {}), **values}
                    if not res.app_gone:
                        res.app_gone = not await self.cluster.annotate(action.name, values)
            outcome.executed.append(type(action).__name__)

    async def _put_overlay(self, obs: Observed, action: PutOverlay, res: _Results) -> None:
        pr, inst = obs.pr, obs.installation_id
        sha = action.previous_blob
        for _ in range(MAX_WRITE_ATTEMPTS):
            try:
                blob, commit = await self.github.put_file(
                    inst, pr.repo, action.path, action.branch, action.content, action.message, sha
                )
            except Conflict:
                # The file moved under us (a hand edit, a lost annotation, a crash): read it and
                # overwrite, unless it already holds exactly what we want.
                current = await self.github.get_file_sha(inst, pr.repo, action.path, action.branch)
                if current == action.blob_sha:
                    res.values[A_OVERLAY_BLOB] = current
                    return
                if current is not None and sha is not None:
                    log.warning(
                        "overlay %s was changed outside preview-bot; overwriting it",
                        action.path,
                        extra={"repo": pr.repo, "pr": pr.number},
                    )
                sha = current
                continue
            res.values[A_OVERLAY_BLOB] = blob
            res.values[A_OVERLAY_COMMIT] = commit
            return
        raise TemporaryError(f"overlay {action.path} kept changing while writing it")

    async def _delete_overlay(self, obs: Observed, action: DeleteOverlay, res: _Results) -> None:
        pr, inst = obs.pr, obs.installation_id
        sha = action.previous_blob
        for _ in range(MAX_WRITE_ATTEMPTS):
            if sha is None:
                sha = await self.github.get_file_sha(inst, pr.repo, action.path, action.branch)
                if sha is None:
                    res.values[A_OVERLAY_BLOB] = ""
                    return
            try:
                await self.github.delete_file(
                    inst, pr.repo, action.path, action.branch, action.message, sha
                )
            except Conflict:
                sha = None
                continue
            res.values[A_OVERLAY_BLOB] = ""
            return
        raise TemporaryError(f"overlay {action.path} kept changing while deleting it")

    async def _deactivate(self, obs: Observed, action: DeactivateDeployments) -> None:
        pr, inst = obs.pr, obs.installation_id
        if action.known_id is not None:
            ids = [action.known_id]
        else:
            ids = await self.github.active_deployments(inst, pr.repo, action.environment)
        for dep in ids:
            await self.github.set_deployment_status(
                inst, pr.repo, dep, "inactive", None, None, "Preview removed"
            )

    async def _upsert_comment(self, obs: Observed, action: UpsertComment, res: _Results) -> None:
        pr, inst = obs.pr, obs.installation_id
        text: CommentText = action.text
        comment_id = action.comment_id
        if comment_id is None or not await self.github.edit_comment(
            inst, pr.repo, comment_id, text.body
        ):
            comment_id = await self.github.create_comment(inst, pr.repo, pr.number, text.body)
        res.values.update(
            {
                A_COMMENT: str(comment_id),
                A_COMMENT_STATE: text.state.value,
                A_COMMENT_FP: text.fingerprint,
            }
        )
