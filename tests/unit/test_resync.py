"""The full resync and the supervisor on in-memory ports: what converges, what is left alone,
and that background tasks come back after a fault."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta

import pytest

from bot.errors import Conflict, PermanentError, TemporaryError
from bot.model import (
    FINALIZER,
    TEARDOWN_FINALIZER,
    AppStatus,
    ListedDeployment,
    Work,
    WorkKey,
    record_annotation,
)
from bot.queue import KeyedQueue
from bot.resync import (
    STRAY_DESCRIPTION,
    RepoView,
    Resyncer,
    overlays_by_pr,
    plan_resync,
    stray_deployments,
)
from bot.service import Bot
from bot.supervisor import Supervisor
from tests.memory import REPO, MemoryCluster, MemoryGitHub, MemoryRepo
from tests.unit.test_plan import COMMIT, NOW, SETTINGS, SHA1, SHA2, deployed_app, pr
from tests.unit.test_syncer import BASE

OVERLAY = "infra/argocd/previews/pr-{}/kustomization.yaml"


def view(pulls: list, apps: list, overlays: list[int] = ()) -> RepoView:  # type: ignore[type-arg, assignment]
    files = [OVERLAY.format(n) for n in overlays]
    return RepoView(REPO, tuple(pulls), tuple(apps), overlays_by_pr(SETTINGS, files))


async def app_of(
    cluster: MemoryCluster,
    repo: str,
    installation: int,
    finalizers: tuple[str, ...] = (),
    number: int = 5,
) -> None:
    """Application dex-pr-`number` of the bot, annotated for `repo` under `installation`."""
    meta: dict[str, object] = {
        "name": f"dex-pr-{number}",
        "labels": {"app.kubernetes.io/managed-by": "preview-bot"},
        "annotations": {
            "preview-bot.io/repo": repo,
            "preview-bot.io/pr": str(number),
            "preview-bot.io/installation": str(installation),
        },
    }
    if finalizers:
        meta["finalizers"] = list(finalizers)
    await cluster.apply({"metadata": meta, "spec": {}})


@asynccontextmanager
async def resyncing(
    cluster: MemoryCluster | None = None,
    repo: MemoryRepo | None = None,
    scope: tuple[str, ...] = ("data-literate/*",),
) -> AsyncIterator[Bot]:
    """A bot over the in-memory GitHub (installation 5, REPO) and cluster, no resync yet."""
    bot = Bot(replace(SETTINGS, repositories=scope))
    bot.resync_at_start = False
    bot.start(MemoryGitHub(repo or MemoryRepo(files=BASE)), cluster or MemoryCluster())
    try:
        yield bot
    finally:
        await bot.stop()


def test_overlay_directories_are_matched_to_their_prs() -> None:
    files = [
        OVERLAY.format(7),
        "infra/argocd/previews/pr-7/extra.yaml",
        "infra/argocd/previews/_namespace/kustomization.yaml",
        "infra/argocd/previews/README.md",
        "infra/argocd/previews/pr-x/kustomization.yaml",
    ]
    found = overlays_by_pr(SETTINGS, files)
    assert found == {7: (OVERLAY.format(7), "infra/argocd/previews/pr-7/extra.yaml")}


def test_a_labeled_pr_without_preview_and_a_lost_push_are_synced() -> None:
    fresh = pr(number=8)
    pushed = pr(head_sha=SHA2)
    plan = plan_resync(view([fresh, pushed], [deployed_app(SHA1)]), SETTINGS, NOW, set())
    assert plan.sync == (8, 42)


def test_an_idle_repository_plans_nothing() -> None:
    app = deployed_app(SHA1)
    assert plan_resync(view([pr()], [app], [42]), SETTINGS, NOW, set()).sync == ()


def test_a_preview_of_a_closed_or_unlabeled_pr_is_torn_down() -> None:
    apps = [deployed_app(SHA1), replace(deployed_app(SHA1), name="dex-pr-9", number=9)]
    unlabeled = pr(labels=frozenset())
    plan = plan_resync(view([unlabeled], apps), SETTINGS, NOW, set())
    assert plan.sync == (9, 42)


def test_a_pruned_application_the_bot_holds_is_visited() -> None:
    # The bot was down when Argo CD finished: only the resync finds the PR again (closed: no
    # longer in the open list; relabeled: its Application is terminating).
    held = replace(deployed_app(SHA1), terminating=True, held=True, pruned=True)
    assert plan_resync(view([], [held]), SETTINGS, NOW, set()).sync == (42,)
    assert plan_resync(view([pr()], [held]), SETTINGS, NOW, set()).sync == (42,)


def test_orphan_overlays_are_those_no_open_labeled_pr_owns() -> None:
    plan = plan_resync(view([pr()], [deployed_app()], [42, 43, 44]), SETTINGS, NOW, {44})
    assert plan.orphans == (OVERLAY.format(43),)  # 44 is being synced: maybe brand new


def test_expiry_and_its_warning_are_due_without_any_event() -> None:
    app = deployed_app(SHA1, comment_state="ready")
    assert plan_resync(view([pr()], [app]), SETTINGS, NOW + timedelta(days=6, hours=1), set()).sync
    assert plan_resync(view([pr()], [app]), SETTINGS, NOW + timedelta(days=1), set()).sync == ()


async def test_the_bot_converges_a_lost_label_and_a_lost_close_by_resync() -> None:
    repo = MemoryRepo(files=BASE)
    repo.open_pull(8, SHA1)
    github, cluster = MemoryGitHub(repo), MemoryCluster()
    bot = Bot(replace(SETTINGS, repositories=(REPO,), teardown_grace_seconds=0.05))
    bot.start(github, cluster)  # the resync at start finds PR 8, whose delivery was lost
    try:
        await bot.idle(quiet=0.1, limit=5)
        assert "dex-pr-8" in cluster.objects
        repo.change_pull(8, state="closed")  # and its close is lost too
        report = await bot.resync_once()
        assert report.queued == 1
        await bot.idle(quiet=0.1, limit=5)
        assert cluster.objects["dex-pr-8"]["metadata"].get("deletionTimestamp")
    finally:
        await bot.stop()


async def test_an_out_of_scope_repository_is_never_touched() -> None:
    repo = MemoryRepo(files=BASE)
    repo.open_pull(8, SHA1)
    bot = Bot(replace(SETTINGS, repositories=("someone/else",)))
    cluster = MemoryCluster()
    bot.start(MemoryGitHub(repo), cluster)
    try:
        await bot.idle(quiet=0.1, limit=5)
    finally:
        await bot.stop()
    assert cluster.objects == {} and repo.calls == []


async def test_orphans_are_removed_in_one_commit() -> None:
    files = {**BASE, OVERLAY.format(3): "a", OVERLAY.format(4): "b"}
    repo = MemoryRepo(files=files)
    async with resyncing(repo=repo, scope=(REPO,)) as bot:
        report = await bot.resync_once()
    assert report.orphans_removed == 2 and len(repo.commits) == 1
    assert OVERLAY.format(3) not in repo.branches["main"]


async def test_orphan_removal_tries_again_when_a_commit_moved_the_branch() -> None:
    repo = MemoryRepo(files={**BASE, OVERLAY.format(3): "a"})
    repo.fail_next("delete_files", Conflict("not a fast forward"), Conflict("again"))
    async with resyncing(repo=repo, scope=(REPO,)) as bot:
        report = await bot.resync_once()
    assert report.orphans_removed == 1 and repo.calls.count("delete_files") == 3
    assert OVERLAY.format(3) not in repo.branches["main"]


async def test_applications_of_an_uninstalled_repository_are_removed() -> None:
    cluster = MemoryCluster()
    await app_of(cluster, "data-literate/gone", 77)
    async with resyncing(cluster) as bot:
        report = await bot.resync_once()
    assert report.removed_apps == 1 and "dex-pr-5" not in cluster.objects


async def test_a_refused_removal_is_said_and_tried_again_and_the_others_go_on() -> None:
    cluster = MemoryCluster()
    await app_of(cluster, "data-literate/gone", 77)
    await app_of(cluster, "data-literate/gone", 77, number=6)
    cluster.fail_next("delete", PermanentError("403 Forbidden: applications is forbidden", 403))
    async with resyncing(cluster) as bot:
        first = await bot.resync_once()
        assert first.removed_apps == 1 and len(cluster.objects) == 1  # one refused, one gone
        second = await bot.resync_once()
    assert second.removed_apps == 1 and cluster.objects == {}


async def test_an_application_annotated_in_another_case_is_its_repositorys_not_a_stray() -> None:
    # GitHub's names ignore case (an owner renamed from Data-Literate to data-literate): the
    # Application stays and its PR is resynced as the repository's.
    cluster = MemoryCluster()
    await app_of(cluster, REPO.upper(), 5)
    async with resyncing(cluster) as bot:
        report = await bot.resync_once()
    assert report.removed_apps == 0 and "dex-pr-5" in cluster.objects
    assert report.queued == 1  # its PR is gone from GitHub: a teardown, through the PR


async def test_applications_of_an_uninstalled_repository_are_released_once_pruned() -> None:
    cluster = MemoryCluster()
    await app_of(cluster, "data-literate/gone", 77, (FINALIZER, TEARDOWN_FINALIZER))
    async with resyncing(cluster) as bot:
        report = await bot.resync_once()
        assert report.removed_apps == 1
        app = await cluster.get("dex-pr-5")
        assert app is not None and app.terminating and not app.pruned
        await bot.resync_once()  # Argo CD still prunes: left alone
        assert cluster.calls.count("delete") == 1 and "release" not in cluster.calls
        cluster.finish_deletion("dex-pr-5")
        await bot.resync_once()
    assert cluster.calls.count("release") == 1 and "dex-pr-5" not in cluster.objects


def released(bot: Bot, reason: str) -> float | None:
    """preview_bot_applications_released_total{reason} as a scrape would read it."""
    return bot.metrics.registry.get_sample_value(
        "preview_bot_applications_released_total", {"reason": reason}
    )


async def pruned_uninstalled(cluster: MemoryCluster, bot: Bot) -> None:
    """dex-pr-5 of an uninstalled repository, deleted by a resync and pruned by Argo CD: only
    the bot's finalizer holds it."""
    await app_of(cluster, "data-literate/gone", 77, (FINALIZER, TEARDOWN_FINALIZER))
    await bot.resync_once()
    cluster.finish_deletion("dex-pr-5")
    app = await cluster.get("dex-pr-5")
    assert app is not None and app.releasable


