"""The full resync: every repository in scope, so the cluster and the PRs converge whatever
deliveries were lost, duplicated, late or failed.

GitHub never redelivers a failed webhook by itself. At start and every `resync_seconds` the
leader lists, per repository in scope, its open PRs (a conditional read: an unchanged list is a
free 304), the overlays on the branch and the managed Applications, and queues a sync for every
PR whose preview is not what the rule says (a lost `labeled`, `synchronize` or `closed`, a
preview past its TTL or its ready timeout, a create whose answer was lost). Overlays no open,
labeled PR owns are removed in one commit per repository; Applications of repositories the App
no longer covers are removed (their overlays cannot be: the App has no access any more).
Deployments in a running preview's environment other than the one it runs (made by hand or by
another tool) are marked inactive, so each environment keeps at most one that is not.
`plan_resync` and `stray_deployments` are the pure parts; `Resyncer` reads and acts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cachetools import LRUCache

from bot.config import Settings
from bot.errors import Conflict, PermanentError, TemporaryError
from bot.metrics import Metrics
from bot.model import (
    DeploymentStatus,
    ListedDeployment,
    ObservedApp,
    PullRequest,
    State,
    Work,
    WorkKey,
    known_value,
)
from bot.plan import wants_preview
from bot.policy import keep_ended, ttl_of
from bot.ports import ClusterPort, GitHubPort, RepoInfo, RepoPort
from bot.queue import KeyedQueue
from bot.readiness import health_of
from bot.render import NAMESPACE_COMPONENT, names, previews_root
from bot.scope import in_scope

log = logging.getLogger(__name__)

LOW_BUDGET = 0.10  # below this share of its hourly requests an installation's resync waits
ORPHAN_ATTEMPTS = 3  # commits tried per resync when the branch keeps moving under it
# Stray deployments marked inactive (or found gone), remembered so that a later resync posts
# nothing again: (repository, deployment id), about 200 bytes each (measured with tracemalloc),
# so at most about 2 MB. One forgotten (evicted, or a new process) costs one more inactive
# status on it, nothing worse.
STRAYS_REMEMBERED = 10_000
STRAY_DESCRIPTION = "Not made by preview-bot for the running head; marked inactive by the resync"


@dataclass(frozen=True)
class RepoView:
    """One repository as the resync reads it."""

    repo: str
    pulls: tuple[PullRequest, ...]  # the open PRs
    apps: tuple[ObservedApp, ...]  # the managed Applications of this repository
    overlays: dict[int, tuple[str, ...]]  # PR number -> the files of its overlay directory


@dataclass(frozen=True)
class ResyncPlan:
    """What the resync does for one repository: PRs to sync, orphaned overlay files to remove."""

    sync: tuple[int, ...]
    orphans: tuple[str, ...]


def overlay_pattern(settings: Settings) -> re.Pattern[str]:
    """Matches a PR's overlay directory (relative to the repository) and captures its number."""
    directory = settings.overlay_path_template.rsplit("/", 1)[0]
    pattern = ""
    for literal, field in re.findall(r"([^{]*)(?:\{(\w+)\})?", directory):
        pattern += re.escape(literal)
        if field == "number":
            pattern += r"(?P<number>[1-9][0-9]*)"
        elif field:
            pattern += r"[^/]+"
    return re.compile(pattern + "/")


def overlays_by_pr(settings: Settings, files: list[str]) -> dict[int, tuple[str, ...]]:
    """The files under the previews root, grouped by the PR whose overlay they belong to."""
    pattern = overlay_pattern(settings)
    found: dict[int, list[str]] = {}
    for path in files:
        match = pattern.match(path)
        if match and f"/{NAMESPACE_COMPONENT}/" not in f"/{path}":
            found.setdefault(int(match["number"]), []).append(path)
    return {number: tuple(paths) for number, paths in found.items()}


