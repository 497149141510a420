"""The middle layer: Syncer, Watcher and Bot on in-memory ports (no HTTP), in milliseconds.

What the planner decides is table-tested in test_plan.py and what the adapters do on the wire in
tests/integration; this layer checks the glue: what observe reads, how execute merges what it
produced into the record, how a permanent failure reaches the PR and how retries are scheduled.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.comment import COMMENT_MARKER, render_comment
from bot.config import Settings
from bot.errors import PermanentError, TemporaryError
from bot.metrics import Metrics
from bot.model import (
    A_COMMENT,
    A_DEPLOYMENT,
    A_OVERLAY_BLOB,
    FINALIZER,
    TEARDOWN_FINALIZER,
    UNKNOWN,
    ObservedApp,
    Record,
    State,
    Work,
    WorkKey,
    git_blob_sha,
)
from bot.parse import app_from_object
from bot.queue import KeyedQueue
from bot.render import render_namespace_component
from bot.service import Bot, Watcher
from bot.sync import Syncer
from tests.memory import BOT_LOGIN, REPO, MemoryCluster, MemoryGitHub, MemoryRepo

SHA1 = "1a2b3c4d" + "0" * 32
SHA2 = "9f8e7d6c" + "1" * 32
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings(
    github_app_id=1,
    github_private_key="k",
    github_webhook_secret="s",
    repositories=(REPO,),  # required by serve; the watch queues only repositories in scope
    retry_seconds=0.01,
    teardown_grace_seconds=0.05,
)
SETTINGS_FOR_LAYOUT = Settings(github_app_id=1, github_private_key="k", github_webhook_secret="s")
BASE = {
    "infra/argocd/overlays/preview/kustomization.yaml": "resources: []\n",
    **render_namespace_component(SETTINGS_FOR_LAYOUT),  # the repository had a preview before
}
OVERLAY = "infra/argocd/previews/pr-42/kustomization.yaml"
WORK = Work(WorkKey(REPO, 42), 5, "test")


class World:
    """The in-memory ports and a Syncer on them."""

    def __init__(self) -> None:
        self.repo = MemoryRepo(files=BASE)
        self.github = MemoryGitHub(self.repo)
        self.cluster = MemoryCluster()
        self.metrics = Metrics()
        self.syncer = Syncer(SETTINGS, self.github, self.cluster, self.metrics, clock=lambda: NOW)

    def released(self, reason: str) -> float | None:
        """preview_bot_applications_released_total{reason} as a scrape would read it."""
        return self.metrics.registry.get_sample_value(
            "preview_bot_applications_released_total", {"reason": reason}
        )

    async def pruned(self) -> None:
        """PR 42 deployed, then closed, and its Application pruned by Argo CD: only the bot's
        finalizer holds it, and the next sync releases it."""
        self.repo.open_pull(42, SHA1)
        await self.syncer.sync(WORK)
        self.repo.change_pull(42, state="closed")
        await self.syncer.sync(WORK)
        self.cluster.finish_deletion("dex-pr-42")
        assert (await self.app()).releasable

    def comment(self) -> str:
        (only,) = [c for c in self.repo.comments_on(42) if c.author == BOT_LOGIN]
        return only.body

    async def app(self) -> ObservedApp:
        app = await self.cluster.get("dex-pr-42")
        assert app is not None
        return app

    def writes(self) -> list[str]:
        reads = {
            "get_pull",
            "comments",
            "get_file_sha",
            "branch_head",
            "list_files",
            "active_deployments",
            "permission",
            "label_event",
        }
        return [c for c in self.repo.calls if c not in reads]


@pytest.fixture
def world() -> World:
    return World()


# ---- the record ------------------------------------------------------------------------------


def test_record_round_trips_through_annotations_with_explicit_unknown() -> None:
    record = Record.from_annotations({A_COMMENT: "12", A_OVERLAY_BLOB: "", "other": "x"})
    assert record.comment_id == 12
    assert record.overlay_blob is None  # "" is a known none: the file was removed
    assert record.deployment_id is UNKNOWN  # absent: never recorded, or lost
    assert record.to_annotations() == {A_COMMENT: "12", A_OVERLAY_BLOB: ""}
    assert Record.from_annotations({A_DEPLOYMENT: "not-a-number"}).deployment_id is UNKNOWN


def test_what_execution_produced_wins_over_the_plan() -> None:
    planned = Record(comment_id=1, overlay_blob="planned", deployment_id=UNKNOWN)
    produced = Record(overlay_blob="written", deployment_id=9)
    merged = planned.updated_by(produced)
    assert (merged.comment_id, merged.overlay_blob, merged.deployment_id) == (1, "written", 9)
    assert planned.updated_by(Record(overlay_blob=None)).overlay_blob is None


# ---- observe -> plan -> execute --------------------------------------------------------------


async def test_deploy_records_what_it_made_and_a_replay_writes_nothing(world: World) -> None:
    world.repo.open_pull(42, SHA1)
    outcome = await world.syncer.sync(WORK)
    assert outcome.executed == [
        "PutOverlay",
        "ApplyApplication",
        "CreateDeployment",
        "UpsertComment",
        "RecordState",
    ]
    app = await world.app()
    (dep,) = world.repo.deployments.values()
    overlay = world.repo.branches["main"][OVERLAY]
    assert app.record.overlay_blob == git_blob_sha(overlay)
    assert app.record.overlay_commit == world.repo.commits[-1]
    assert (app.record.deployment_id, app.record.deployed_sha) == (dep.id, SHA1)
    assert (dep.sha, dep.state) == (SHA1, "in_progress")
    assert app.record.comment_state == "deploying"
    assert COMMENT_MARKER in world.comment()
    world.repo.calls.clear()
    again = await world.syncer.sync(WORK)
    assert again.executed == []
    assert world.repo.calls == ["get_pull"]  # the record answered everything else


async def test_health_then_a_push_then_a_close(world: World) -> None:
    world.repo.open_pull(42, SHA1)
    await world.syncer.sync(WORK)
    pinned = (await world.app()).record.overlay_commit
    world.cluster.set_status("dex-pr-42", sync="Synced", health="Healthy", revision=pinned)
    await world.syncer.sync(WORK)
    assert "Preview ready" in world.comment()
    (first,) = world.repo.deployments.values()
    assert first.state == "success"

    world.repo.change_pull(42, head_sha=SHA2)
    await world.syncer.sync(WORK)
    old, new = world.repo.deployments.values()
    assert (old.state, new.sha, new.state) == ("inactive", SHA2, "in_progress")
    assert (await world.app()).record.deployment_id == new.id

    world.repo.change_pull(42, state="closed")
    outcome = await world.syncer.sync(WORK)
    assert outcome.requeue_after == SETTINGS.teardown_grace_seconds
    assert OVERLAY not in world.repo.branches["main"]
    assert (await world.app()).terminating
    world.cluster.finish_deletion("dex-pr-42")
    # Argo CD has pruned; the bot's finalizer keeps the Application (and the record on it).
    assert (await world.app()).releasable
    world.repo.calls.clear()
    outcome = await world.syncer.sync(WORK)
    assert outcome.executed == ["UpsertComment", "RecordState", "ReleaseApplication"]
    assert "dex-pr-42" not in world.cluster.objects
    assert "Preview destroyed" in world.comment()
    # The Application is gone, but the last record found the comment: no listing of comments.
    assert "comments" not in world.repo.calls
    assert all(d.state == "inactive" for d in world.repo.deployments.values())


async def test_a_lost_record_finds_our_comment_by_its_marker(world: World) -> None:
    world.repo.open_pull(42, SHA1)
    world.repo.add_comment(42, "LGTM, but please add a preview")  # a human's, no marker
    ours = render_comment(SETTINGS, world.repo.pulls[42], State.DEPLOYING, NOW)
    planted = world.repo.add_comment(42, ours.body)  # a human pasting the bot's markers
    cid = world.repo.add_comment(42, ours.body, author=BOT_LOGIN)
    await world.syncer.sync(WORK)
    assert "comments" in world.repo.calls
    assert (await world.app()).record.comment_id == cid
    assert len(world.repo.comments_on(42)) == 3  # ours edited in place, none added
    assert world.repo.comments_[planted].body == ours.body  # the planted one never touched


async def test_a_permanent_failure_is_said_once_on_the_pr(world: World) -> None:
    world.repo.open_pull(42, SHA1)
    world.repo.fail_next("put_file", PermanentError("GitHub answered 403: Resource not accessible"))
    with pytest.raises(PermanentError):
        await world.syncer.sync(WORK)
    body = world.comment()
    assert "Preview failed" in body and "Resource not accessible" in body
    assert world.writes() == ["put_file", "create_comment"]
    assert world.cluster.objects == {}  # nothing applied after the refusal


async def test_a_temporary_failure_mid_sync_leaves_the_record_unwritten(world: World) -> None:
    world.repo.open_pull(42, SHA1)
    world.repo.fail_next("create_deployment", TemporaryError("GitHub answered 502"))
    with pytest.raises(TemporaryError):
        await world.syncer.sync(WORK)
    assert (await world.app()).record.deployment_id is UNKNOWN
    await world.syncer.sync(WORK)  # the retry converges
    (dep,) = world.repo.deployments.values()
    assert (await world.app()).record.deployment_id == dep.id


# ---- releases --------------------------------------------------------------------------------


async def test_a_teardown_release_is_counted_once(world: World) -> None:
    await world.pruned()
    assert world.released("teardown") == 0  # exported from the start
    outcome = await world.syncer.sync(WORK)
    assert outcome.executed[-1] == "ReleaseApplication"
    assert "dex-pr-42" not in world.cluster.objects
    assert world.released("teardown") == 1
    assert world.released("uninstalled") == 0
    again = await world.syncer.sync(WORK)  # gone: nothing left to release
    assert "ReleaseApplication" not in again.executed
    assert world.released("teardown") == 1


async def test_a_failed_release_is_not_counted_and_its_retry_is(world: World) -> None:
    await world.pruned()
    world.cluster.fail_next("release", TemporaryError("the API server answered 503"))
    with pytest.raises(TemporaryError):
        await world.syncer.sync(WORK)
    assert (await world.app()).releasable  # still held by the bot's finalizer
    assert world.released("teardown") == 0
    await world.syncer.sync(WORK)  # the retry releases it
    assert "dex-pr-42" not in world.cluster.objects
    assert world.released("teardown") == 1


async def test_a_release_that_finds_the_application_gone_is_not_counted(world: World) -> None:
    await world.pruned()
    release = world.cluster.release

    async def released_elsewhere(name: str) -> bool:
        world.cluster.objects.pop(name)  # another replica let it go between observe and write
        return await release(name)

    world.cluster.release = released_elsewhere  # type: ignore[method-assign]
    outcome = await world.syncer.sync(WORK)
    assert outcome.executed[-1] == "ReleaseApplication"
    assert world.cluster.calls[-1] == "release"
    assert world.released("teardown") == 0


# ---- the watch and the Bot -------------------------------------------------------------------


def _app_object(**status: str) -> dict[str, object]:
    return {
        "metadata": {
            "name": "dex-pr-42",
            "labels": {"app.kubernetes.io/managed-by": "preview-bot"},
            "annotations": {
                "preview-bot.io/repo": REPO,
                "preview-bot.io/pr": "42",
                "preview-bot.io/installation": "5",
            },
        },
        "status": {
            "health": {"status": status.get("health")},
            "sync": {"revision": status.get("revision")},
        },
    }


async def test_a_name_taken_by_another_repository_is_said_once(world: World) -> None:
    # Nothing of the PR's can be recorded on the other repository's Application: the comment's
    # own hidden record must keep the next syncs (each resync) from rewriting it.
    world.repo.open_pull(42, SHA1)
    foreign = _app_object(health="Healthy")
    foreign["metadata"]["annotations"]["preview-bot.io/repo"] = "someone/else"  # type: ignore[index]
    world.cluster.objects["dex-pr-42"] = foreign
    ticks = iter(range(100))
    clock = lambda: NOW + timedelta(seconds=next(ticks))  # noqa: E731 (time moves: a new now)
    world.syncer = Syncer(SETTINGS, world.github, world.cluster, clock=clock)
    first = await world.syncer.sync(WORK)
    assert first.executed == ["UpsertComment"]
    said = world.comment()
    assert "another repository" in said and "someone" not in said
    for syncer in (world.syncer, Syncer(SETTINGS, world.github, world.cluster, clock=clock)):
        assert (await syncer.sync(WORK)).executed == []  # the same process, and a restart
    assert world.comment() == said
    assert world.cluster.objects["dex-pr-42"] == foreign


async def test_watcher_queues_only_news() -> None:
    queue = KeyedQueue(10)
    watcher = Watcher(queue)
    await watcher.on_event("ADDED", app_from_object(_app_object()))  # no verdict yet
    assert len(queue) == 0
    await watcher.on_event("MODIFIED", app_from_object(_app_object(health="Progressing")))
    assert len(queue) == 1
    work = await queue.get()
    queue.done(work.key)
    assert (work.key, work.installation_id, work.delivery) == (WORK.key, 5, "watch")
    await watcher.on_event("MODIFIED", app_from_object(_app_object(health="Progressing")))
    assert len(queue) == 0  # the bot's own annotation write echoing back
    # The same health about another revision (the one a push pinned) is news.
    await watcher.on_event(
        "MODIFIED", app_from_object(_app_object(health="Progressing", revision="c2"))
    )
    assert len(queue) == 1
    queue.done((await queue.get()).key)
    await watcher.on_event("DELETED", app_from_object(_app_object(health="Progressing")))
    assert len(queue) == 1
    unmanaged = _app_object(health="Healthy")
    unmanaged["metadata"]["labels"] = {}  # type: ignore[index]
    await watcher.on_event("MODIFIED", app_from_object(unmanaged))
    assert len(queue) == 1


async def test_the_watch_remembers_a_bounded_number_of_applications(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Applications deleted while the watch was down never get their DELETED event: what the
    # watch remembers of them is bounded, and one forgotten costs one sync at its next change.
    monkeypatch.setattr("bot.service.SEEN_REMEMBERED", 3)
    queue = KeyedQueue(10)
    watcher = Watcher(queue)

    def numbered(n: int, health: str) -> dict[str, object]:
        obj = _app_object(health=health)
        meta: dict[str, Any] = obj["metadata"]  # type: ignore[assignment]
        meta["name"] = f"dex-pr-{n}"
        meta["annotations"]["preview-bot.io/pr"] = str(n)
        return obj

    for n in range(1, 6):
        await watcher.on_event("MODIFIED", app_from_object(numbered(n, "Healthy")))
        queue.done((await queue.get()).key)
    assert len(watcher._seen) == 3
    await watcher.on_event("MODIFIED", app_from_object(numbered(5, "Healthy")))
    assert len(queue) == 0  # remembered: the echo is no news
    await watcher.on_event("MODIFIED", app_from_object(numbered(1, "Healthy")))
    assert len(queue) == 1  # forgotten: one more sync, no more


async def test_watcher_queues_the_end_of_pruning_and_not_the_echo_of_its_own_release() -> None:
    queue = KeyedQueue(10)
    watcher = Watcher(queue)
    obj = _app_object(health="Healthy")
    meta: dict[str, object] = obj["metadata"]  # type: ignore[assignment]
    meta["finalizers"] = [FINALIZER, TEARDOWN_FINALIZER]
    await watcher.on_event("SYNCED", app_from_object(obj))
    queue.done((await queue.get()).key)
    meta["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    await watcher.on_event("MODIFIED", app_from_object(obj))
    assert len(queue) == 0  # the start of a deletion is the bot's own doing
    meta["finalizers"] = [TEARDOWN_FINALIZER]  # Argo CD has pruned
    await watcher.on_event("MODIFIED", app_from_object(obj))
    assert len(queue) == 1
    queue.done((await queue.get()).key)
    annotations: dict[str, str] = meta["annotations"]  # type: ignore[assignment]
    annotations["preview-bot.io/comment-state"] = "destroyed"  # the sync's record, echoed
    await watcher.on_event("MODIFIED", app_from_object(obj))
    assert len(queue) == 0
    # Released, it goes (the DELETED event carries the state before the release).
    await watcher.on_event("DELETED", app_from_object(obj))
    assert len(queue) == 0
    # Without the bot's finalizer (applied by an older bot) the end still counts.
    annotations["preview-bot.io/comment-state"] = "ready"
    await watcher.on_event("DELETED", app_from_object(obj))
    assert len(queue) == 1


async def test_watcher_leaves_applications_out_of_scope_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The label is anyone's to set: an Application naming a repository out of scope must never
    # become work (a sync would patch it, or delete it when that repository's PR is closed).
    queue = KeyedQueue(10)
    watcher = Watcher(queue, ("someone-else/*",))
    with caplog.at_level(logging.WARNING, logger="bot"):
        for health in ("Progressing", "Healthy"):
            await watcher.on_event("MODIFIED", app_from_object(_app_object(health=health)))
        await watcher.on_event("DELETED", app_from_object(_app_object(health="Healthy")))
    assert len(queue) == 0
    assert len([r for r in caplog.records if "out of scope" in r.getMessage()]) == 1
    await Watcher(queue, (REPO,)).on_event(
        "MODIFIED", app_from_object(_app_object(health="Healthy"))
    )
    assert len(queue) == 1


async def sync_until_idle(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """A Bot syncs WORK, retries and all, until idle; its warnings captured."""
    bot = Bot(SETTINGS)
    bot.start(world.github, world.cluster)
    try:
        with caplog.at_level(logging.WARNING, logger="bot"):
            bot.queue.put_nowait(WORK)
            await bot.idle(quiet=0.1, limit=5)
    finally:
        await bot.stop()


async def test_bot_retries_with_backoff_and_logs_each_retry_once(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.repo.open_pull(42, SHA1)
    world.repo.fail_next("get_pull", TemporaryError("GitHub answered 502"))
    world.repo.fail_next("get_pull", TemporaryError("GitHub answered 503"))
    await sync_until_idle(world, caplog)
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert [r.getMessage() for r in retries] == [
        "retry 1 in 0.0s: GitHub answered 502",
        "retry 2 in 0.0s: GitHub answered 503",
    ]
    assert all(getattr(r, "log_context", {}).get("pr") == 42 for r in retries)  # set once
    assert "Preview deploying" in world.comment()


async def test_a_crashing_sync_is_retried_and_the_worker_lives_on(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.repo.open_pull(42, SHA1)
    world.repo.fail_next("get_pull", KeyError("a bug"))
    await sync_until_idle(world, caplog)
    messages = [r.getMessage() for r in caplog.records]
    assert "sync crashed" in messages
    assert "retry 1 in 0.0s: sync crashed: KeyError: 'a bug'" in messages
    assert not any("restarting" in m for m in messages)  # no worker died
    assert "Preview deploying" in world.comment()


async def test_bot_follows_the_watch_to_destroyed(world: World) -> None:
    world.repo.open_pull(42, SHA1)
    bot = Bot(SETTINGS)
    bot.start(world.github, world.cluster)
    try:
        bot.queue.put_nowait(WORK)
        await bot.idle(quiet=0.05, limit=5)
        world.repo.change_pull(42, state="closed")
        bot.queue.put_nowait(WORK)
        await bot.idle(quiet=0.05, limit=5)
        world.cluster.finish_deletion("dex-pr-42")  # the watch sees it go and queues the PR
        await asyncio.sleep(0.05)
        await bot.idle(quiet=0.1, limit=5)
    finally:
        await bot.stop()
    assert "Preview destroyed" in world.comment()


# ---- every create is safe to repeat ----------------------------------------------------------


@pytest.mark.parametrize("method", ["put_file", "create_deployment", "create_comment"])
async def test_a_create_whose_answer_was_lost_is_found_not_made_twice(
    world: World, method: str
) -> None:
    world.repo.open_pull(42, SHA1)
    world.repo.fail_after(method, TemporaryError("GitHub answered 502"))
    with pytest.raises(TemporaryError):
        await world.syncer.sync(WORK)
    world.repo.calls.clear()
    await world.syncer.sync(WORK)  # the retry
    assert len(world.repo.commits) == 1
    assert len(world.repo.deployments) == 1
    assert len([c for c in world.repo.comments_on(42) if c.author == BOT_LOGIN]) == 1
    (dep,) = world.repo.deployments.values()
    assert (await world.app()).record.deployment_id == dep.id
    print(f"\nretry after a lost {method}: {len(world.repo.calls)} GitHub calls")


async def test_a_lost_overlay_answer_still_pins_the_commit_that_wrote_it(world: World) -> None:
    world.repo.open_pull(42, SHA1)
    await world.syncer.sync(WORK)
    world.repo.change_pull(42, head_sha=SHA2)
    world.repo.fail_after("put_file", TemporaryError("GitHub answered 502"))
    with pytest.raises(TemporaryError):
        await world.syncer.sync(WORK)
    await world.syncer.sync(WORK)  # the retry finds the overlay written
    wrote = world.repo.commits[-1]
    assert len(world.repo.commits) == 2
    assert (await world.app()).record.overlay_commit == wrote
    source = world.cluster.objects["dex-pr-42"]["spec"]["source"]
    assert source["targetRevision"] == wrote  # not the first overlay's commit


async def test_a_repository_gets_the_namespace_component_once(world: World) -> None:
    bare = MemoryRepo(files={"infra/argocd/overlays/preview/kustomization.yaml": "r: []\n"})
    world.github.repos[REPO] = bare
    world.repo = bare
    bare.open_pull(42, SHA1)
    bare.open_pull(43, SHA2)
    await world.syncer.sync(WORK)
    await world.syncer.sync(Work(WorkKey(REPO, 43), 5))
    shared = sorted(p for p in bare.branches["main"] if "_namespace" in p)
    assert shared == [
        "infra/argocd/previews/_namespace/kustomization.yaml",
        "infra/argocd/previews/_namespace/namespace.yaml",
    ]
    assert bare.calls.count("put_file") == 4  # two shared files once, then one overlay each


@pytest.mark.parametrize("reported", [True, False])
async def test_a_teardown_that_lost_the_record_closes_the_check_run_never_makes_one(
    world: World, reported: bool
) -> None:
    # A restart mid-teardown: the Application (and the record on it) is gone, the comment
    # still says deploying; the head's check run exists only if it was reported.
    checked = replace(SETTINGS, check_run=True)
    world.repo.open_pull(42, SHA1)
    await Syncer(checked, world.github, world.cluster, clock=lambda: NOW).sync(WORK)
    if not reported:
        world.repo.check_runs.clear()
    world.cluster.objects.pop("dex-pr-42")
    world.repo.change_pull(42, state="closed")
    await Syncer(checked, world.github, world.cluster, clock=lambda: NOW).sync(WORK)
    runs = list(world.repo.check_runs.values())
    assert [(r.sha, r.status) for r in runs] == ([(SHA1, "completed")] if reported else [])
