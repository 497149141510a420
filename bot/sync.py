"""One sync of one PR: observe (GitHub + cluster) -> plan (pure) -> execute (through the ports).

Reads are kept to what the plan needs: the PR itself always (a conditional read, free when it
did not change), the Application (free: not GitHub's rate limit), and GitHub's comment list,
the repository layout, the label's author, checks or the image only when the record cannot
answer and a gate will look (`plan.needs`). Every create is safe to repeat: its intent is
recorded before the call and its id right after, so a retry after a lost answer finds the
object it made instead of making a second one.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from cachetools import LRUCache, TTLCache

from bot.commands import Verb, judge_all, verbs_of
from bot.comment import Author, read_comment
from bot.config import Settings
from bot.errors import Conflict, PermanentError, TemporaryError
from bot.metrics import Metrics
from bot.model import (
    UNKNOWN,
    AddReaction,
    ApplyApplication,
    CapSeen,
    CheckReport,
    ChecksSeen,
    CommandSeen,
    CreateDeployment,
    DeactivateDeployments,
    DeleteApplication,
    DeleteOverlay,
    DeploymentStatus,
    LabelSeen,
    Observed,
    ObservedApp,
    ObservedComment,
    Plan,
    PullRequest,
    PutOverlay,
    PutSharedFile,
    Record,
    RecordState,
    ReleaseApplication,
    ReportCheck,
    RequestSync,
    Requeue,
    SetDeploymentStatus,
    SetLabel,
    State,
    UpsertComment,
    Work,
    WorkKey,
    known_value,
)
from bot.parse import KUSTOMIZATION_NAMES
from bot.plan import Needs, needs, plan_failure, plan_sync, wants_preview
from bot.ports import ClusterPort, GitHubPort, ImagePort, RepoPort
from bot.render import image_tag, names, render_namespace_component

log = logging.getLogger(__name__)

MAX_WRITE_ATTEMPTS = 3
LAST_RECORDS = 10_000  # PRs whose last record this process remembers once their Application went
PERMISSION_SECONDS = 300  # how long a user's permission is trusted (issue: 5 minutes)
LAYOUT_SECONDS = 600  # how long a repository's layout (base overlay, Namespace component) is
CHECK_NAME = "preview"
WRITERS = frozenset({"admin", "write", "maintain"})
# How the check run shows each state of the preview.
_CHECK = {
    State.WAITING: ("queued", None),
    State.QUEUED: ("queued", None),
    State.DEPLOYING: ("in_progress", None),
    State.READY: ("completed", "success"),
    State.FAILED: ("completed", "failure"),
    State.NOT_DEPLOYED: ("completed", "failure"),
    State.DESTROYED: ("completed", "neutral"),
    State.TEARDOWN_PENDING: ("completed", "neutral"),
}


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
    app_name: str
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
        self.images: ImagePort | None = None  # the registry, when the image check is on
        # Each PR's record as last seen: once the Application is gone this spares reading
        # GitHub for the comment, overlay and deployments. Lost on a restart; the reads then
        # happen once (the comment and its hidden record, the file, the deployments list).
        self._last: LRUCache[WorkKey, Record] = LRUCache(maxsize=LAST_RECORDS)
        self._permissions: TTLCache[tuple[str, str], str] = TTLCache(4096, PERMISSION_SECONDS)
        self._layouts: TTLCache[tuple[str, str], tuple[bool, bool]] = TTLCache(1024, LAYOUT_SECONDS)
        self._author: Author | None = None
        # Heads waiting for a check or an image, so a `status` delivery (which names only a
        # commit) finds its PR: (repo, sha) -> PR numbers, bounded.
        self.waiting: LRUCache[tuple[str, str], frozenset[int]] = LRUCache(maxsize=LAST_RECORDS)

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
        ours = app is not None and app.owned_by(pr.repo)
        if not ours and record.comment_id is UNKNOWN and comment and comment.record:
            # No Application of ours and nothing remembered (a restart, or a name taken by
            # another repository's): the comment's hidden record tells what the bot knew (a
            # waiting or queued PR, a reported failure, a collision already said).
            record = replace(
                comment.record,
                comment_id=comment.id,
                comment_state=comment.state,
                comment_fingerprint=comment.fingerprint,
            )
        commands = tuple(
            [CommandSeen(c, await self._writer(repo, key.repo, c.author)) for c in work.commands]
        )
        deploying = Verb.DEPLOY in verbs_of(judge_all(commands))  # the commands' one judge
        want = needs(pr, record, app, self.settings, deploying)
        obs = Observed(
            pr=pr,
            installation_id=work.installation_id,
            app=app,
            record=record,
            comment=comment,
            base_ok=None,
            branch=branch,
            commands=commands,
        )
        return await self._facts(obs, repo, want, work)

    async def _facts(self, obs: Observed, repo: RepoPort, want: Needs, work: Work) -> Observed:
        """The facts the plan's gates need, and only those."""
        changes: dict[str, Any] = {}
        if want.layout:
            changes["base_ok"], changes["namespace_ok"] = await self._layout(repo, obs)
        if want.label:
            changes["label"] = await self._label(repo, obs.pr, work.label_actor)
        if want.checks:
            changes["checks"] = await self._checks(repo, obs.pr.head_sha)
        if want.image and self.images is not None:
            tag = image_tag(self.settings, obs.pr)
            changes["image"] = await self.images.manifest_exists(self.settings.image_name, tag)
        if want.cap:
            changes["cap"] = await self._cap(repo, obs.pr)
        return replace(obs, **changes)

    def _record_of(self, key: WorkKey, pr: PullRequest, app: ObservedApp | None) -> Record:
        """The Application's record when it is ours, else what this process last saw."""
        if app is None:
            return self._last.get(key, Record())
        record = app.record if app.owned_by(pr.repo) else Record()
        self._last[key] = record
        return record

    async def _find_comment(
        self, repo: RepoPort, pr: PullRequest, record: Record
    ) -> ObservedComment | None:
        if record.comment is not None:
            return record.comment
        if record.comment_id is None or pr.comment_count == 0:
            return None  # a PR with no comments at all has none of ours
        author = await self._comment_author()
        async for comment in repo.comments(pr.number):
            ours = read_comment(comment, author)
            if ours is not None:
                return ours
        return None

    async def _comment_author(self) -> Author:
        if self._author is None:
            self._author = Author(self.settings.github_app_id, await self.github.bot_login())
        return self._author

    async def _writer(self, repo: RepoPort, full_name: str, user: str) -> bool:
        """Whether `user` may write to the repository (cached: one request per 5 minutes)."""
        key = (full_name, user)
        permission = self._permissions.get(key)
        if permission is None:
            permission = await repo.permission(user)
            self._permissions[key] = permission
        return permission in WRITERS

    async def _label(self, repo: RepoPort, pr: PullRequest, actor: str | None) -> LabelSeen | None:
        label = self.settings.trigger_label
        at: int | None = None
        if actor is None:
            event = await repo.label_event(pr.number, label)
            if event is None:
                return None
            actor, at = event.actor, event.at
        return LabelSeen(actor, at, await self._writer(repo, pr.repo, actor))

    async def _layout(self, repo: RepoPort, obs: Observed) -> tuple[bool, bool]:
        """Does the branch hold the base overlay and the shared Namespace component?"""
        key = (obs.pr.repo, obs.branch)
        cached = self._layouts.get(key)
        if cached is not None:
            return cached
        n = names(self.settings, obs.pr.repo, obs.pr.number)
        top = posixpath.commonpath([n.base_dir, n.namespace_dir])  # "" for the root
        files = set(await repo.list_files(top, obs.branch) or [])
        base_ok = any(f"{n.base_dir}/{name}" in files for name in KUSTOMIZATION_NAMES)
        namespace_ok = set(render_namespace_component(self.settings)) <= files
        self._layouts[key] = (base_ok, namespace_ok)
        return base_ok, namespace_ok

    async def _checks(self, repo: RepoPort, sha: str) -> ChecksSeen:
        states = await repo.check_states(sha)
        pending: ChecksSeen | None = None
        for name in self.settings.required_checks:
            state, url = states.get(name, ("pending", None))
            if state == "failure":
                return ChecksSeen("failure", name, url)
            if state != "success" and pending is None:
                pending = ChecksSeen("pending", name, url)
        return pending or ChecksSeen("success", ",".join(self.settings.required_checks))

    async def _cap(self, repo: RepoPort, pr: PullRequest) -> CapSeen:
        """Previews of the repository in use, and this PR's place among the labeled PRs that
        wait for one, by label time (derived from GitHub and the cluster, so it survives a
        restart)."""
        apps = [a for a in await self.cluster.list_managed() if a.owned_by(pr.repo)]
        running = {a.number for a in apps}
        candidates = [
            other.number
            for other in await repo.open_pulls()
            if other.number not in running and wants_preview(other, self.settings)
        ]
        if len(candidates) <= self.settings.max_previews - len(apps):
            # Room for every one of them: the order (a label-event read each) changes nothing.
            order = candidates
        else:
            waiting: list[tuple[int, int]] = []
            for number in candidates:
                event = await repo.label_event(number, self.settings.trigger_label)
                waiting.append((event.at if event else 0, number))
            order = [number for _, number in sorted(waiting)]
        position = order.index(pr.number) + 1 if pr.number in order else len(order) + 1
        return CapSeen(len(apps), self.settings.max_previews, position)

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
            self._note_waiting(observed.pr, plan.state)
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

    def _note_waiting(self, pr: PullRequest, state: State) -> None:
        key = (pr.repo, pr.head_sha)
        numbers = self.waiting.get(key, frozenset())
        if state is State.WAITING:
            self.waiting[key] = numbers | {pr.number}
        elif pr.number in numbers:
            self.waiting[key] = numbers - {pr.number}

    def prs_waiting_on(self, repo: str, sha: str) -> frozenset[int]:
        """The PRs whose head `sha` waits for a check, a status or an image."""
        return self.waiting.get((repo, sha), frozenset())

    async def _report(self, observed: Observed, exc: PermanentError) -> None:
        """Put a permanent failure on the PR, once; never mask the original error."""
        current = self._last.get(WorkKey(observed.pr.repo, observed.pr.number), observed.record)
        try:
            # The failed sync may have created the Application: the record goes onto it, so
            # the failure is remembered across restarts and replicas.
            app = await self.cluster.get(
                names(self.settings, observed.pr.repo, observed.pr.number).app
            )
            observed = replace(observed, app=app, record=current)
            plan = plan_failure(observed, self.settings, self.clock(), str(exc))
            await self.execute(observed, plan, Outcome(plan))
        except Exception as report_exc:  # the comment itself may be what GitHub refuses
            log.warning("could not report the failure on the PR: %s", report_exc)

    def _count(self, result: str, started: float) -> None:
        if self.metrics is not None:
            self.metrics.syncs.labels(result=result).inc()
            self.metrics.sync_seconds.observe(time.perf_counter() - started)

    # ---- execute -------------------------------------------------------------------------

    async def execute(self, obs: Observed, plan: Plan, outcome: Outcome) -> None:
        pr = obs.pr
        name = names(self.settings, pr.repo, pr.number).app
        run = _Execution(obs, self.github.repo(obs.installation_id, pr.repo), outcome, name)
        run.app_gone = obs.app is None
        for action in plan.actions:
            await self._do(run, action)
            outcome.executed.append(type(action).__name__)

    async def _do(self, run: _Execution, action: object) -> None:
        handler = self._handlers[type(action)]
        await handler(run, action)

    @property
    def _handlers(self) -> dict[type, Callable[[_Execution, Any], Awaitable[None]]]:
        """Each action's executor (one small method per kind of write)."""
        return {
            PutOverlay: self._put_overlay,
            PutSharedFile: self._put_shared,
            DeleteOverlay: self._delete_overlay,
            ApplyApplication: self._apply,
            DeleteApplication: self._delete_application,
            RequestSync: self._request_sync,
            CreateDeployment: self._create_deployment,
            SetDeploymentStatus: self._set_deployment_status,
            DeactivateDeployments: self._deactivate,
            UpsertComment: self._upsert_comment,
            SetLabel: self._set_label,
            AddReaction: self._add_reaction,
            ReportCheck: self._report_check,
            Requeue: self._requeue,
            RecordState: self._record,
            ReleaseApplication: self._release,
        }

    async def _delete_application(self, run: _Execution, action: DeleteApplication) -> None:
        run.app_gone = await self.cluster.delete(action.name)

    async def _release(self, run: _Execution, action: ReleaseApplication) -> None:
        # Counted only when this call took the finalizer off: not when it raised, nor when the
        # Application was gone or released already (another replica, a retry after a lost answer).
        if await self.cluster.release(action.name) and self.metrics is not None:
            self.metrics.applications_released.labels("teardown").inc()
        run.app_gone = True  # it goes (once no other finalizer holds it): no more writes to it

    async def _request_sync(self, _run: _Execution, action: RequestSync) -> None:
        await self.cluster.request_sync(action.name)

    async def _set_label(self, run: _Execution, action: SetLabel) -> None:
        await run.repo.set_label(run.obs.pr.number, action.name, action.present)

    async def _add_reaction(self, run: _Execution, action: AddReaction) -> None:
        await run.repo.add_reaction(action.comment_id, action.content)

    async def _requeue(self, run: _Execution, action: Requeue) -> None:
        run.outcome.requeue_after = action.seconds

    async def _persist(self, run: _Execution, **values: Any) -> None:
        """Record values the moment they exist (an id, an intent), before the next call."""
        run.produced = replace(run.produced, **values)
        key = WorkKey(run.obs.pr.repo, run.obs.pr.number)
        self._last[key] = self._last.get(key, run.obs.record).updated_by(run.produced)
        if not run.app_gone:
            annotations = Record(**values).to_annotations()
            run.app_gone = not await self.cluster.annotate(run.app_name, annotations)

    async def _record(self, run: _Execution, action: RecordState) -> None:
        record = action.record.updated_by(replace(run.produced, intent=None))
        self._last[WorkKey(run.obs.pr.repo, run.obs.pr.number)] = record
        if not run.app_gone:
            run.app_gone = not await self.cluster.annotate(action.name, record.to_annotations())
        ready = known_value(record.ready_seconds)
        # Observed once per head: when the time to ready is first recorded (after it is stored,
        # so a retried sync does not count it twice).
        if ready is not None and known_value(run.obs.record.ready_seconds) is None and self.metrics:
            self.metrics.time_to_ready.observe(ready)

    async def _apply(self, run: _Execution, action: ApplyApplication) -> None:
        manifest = action.manifest
        commit = known_value(run.produced.overlay_commit)
        if commit is not None:  # pin the Application to the commit this sync wrote
            source = {**manifest["spec"]["source"], "targetRevision": commit}
            manifest = {**manifest, "spec": {**manifest["spec"], "source": source}}
        await self.cluster.apply(manifest)
        run.app_gone = False

    async def _create_deployment(self, run: _Execution, action: CreateDeployment) -> None:
        dep = None
        if action.recover:  # an earlier attempt may have made it and lost the answer
            dep = await run.repo.find_deployment(action.sha, action.environment)
        if dep is None:
            await self._persist(run, intent=f"deployment:{action.sha}")
            dep = await run.repo.create_deployment(
                action.sha, action.environment, action.description
            )
            await self._persist(run, deployment_id=dep, deployed_sha=action.sha, intent=None)
        else:
            await self._persist(run, deployment_id=dep, deployed_sha=action.sha, intent=None)
        status = DeploymentStatus(
            "in_progress", action.description, action.environment_url, action.log_url
        )
        await run.repo.set_deployment_status(dep, status)
        await self._persist(run, deployment_state="in_progress")

    async def _set_deployment_status(self, run: _Execution, action: SetDeploymentStatus) -> None:
        dep_id = action.deployment_id or known_value(run.produced.deployment_id)
        if dep_id is not None:
            await run.repo.set_deployment_status(dep_id, action.status)

    async def _report_check(self, run: _Execution, action: ReportCheck) -> None:
        rec = run.obs.record.updated_by(run.produced)
        status, conclusion = _CHECK[action.state]
        same_head = rec.check_run_sha == action.sha
        check_id = known_value(rec.check_run_id) if same_head else None
        old = known_value(rec.check_run_id)
        final = (State.READY.value, State.FAILED.value, State.DESTROYED.value)
        if not same_head and old is not None and known_value(rec.check_run_state) not in final:
            superseded = CheckReport(
                str(rec.check_run_sha),
                "completed",
                "neutral",
                "Superseded",
                f"A newer commit ({action.sha[:8]}) replaces this one.",
                None,
                old,
            )
            await run.repo.report_check(superseded)
        closing = action.state is State.DESTROYED  # a teardown closes a check run, never makes one
        if check_id is None and (closing or rec.intent == f"check_run:{action.sha}"):
            check_id = await run.repo.find_check(action.sha, CHECK_NAME)
            if check_id is None and closing:
                return
        report = CheckReport(
            action.sha,
            status,
            conclusion,
            action.title,
            action.summary,
            action.details_url,
            check_id,
        )
        if check_id is None:
            await self._persist(run, intent=f"check_run:{action.sha}")
        new_id = await run.repo.report_check(report)
        await self._persist(
            run,
            check_run_id=new_id,
            check_run_sha=action.sha,
            check_run_state=action.state.value,
            intent=None,
        )

    async def _put_shared(self, run: _Execution, action: PutSharedFile) -> None:
        # A Conflict means it exists already: another sync (or a person) made it.
        with contextlib.suppress(Conflict):
            await run.repo.put_file(
                action.path, action.branch, action.content, action.message, None
            )
        self._layouts.pop((run.obs.pr.repo, action.branch), None)

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
                head = await run.repo.branch_head(action.branch)
                current = await run.repo.get_file_sha(action.path, head or action.branch)
                if current == action.blob_sha:
                    # An earlier attempt wrote it and lost the answer: the branch's head holds
                    # exactly this overlay, so the Application is pinned there, never to the
                    # previous overlay's commit.
                    run.produced = replace(run.produced, overlay_blob=current, overlay_commit=head)
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