def plan_resync(view: RepoView, settings: Settings, now: datetime, busy: set[int]) -> ResyncPlan:
    """Which PRs of the repository need a sync, and which overlays are orphans. Pure.

    `busy` are PRs with a sync queued or running: their overlay may be new, never an orphan.
    """
    wanted = {pr.number: pr for pr in view.pulls if wants_preview(pr, settings)}
    open_numbers = {pr.number for pr in view.pulls}
    apps = {app.number: app for app in view.apps if app.number is not None}
    sync: set[int] = set()
    for number, pr in wanted.items():
        app = apps.get(number)
        if app is None or _stale(app, pr, settings, now):
            sync.add(number)
    for number, app in apps.items():
        if number not in wanted or number not in open_numbers:
            sync.add(number)  # closed, unlabeled or excluded while its delivery was lost
        elif known_value(app.record.intent):
            sync.add(number)  # a create whose answer was lost: find it
    orphans = [
        path
        for number, paths in view.overlays.items()
        if number not in wanted and number not in apps and number not in busy
        for path in paths
    ]
    return ResyncPlan(tuple(sorted(sync)), tuple(sorted(orphans)))


def _stale(app: ObservedApp, pr: PullRequest, settings: Settings, now: datetime) -> bool:
    """A running preview that a sync must look at: an old head, an expiry or its warning due,
    a deploy Argo CD has given its verdict on (an event the watch lost) or whose ready timeout
    passed, a teardown stuck."""
    if app.terminating or app.head_sha != pr.head_sha:
        return True
    record = app.record
    ttl = ttl_of(record, pr, settings, now)
    if ttl.warn or ttl.expired or keep_ended(record, pr, settings):
        return True
    if record.comment_state != State.DEPLOYING.value:
        return False
    return health_of(app, record, pr.head_sha, settings, now).state is not State.DEPLOYING


def stray_deployments(app: ObservedApp, listed: Sequence[ListedDeployment]) -> tuple[int, ...]:
    """The deployments in a running preview's environment (its Application's name; GitHub's
    environment names ignore case) that must be inactive: every one newer than the recorded
    one (made since, by hand or by another tool), and the older ones the bot did not make (it
    marks its own inactive when a newer head supersedes them; nobody marks anyone else's).
    Pure; empty while the preview's deployment is not known."""
    current = known_value(app.record.deployment_id)
    if current is None:
        return ()
    return tuple(
        d.id
        for d in listed
        if d.environment.lower() == app.name.lower()
        and d.id != current
        and (d.id > current or not d.marked)
    )


def _running(app: ObservedApp, skip: set[int]) -> bool:
    """A preview whose deployment is known and settled: no sync queued or running for it, none
    planned by this resync, no create in flight (a sync may be making its next deployment)."""
    return (
        not app.terminating
        and app.number is not None
        and app.number not in skip
        and known_value(app.record.deployment_id) is not None
        and known_value(app.record.intent) is None
    )


@dataclass
class ResyncReport:
    """What one resync did, for logs, metrics and tests."""

    repositories: int = 0
    queued: int = 0
    orphans_removed: int = 0
    deferred: int = 0  # installations skipped for their rate-limit budget
    removed_apps: int = 0
    skipped: int = 0  # repositories GitHub refused to list (no access, gone): said, counted
    strays_marked: int = 0  # deployments of running previews' environments marked inactive
    strays_failed: int = 0  # marks that failed: tried again at the next resync