async def test_the_release_of_an_uninstalled_repositorys_application_is_counted() -> None:
    cluster = MemoryCluster()
    async with resyncing(cluster) as bot:
        await pruned_uninstalled(cluster, bot)
        assert released(bot, "uninstalled") == 0  # deleted, not released yet
        await bot.resync_once()
        assert "dex-pr-5" not in cluster.objects
        assert released(bot, "uninstalled") == 1
        assert released(bot, "teardown") == 0
        await bot.resync_once()  # gone: nothing more to release or count
        assert released(bot, "uninstalled") == 1


async def test_a_refused_release_by_the_resync_is_not_counted() -> None:
    cluster = MemoryCluster()
    async with resyncing(cluster) as bot:
        await pruned_uninstalled(cluster, bot)
        cluster.fail_next("release", PermanentError("403 Forbidden: applications is forbidden"))
        await bot.resync_once()  # said, and left for the next resync
        assert "dex-pr-5" in cluster.objects
        assert released(bot, "uninstalled") == 0
        await bot.resync_once()
        assert "dex-pr-5" not in cluster.objects
        assert released(bot, "uninstalled") == 1


async def test_a_resync_release_that_finds_the_application_gone_is_not_counted() -> None:
    cluster = MemoryCluster()
    async with resyncing(cluster) as bot:
        await pruned_uninstalled(cluster, bot)
        release = cluster.release

        async def released_elsewhere(name: str) -> bool:
            cluster.objects.pop(name)  # another replica let it go after the resync's list
            return await release(name)

        cluster.release = released_elsewhere  # type: ignore[method-assign]
        await bot.resync_once()
        assert cluster.calls[-1] == "release"
        assert released(bot, "uninstalled") == 0


