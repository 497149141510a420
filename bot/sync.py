"""One sync of one PR: observe (GitHub + cluster) -> plan (pure) -> execute (through the ports).

Reads are kept to what the plan needs: the PR itself always (the payload may be stale), the
Application (free: not GitHub's rate limit), and GitHub's comment list, overlay or base only
when the Application's record cannot answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from cachetools import LRUCache

from bot.config import Settings
from bot.errors import Conflict, PermanentError, TemporaryError
from bot.metrics import Metrics
from bot.model import (
    ApplyApplication,
    CreateDeployment,
    DeactivateDeployments,
    DeleteApplication,
    DeleteOverlay,
    DeploymentStatus,
    Observed,
    ObservedApp,
    ObservedComment,
    Plan,
    PullRequest,
    PutOverlay,
    Record,
    RecordState,
    Requeue,
    SetDeploymentStatus,
    UpsertComment,
    Work,
    WorkKey,
    known_value,
)
from bot.plan import needs_base_check, plan_failure, plan_sync
from bot.ports import ClusterPort, GitHubPort, RepoPort
from bot.render import names, read_comment

log = logging.getLogger(__name__)

MAX_WRITE_ATTEMPTS = 3
# PRs whose last record this process remembers once their Application is gone.
LAST_RECORDS = 10_000


@dataclass
class Outcome:
    """What one sync did, for logs and tests."""

    plan: Plan
    executed: list[str] = field(default_factory=list)
    requeue_after: float | None = None


@dataclass
class _Execution:
    """One plan being executed: where it writes, and what it produced so far."""

    obs: Observed
    repo: RepoPort
    outcome: Outcome
    produced: Record = field(default_factory=Record)  # ids and shas made while executing
    app_gone: bool = False


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
        # Each PR's record as last seen: once the Application is gone this spares reading
        # GitHub for the comment, overlay and deployments. Lost on a restart; the reads then
        # happen once (the comment's marker, the file, the deployments list).
        self._last: LRUCache[WorkKey, Record] = LRUCache(maxsize=LAST_RECORDS)

    # ---- observe -------------------------------------------------------------------------

    async def observe(self, work: Work) -> Observed:
        key = work.key
        repo = self.github.repo(work.installation_id, key.repo)
        pr = await repo.get_pull(key.number)
        n = names(self.settings, pr.repo, pr.number)
        app = await self.cluster.get(n.app)
        record = self._record_of(key, pr, app)
        branch = self.settings.deploy_branch or pr.default_branch
        comment = await self._find_comment(repo, pr, record)
        base_ok: bool | None = None
        if needs_base_check(pr, self.settings, record, app):
            base_ok = await repo.has_kustomization(n.base_dir, branch)
        return Observed(
            pr=pr,
            installation_id=work.installation_id,
            app=app,
            record=record,
            comment=comment,
            base_ok=base_ok,
            branch=branch,
        )

    def _record_of(self, key: WorkKey, pr: PullRequest, app: ObservedApp | None) -> Record:
        """The Application's record when it is ours, else what this process last saw."""
        if app is None:
            return self._last.get(key, Record())
        record = app.record if app.owned_by(pr.repo) else Record()
        self._last[key] = record
        return record

    @staticmethod
    async def _find_comment(
        repo: RepoPort, pr: PullRequest, record: Record
    ) -> ObservedComment | None:
        if record.comment is not None:
            return record.comment
        if record.comment_id is None or pr.comment_count == 0:
            return None  # a PR with no comments at all has none of ours
        async for comment in repo.comments(pr.number):
            ours = read_comment(comment)
            if ours is not None:
                return ours
        return None

    # ---- the whole sync ------------------------------------------------------------------

    async def sync(self, work: Work) -> Outcome:
        """Observe, plan and execute for one key; raises TemporaryError for a retry.

        A PermanentError is said once on the PR before it is raised again.
        """
        started = time.perf_counter()
        observed: Observed | None = None
        try:
            observed = await self.observe(work)
            plan = plan_sync(observed, self.settings, self.clock())
            outcome = Outcome(plan)
            if plan.actions:
                log.info(
                    "plan: %s (%d actions)",
                    plan.reason,
                    len(plan.actions),
                    extra={"sha": observed.pr.head_sha[:8], "status": plan.state.value},
                )
            await self.execute(observed, plan, outcome)
        except TemporaryError:
            self._count("retry", started)
            raise
        except PermanentError as exc:
            self._count("failed", started)
            if observed is not None:
                await self._report(observed, exc)
            raise
        except Exception:
            self._count("failed", started)
            raise
        self._count("ok", started)
        if outcome.executed:
            log.info(
                "synced: %s",
                ", ".join(outcome.executed),
                extra={"sha": observed.pr.head_sha[:8], "status": plan.state.value},
            )
        return outcome

    async def _report(self, observed: Observed, exc: PermanentError) -> None:
        """Put a permanent failure on the PR, once; never mask the original error."""
        plan = plan_failure(observed, self.settings, self.clock(), str(exc))
        try:
            await self.execute(observed, plan, Outcome(plan))
        except Exception as report_exc:  # the comment itself may be what GitHub refuses
            log.warning("could not report the failure on the PR: %s", report_exc)

    def _count(self, result: str, started: float) -> None:
        if self.metrics is not None:
            self.metrics.syncs.labels(result=result).inc()
            self.metrics.sync_seconds.observe(time.perf_counter() - started)

    # ---- execute -------------------------------------------------------------------------

    async def execute(self, obs: Observed, plan: Plan, outcome: Outcome) -> None:
        run = _Execution(obs, self.github.repo(obs.installation_id, obs.pr.repo), outcome)
        for action in plan.actions:
            match action:
                case PutOverlay():
                    await self._put_overlay(run, action)
                case DeleteOverlay():
                    await self._delete_overlay(run, action)
                case ApplyApplication():
                    await self.cluster.apply(action.manifest)
                case DeleteApplication():
                    run.app_gone = await self.cluster.delete(action.name)
                case CreateDeployment():
                    await self._create_deployment(run, action)
                case SetDeploymentStatus():
                    await self._set_deployment_status(run, action)
                case DeactivateDeployments():
                    await self._deactivate(run, action)
                case UpsertComment():
                    await self._upsert_comment(run, action)
                case Requeue():
                    outcome.requeue_after = action.seconds
                case RecordState():
                    await self._record(run, action)
            outcome.executed.append(type(action).__name__)

    async def _record(self, run: _Execution, action: RecordState) -> None:
        record = action.record.updated_by(run.produced)
        self._last[WorkKey(run.obs.pr.repo, run.obs.pr.number)] = record
        if not run.app_gone:
            run.app_gone = not await self.cluster.annotate(action.name, record.to_annotations())

    async def _create_deployment(self, run: _Execution, action: CreateDeployment) -> None:
        dep = await run.repo.create_deployment(action.sha, action.environment, action.description)
        status = DeploymentStatus(
            "in_progress", action.description, action.environment_url, action.log_url
        )
        await run.repo.set_deployment_status(dep, status)
        run.produced = replace(run.produced, deployment_id=dep)

    async def _set_deployment_status(self, run: _Execution, action: SetDeploymentStatus) -> None:
        dep_id = action.deployment_id or known_value(run.produced.deployment_id)
        if dep_id is not None:
            await run.repo.set_deployment_status(dep_id, action.status)

    async def _put_overlay(self, run: _Execution, action: PutOverlay) -> None:
        sha = action.previous_blob
        for _ in range(MAX_WRITE_ATTEMPTS):
            try:
                blob, commit = await run.repo.put_file(
                    action.path, action.branch, action.content, action.message, sha
                )
            except Conflict:
                # The file moved under us (a hand edit, a lost record, a crash): read it and
                # overwrite, unless it already holds exactly what we want.
                current = await run.repo.get_file_sha(action.path, action.branch)
                if current == action.blob_sha:
                    run.produced = replace(run.produced, overlay_blob=current)
                    return
                if current is not None and sha is not None:
                    log.warning(
                        "overlay %s was changed outside preview-bot; overwriting it", action.path
                    )
                sha = current
                continue
            run.produced = replace(run.produced, overlay_blob=blob, overlay_commit=commit)
            return
        raise TemporaryError(f"overlay {action.path} kept changing while writing it")

    async def _delete_overlay(self, run: _Execution, action: DeleteOverlay) -> None:
        sha = action.previous_blob
        for _ in range(MAX_WRITE_ATTEMPTS):
            if sha is None:
                sha = await run.repo.get_file_sha(action.path, action.branch)
                if sha is None:
                    run.produced = replace(run.produced, overlay_blob=None)
                    return
            try:
                await run.repo.delete_file(action.path, action.branch, action.message, sha)
            except Conflict:
                sha = None
                continue
            run.produced = replace(run.produced, overlay_blob=None)
            return
        raise TemporaryError(f"overlay {action.path} kept changing while deleting it")

    async def _deactivate(self, run: _Execution, action: DeactivateDeployments) -> None:
        if action.known_id is not None:
            ids = [action.known_id]
        else:
            ids = await run.repo.active_deployments(action.environment)
        for dep in ids:
            await run.repo.set_deployment_status(
                dep, DeploymentStatus("inactive", "Preview removed")
            )

    async def _upsert_comment(self, run: _Execution, action: UpsertComment) -> None:
        text = action.text
        comment_id = action.comment_id
        if comment_id is None or not await run.repo.edit_comment(comment_id, text.body):
            comment_id = await run.repo.create_comment(run.obs.pr.number, text.body)
        run.produced = replace(
            run.produced,
            comment_id=comment_id,
            comment_state=text.state.value,
            comment_fingerprint=text.fingerprint,
        )