class Resyncer:
    """Reads every repository in scope and converges it; run by the leader only."""

    def __init__(
        self,
        settings: Settings,
        github: GitHubPort,
        cluster: ClusterPort,
        queue: KeyedQueue,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.github = github
        self.cluster = cluster
        self.queue = queue
        self.metrics = metrics
        self._marked: LRUCache[tuple[str, int], bool] = LRUCache(STRAYS_REMEMBERED)

    async def run(self, now: datetime) -> ResyncReport:
        report = ResyncReport()
        apps = await self.cluster.list_managed()
        covered: dict[str, RepoInfo] = {}
        deferred: set[int] = set()
        for inst in await self.github.installations():
            remaining = self.github.rate_remaining(inst)
            if remaining is not None and remaining < LOW_BUDGET:
                deferred.add(inst)  # webhook work first; the next resync comes back
                if self.metrics is not None:
                    self.metrics.resync_deferred.inc()
                continue
            for info in await self.github.installation_repos(inst):
                if in_scope(self.settings.repositories, info.full_name):
                    covered[info.full_name] = info
        report.deferred = len(deferred)
        for name, info in sorted(covered.items()):
            repo_apps = [a for a in apps if a.owned_by(name)]
            await self._repository(info, repo_apps, now, report)
        await self._uninstalled(apps, covered, deferred, report)
        log.info(
            "resync: %d repositories, %d PRs queued, %d orphan files removed, %d installations "
            "deferred, %d Applications of uninstalled repositories removed, %d repositories "
            "skipped, %d stray deployments marked inactive (%d failed)",
            report.repositories,
            report.queued,
            report.orphans_removed,
            report.deferred,
            report.removed_apps,
            report.skipped,
            report.strays_marked,
            report.strays_failed,
        )
        return report

    async def _repository(
        self, info: RepoInfo, apps: list[ObservedApp], now: datetime, report: ResyncReport
    ) -> None:
        repo, inst = info.full_name, info.installation_id
        client = self.github.repo(inst, repo)
        report.repositories += 1
        ours = tuple(a for a in apps if a.owned_by(repo) and a.installation_id in (None, inst))
        # The overlays first, then the PRs: an overlay listed here was written before the list
        # of PRs was read, so a PR that owns it is in that list.
        branch = self.settings.deploy_branch or info.default_branch
        try:
            files = await client.list_files(previews_root(self.settings), branch) or []
            pulls = tuple(await client.open_pulls())
        except PermanentError as exc:
            # Nothing to put on a PR; counted (metric and summary line) so it shows up.
            log.warning("resync of %s skipped: %s", repo, exc)
            report.skipped += 1
            if self.metrics is not None:
                self.metrics.resync_skipped.inc()
            return
        view = RepoView(repo, pulls, ours, overlays_by_pr(self.settings, files))
        busy = self.queue.busy(repo)
        plan = plan_resync(view, self.settings, now, busy)
        for number in plan.sync:
            self.queue.put_nowait(Work(WorkKey(repo, number), inst, "resync"))
        report.queued += len(plan.sync)
        if plan.orphans:
            removed = await self._remove_orphans(client, repo, plan.orphans, branch)
            report.orphans_removed += removed
        running = [app for app in ours if _running(app, busy | set(plan.sync))]
        if running:  # a repository without a running preview reads no deployments
            await self._strays(client, repo, running, report)

    async def _remove_orphans(
        self, client: RepoPort, repo: str, orphans: tuple[str, ...], branch: str
    ) -> int:
        """Remove orphan overlay files in one commit; how many were removed. When a sync's
        commit moved the branch meanwhile (a busy repository; found by the chaos test, seed
        3), again on the new head rather than a whole period later."""
        message = f"chore(preview): remove {len(orphans)} orphaned preview overlay files [skip ci]"
        for attempt in range(1, ORPHAN_ATTEMPTS + 1):
            try:
                await client.delete_files(list(orphans), branch, message)
            except Conflict as exc:
                if attempt == ORPHAN_ATTEMPTS:
                    log.info("orphan overlays of %s left for the next resync: %s", repo, exc)
            except TemporaryError as exc:
                log.info("orphan overlays of %s left for the next resync: %s", repo, exc)
                return 0
            else:
                log.info("removed orphan overlays of %s: %s", repo, ", ".join(orphans))
                return len(orphans)
        return 0

    async def _strays(
        self, client: RepoPort, repo: str, running: list[ObservedApp], report: ResyncReport
    ) -> None:
        """Mark inactive the deployments in the running previews' environments that are not
        theirs. One read of the repository's newest deployments (conditional: unchanged, it is
        free); a mark only for a stray not marked before, after reading the Application again."""
        try:
            listed = await client.recent_deployments()
        except (TemporaryError, PermanentError) as exc:
            log.warning("stray deployments of %s not read, the next resync tries: %s", repo, exc)
            return
        for app in running:
            strays = [d for d in stray_deployments(app, listed) if (repo, d) not in self._marked]
            if strays and await self._unchanged(app, repo):
                for dep in strays:
                    await self._mark_stray(client, repo, app, dep, report)

    async def _unchanged(self, app: ObservedApp, repo: str) -> bool:
        """The preview still runs the deployment the resync read, and no sync has begun for it
        since: a sync records its create's intent before it makes a deployment, and its id
        after, so a deployment of the bot's own in flight never passes for a stray."""
        if app.number in self.queue.busy(repo):
            return False
        try:
            now = await self.cluster.get(app.name)
        except (TemporaryError, PermanentError) as exc:
            log.info("stray deployments of %s left for the next resync: %s", app.name, exc)
            return False
        return (
            now is not None
            and now.owned_by(repo)
            and not now.terminating
            and now.record.deployment_id == app.record.deployment_id
            and known_value(now.record.intent) is None
        )

    async def _mark_stray(
        self, client: RepoPort, repo: str, app: ObservedApp, dep: int, report: ResyncReport
    ) -> None:
        """One inactive status on a stray; a failure is counted and left for the next resync."""
        try:
            found = await client.set_deployment_status(
                dep, DeploymentStatus("inactive", STRAY_DESCRIPTION)
            )
        except (TemporaryError, PermanentError, Conflict) as exc:
            log.warning(
                "stray deployment %d in %s not marked inactive, the next resync tries: %s",
                dep,
                app.name,
                exc,
                extra={"repo": repo, "pr": app.number},
            )
            report.strays_failed += 1
            if self.metrics is not None:
                self.metrics.stray_deployments.labels("failed").inc()
            return
        self._marked[(repo, dep)] = True
        if not found:
            return  # deleted meanwhile: nothing left to mark
        log.info(
            "marked stray deployment %d in %s inactive",
            dep,
            app.name,
            extra={"repo": repo, "pr": app.number},
        )
        report.strays_marked += 1
        if self.metrics is not None:
            self.metrics.stray_deployments.labels("marked").inc()

    async def _uninstalled(
        self,
        apps: list[ObservedApp],
        covered: dict[str, RepoInfo],
        deferred: set[int],
        report: ResyncReport,
    ) -> None:
        """Remove the Applications of repositories the App no longer covers (uninstalled or
        deleted); their overlays stay, since the App can no longer write there. With no PR to
        tell, the bot's finalizer goes as soon as Argo CD has pruned (at a later resync)."""
        # GitHub's names ignore case: an Application annotated Acme/Dex belongs to acme/dex, and
        # must not be taken for a repository the App lost (and deleted) when its case changed.
        covered_names = {name.lower() for name in covered}
        for app in apps:
            if (
                app.repo is None
                or app.repo.lower() in covered_names
                or not in_scope(self.settings.repositories, app.repo)
            ):
                continue
            if app.installation_id in deferred:
                continue  # its installation was not read this round
            try:
                await self._remove_uncovered(app, report)
            except PermanentError as exc:
                # No PR to tell: said here, and tried again by the next resync (its period is
                # the backoff); the other Applications go on.
                log.warning("Application %s left for the next resync: %s", app.name, exc)

    async def _remove_uncovered(self, app: ObservedApp, report: ResyncReport) -> None:
        """Delete an uncovered repository's Application, or release it once Argo CD pruned."""
        if app.terminating:
            if app.releasable and await self.cluster.release(app.name):
                log.info("released Application %s: Argo CD pruned it", app.name)
                if self.metrics is not None:
                    self.metrics.applications_released.labels("uninstalled").inc()
            return  # Argo CD still prunes (released at a later resync), or it is gone already
        log.warning(
            "removing Application %s: the App no longer covers %s (uninstalled or deleted); "
            "its overlay %s stays in git, as the App can no longer write there",
            app.name,
            app.repo,
            names(self.settings, app.repo or "", app.number or 0).overlay_dir,
        )
        await self.cluster.delete(app.name)
        report.removed_apps += 1