# ---- supervision -----------------------------------------------------------------------------


async def test_a_failing_task_is_restarted_and_reported() -> None:
    sup = Supervisor()
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("the watch broke")
        sup.alive("flaky")
        await asyncio.Event().wait()

    sup.spawn("flaky", flaky)
    try:
        for _ in range(300):
            if runs >= 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)
        (line,) = sup.report()
        assert runs == 2 and "flaky: running" in line and "1 restarts" in line
        assert "RuntimeError: the watch broke" in line
    finally:
        await sup.stop()


async def test_a_stalled_task_is_restarted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bot.supervisor.WATCHDOG_SECONDS", 0.02)
    monkeypatch.setattr("bot.supervisor.MAX_BACKOFF", 0.01)
    sup = Supervisor()
    starts = 0

    async def hangs() -> None:
        nonlocal starts
        starts += 1
        await asyncio.Event().wait()  # never a sign of life

    sup.spawn("watch", hangs, stall_after=0.05)
    try:
        for _ in range(500):
            if starts >= 2:
                break
            await asyncio.sleep(0.01)
        assert starts >= 2
        assert "stalled" in sup.tasks["watch"].last_error
    finally:
        await sup.stop()


async def test_stopping_everything_while_a_stopping_task_stops_others() -> None:
    """Killing a leader cancels every task at once; the election task's cancellation stops
    the workers too (on_stopped_leading). Both stops finish, each task awaited once."""
    sup = Supervisor()
    stopped_inside = asyncio.Event()

    async def election() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await sup.stop(["worker-0", "worker-1"])
            stopped_inside.set()

    async def work() -> None:
        await asyncio.Event().wait()

    for name in ("worker-0", "worker-1"):
        sup.spawn(name, work)
    sup.spawn("leader-election", election)
    await asyncio.sleep(0.01)
    await sup.stop()
    assert stopped_inside.is_set()
    assert {state.state for state in sup.tasks.values()} == {"stopped"}


async def test_followers_do_not_act_and_leaders_do() -> None:
    class Elector:
        def __init__(self) -> None:
            self.lead = asyncio.Event()
            self.released = False

        async def run(self, started, stopped) -> None:  # type: ignore[no-untyped-def]
            await stopped()
            await self.lead.wait()
            await started()
            await asyncio.Event().wait()

        async def release(self) -> None:
            self.released = True

    repo = MemoryRepo(files=BASE)
    repo.open_pull(8, SHA1)
    cluster = MemoryCluster()
    elector = Elector()
    bot = Bot(replace(SETTINGS, repositories=(REPO,)))
    bot.start(MemoryGitHub(repo), cluster, elector=elector)
    try:
        await asyncio.sleep(0.05)
        assert not bot.leading and repo.calls == []
        bot.queue.put_nowait(Work(WorkKey(REPO, 8), 5))
        await asyncio.sleep(0.05)
        assert cluster.objects == {}  # a follower's queue is not worked
        elector.lead.set()
        await bot.idle(quiet=0.1, limit=5)
        assert bot.leading and "dex-pr-8" in cluster.objects
    finally:
        await bot.stop()
    assert elector.released


def test_a_deploy_past_its_ready_timeout_is_synced() -> None:
    app = deployed_app(SHA1)  # still deploying
    later = NOW + timedelta(seconds=SETTINGS.ready_timeout_seconds + 1)
    assert plan_resync(view([pr()], [app]), SETTINGS, later, set()).sync == (42,)


def test_a_verdict_the_watch_lost_is_synced_and_one_about_another_revision_is_not() -> None:
    healthy = AppStatus(sync="Synced", health="Healthy", revision=COMMIT)
    app = deployed_app(SHA1, status=healthy)  # the comment still says deploying
    assert plan_resync(view([pr()], [app]), SETTINGS, NOW, set()).sync == (42,)
    old = deployed_app(SHA1, status=replace(healthy, revision="0ld" + COMMIT[3:]))
    assert plan_resync(view([pr()], [old]), SETTINGS, NOW, set()).sync == ()
    running = deployed_app(SHA1, status=replace(healthy, health="Progressing"))
    assert plan_resync(view([pr()], [running]), SETTINGS, NOW, set()).sync == ()


# ---- stray deployments -----------------------------------------------------------------------


def listed(*rows: tuple[int, str, bool]) -> list[ListedDeployment]:
    return [ListedDeployment(i, SHA1, env, marked) for i, env, marked in rows]


def test_strays_are_the_newer_deployments_and_the_older_ones_the_bot_did_not_make() -> None:
    app = deployed_app(SHA1, deployment_id=10)  # environment dex-pr-42, running deployment 10
    found = listed(
        (14, "dex-pr-42", True),  # newer, even with the bot's marker: not the one running
        (13, "DEX-PR-42", False),  # by hand, named in other case: GitHub ignores case
        (12, "dex-pr-7", False),  # another preview's environment
        (11, "production", False),
        (10, "dex-pr-42", True),  # the running one
        (9, "dex-pr-42", False),  # older, by hand: nobody marks it but the resync
        (8, "dex-pr-42", True),  # older, the bot's: superseded, marked by the sync then
    )
    assert stray_deployments(app, found) == (14, 13, 9)
    unknown = deployed_app(SHA1, deployment_id=None)  # none recorded: nothing to compare with
    assert stray_deployments(unknown, found) == ()


@asynccontextmanager
async def running_preview(
    repo: MemoryRepo, cluster: MemoryCluster
) -> AsyncIterator[tuple[Bot, int]]:
    """A bot that has deployed PR 8 (environment dex-pr-8): the bot and its deployment's id."""
    repo.open_pull(8, SHA1)
    bot = Bot(replace(SETTINGS, repositories=(REPO,)))
    bot.start(MemoryGitHub(repo), cluster)
    try:
        await bot.idle(quiet=0.1, limit=5)
        (own,) = repo.deployments
        yield bot, own
    finally:
        await bot.stop()


async def test_a_stray_deployment_is_marked_inactive_once() -> None:
    repo, cluster = MemoryRepo(files=BASE), MemoryCluster()
    async with running_preview(repo, cluster) as (bot, own):
        stray = repo.add_foreign_deployment(SHA2, "dex-pr-8")
        elsewhere = repo.add_foreign_deployment(SHA2, "staging")
        repo.calls.clear()
        report = await bot.resync_once()
        assert (report.queued, report.strays_marked, report.strays_failed) == (0, 1, 0)
        assert repo.deployments[stray].state == "inactive"
        assert repo.deployments[stray].statuses[-1].description == STRAY_DESCRIPTION
        assert repo.deployments[own].state == "in_progress"  # the preview's own: untouched
        assert repo.deployments[elsewhere].state is None  # not a preview's environment
        assert repo.calls.count("recent_deployments") == 1
        assert repo.calls.count("set_deployment_status") == 1
        assert bot.metrics.stray_deployments.labels("marked")._value.get() == 1
        repo.calls.clear()
        again = await bot.resync_once()  # remembered: nothing posted twice
        assert again.strays_marked == 0 and "set_deployment_status" not in repo.calls


async def test_a_repository_without_a_running_preview_reads_no_deployments() -> None:
    repo = MemoryRepo(files=BASE)
    repo.add_foreign_deployment(SHA1, "dex-pr-8")  # a leftover, but no preview runs
    async with resyncing(repo=repo, scope=(REPO,)) as bot:
        report = await bot.resync_once()
    assert report.repositories == 1 and "recent_deployments" not in repo.calls
    assert "set_deployment_status" not in repo.calls


async def test_a_busy_pr_is_left_for_the_next_resync() -> None:
    repo, cluster = MemoryRepo(files=BASE), MemoryCluster()
    async with running_preview(repo, cluster) as (bot, _):
        stray = repo.add_foreign_deployment(SHA2, "dex-pr-8")
        queue = KeyedQueue(10)  # a sync of PR 8 waits in it (no worker takes it here)
        queue.put_nowait(Work(WorkKey(REPO, 8), 5, "test"))
        resyncer = Resyncer(bot.settings, MemoryGitHub(repo), cluster, queue)
        repo.calls.clear()
        report = await resyncer.run(bot.clock())
        assert report.strays_marked == 0 and repo.deployments[stray].state is None
        assert "recent_deployments" not in repo.calls  # its only preview is busy
        assert (await bot.resync_once()).strays_marked == 1  # settled: marked now


async def test_a_deployment_made_by_a_sync_between_the_reads_is_not_a_stray() -> None:
    """A sync of a new head records its intent, creates its deployment, then records its id;
    the resync read the Applications before and the deployments after: the Application read
    again tells it the preview moved on."""
    repo, cluster = MemoryRepo(files=BASE), MemoryCluster()
    async with running_preview(repo, cluster) as (bot, _):
        listing = repo.recent_deployments

        async def sync_meanwhile() -> list[ListedDeployment]:
            new = await repo.create_deployment(SHA2, "dex-pr-8", "a sync's deployment")
            await cluster.annotate("dex-pr-8", {record_annotation("intent"): "deployment:x"})
            found = await listing()
            await cluster.annotate("dex-pr-8", {record_annotation("deployment_id"): str(new)})
            return found

        repo.recent_deployments = sync_meanwhile  # type: ignore[method-assign]
        report = await bot.resync_once()
        assert report.strays_marked == 0
        assert all(d.state != "inactive" for d in repo.deployments.values())


async def test_a_failed_mark_is_counted_and_tried_again_at_the_next_resync() -> None:
    repo, cluster = MemoryRepo(files=BASE), MemoryCluster()
    async with running_preview(repo, cluster) as (bot, _):
        stray = repo.add_foreign_deployment(SHA2, "dex-pr-8")
        repo.fail_next("set_deployment_status", TemporaryError("GitHub answered 502"))
        report = await bot.resync_once()
        assert (report.strays_marked, report.strays_failed) == (0, 1)
        assert bot.metrics.stray_deployments.labels("failed")._value.get() == 1
        repo.fail_next("recent_deployments", TemporaryError("GitHub answered 502"))
        assert (await bot.resync_once()).strays_failed == 0  # not read: nothing tried
        report = await bot.resync_once()
        assert report.strays_marked == 1 and repo.deployments[stray].state == "inactive"
