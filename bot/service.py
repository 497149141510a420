"""The running bot: intake, queue, workers, the Application watch and the resync, on any ports.

Production (bot.wiring), local mode and the tests all run this same `Bot`; only the adapters
handed to `start` differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from cachetools import LRUCache

from bot.app import Intake
from bot.config import Settings
from bot.errors import PermanentError, TemporaryError
from bot.logs import log_context
from bot.metrics import Metrics
from bot.model import ObservedApp, State, Work, WorkKey
from bot.ports import ClusterPort, GitHubPort, ImagePort
from bot.queue import KeyedQueue
from bot.resync import Resyncer, ResyncReport
from bot.scope import in_scope
from bot.supervisor import Supervisor
from bot.sync import Syncer
from bot.webhooks import Outcome, ResyncRequest, ShaHint

log = logging.getLogger(__name__)
T = TypeVar("T")

# What the watch remembers of an Application: Argo CD's verdict, whether it is terminating, and
# whether Argo CD has pruned it while the bot's finalizer holds it (releasable).
Verdict = tuple[tuple[str | None, str | None, str | None, str | None], bool, bool]


class Watcher:
    """Turns Application changes that matter (health, sync, phase, deletion) into work."""

    def __init__(self, queue: KeyedQueue, repositories: tuple[str, ...] | None = None) -> None:
        self.queue = queue
        # The scope (None: every repository). The managed-by label is anyone's to set: an
        # Application that names a repository out of scope is never queued, so never patched
        # or deleted by a sync.
        self.repositories = repositories
        # One entry per managed Application, dropped at its DELETED event. One deleted while
        # the watch was down never gets that event, so the entries are bounded (an LRU): one
        # forgotten costs at most one more sync, at that Application's next change.
        self._seen: LRUCache[str, Verdict] = LRUCache(SEEN_REMEMBERED)
        self._foreign: set[str] = set()  # logged once each; cleared past FOREIGN_LOGGED

    async def on_event(self, kind: str, app: ObservedApp) -> None:
        work = app.work(delivery="watch")
        if work is None:
            return
        if self.repositories is not None and not in_scope(self.repositories, work.key.repo):
            if app.name not in self._foreign:
                if len(self._foreign) >= FOREIGN_LOGGED:
                    self._foreign.clear()
                self._foreign.add(app.name)
                log.warning(
                    "Application %s carries preview-bot's label for %s, which is out of scope: "
                    "left alone",
                    app.name,
                    work.key.repo,
                )
            return
        verdict = (app.status.verdict, app.terminating, app.releasable)
        before = self._seen.get(app.name)
        if kind == "DELETED":
            self._seen.pop(app.name, None)
            if app.record.comment_state == State.DESTROYED.value:
                # Its last state says destroyed: only the bot's release, after the comment,
                # lets an Application go with that record on it. Nothing left to do.
                return
        else:
            self._seen[app.name] = verdict
            if kind != "SYNCED" and not self._worth_a_sync(before, app):
                return
        self.queue.put_nowait(work)

    @staticmethod
    def _worth_a_sync(before: Verdict | None, app: ObservedApp) -> bool:
        """Argo CD rewrites status often and the bot's own writes echo back as events: only a
        change of Argo CD's verdict (sync, health, operation phase, revision) calls for a sync.
        The start of a deletion is the bot's own doing; the end of Argo CD's part (its
        finalizer gone, the bot's left) counts, and so does the end (DELETED) of an
        Application without the bot's finalizer."""
        if app.releasable and (before is None or not before[2]):
            return True
        if before is None:
            return any(v is not None for v in app.status.verdict)
        return before[0] != app.status.verdict


class Elector(Protocol):
    """Leader election (bot.leader): runs the callbacks as leadership comes and goes."""

    async def run(
        self,
        on_started_leading: Callable[[], Awaitable[None]],
        on_stopped_leading: Callable[[], Awaitable[None]],
    ) -> None: ...

    async def release(self) -> None: ...


FOREIGN_LOGGED = 1024  # names of out-of-scope Applications remembered (to log each once)
SEEN_REMEMBERED = 10_000  # Applications whose last verdict the watch remembers
WATCH_STALL_SECONDS = 600.0  # 2x the watch's server-side timeout: no event or bookmark by then
PROBE_SECONDS = 30.0


class Bot:
    """A running bot: intake, queue, workers, the Application watch and the resync, on
    injected adapters, each background task supervised.

    Production (bot.wiring), local mode and the tests all run this same object; only the
    adapters handed to `start` differ. With an elector, only the leader acts (workers, watch,
    resync); a follower answers not ready, so the Service sends webhooks to the leader, and
    the new leader's first resync picks up whatever was sent during a handover.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        # What the syncs and the resync take for now (TTL, timeouts); tests move it by hand.
        self.clock = clock
        self.queue = KeyedQueue(settings.queue_size)
        self.intake = Intake(settings, self.queue, self.metrics)
        self.supervisor = Supervisor()
        self.syncer: Syncer | None = None
        self.cluster: ClusterPort | None = None
        self.resyncer: Resyncer | None = None
        self.leading = False
        self.watch = True
        self.resync_at_start = True
        self._elector: Elector | None = None
        self._resync_now = asyncio.Event()
        self._busy: set[str] = set()  # workers in the middle of a sync
        self._all_done = asyncio.Event()  # set while no worker is in a sync
        self._all_done.set()
        self._draining = False
        # Retries per key, only while a key is failing (popped on success): bounded anyway.
        self._attempts: LRUCache[WorkKey, int] = LRUCache(maxsize=settings.queue_size)
        self.intake.health.supervisor = self.supervisor
        self.intake.on_sha = self.on_sha
        self.intake.on_resync = self.request_resync
        # A follower (an elector, and not the lease) is not ready; a single replica always is.
        self.intake.health.leading = lambda: self.leading or self._elector is None

    def start(
        self,
        github: GitHubPort,
        cluster: ClusterPort,
        *,
        images: ImagePort | None = None,
        elector: Elector | None = None,
    ) -> None:
        """Start acting (at once, or when `elector` makes this replica the leader)."""
        self.syncer = Syncer(self.settings, github, cluster, self.metrics, self.clock)
        self.syncer.images = images
        self.cluster = cluster
        self.resyncer = Resyncer(self.settings, github, cluster, self.queue, self.metrics)
        if elector is None:
            self._lead()
        else:
            self._elector = elector
            self.supervisor.spawn(
                "leader-election", lambda: elector.run(self._on_leading, self._on_following)
            )
        self.intake.health.started = True

    # ---- leadership ----------------------------------------------------------------------

    def _acting(self) -> list[str]:
        names = [f"worker-{i}" for i in range(self.settings.workers)] + ["resync"]
        return [*names, "watch"] if self.watch else names

    def _lead(self) -> None:
        self.leading = True
        for i in range(self.settings.workers):
            name = f"worker-{i}"
            self.supervisor.spawn(name, lambda name=name: self._work_loop(name))  # type: ignore[misc]
        self.supervisor.spawn("resync", self._resync_loop)
        if self.watch:
            cluster = self._started(self.cluster)
            watcher = Watcher(self.queue, self.settings.repositories)
            self.supervisor.spawn(
                "watch",
                lambda: cluster.watch(watcher.on_event, lambda: self.supervisor.alive("watch")),
                stall_after=WATCH_STALL_SECONDS,
            )
        log.info("acting as the leader: workers, watch and resync running")

    async def _on_leading(self) -> None:
        self._lead()

    async def _on_following(self) -> None:
        """Lost the lease (or never had it): stop acting before another replica starts."""
        self.leading = False
        await self.supervisor.stop(self._acting())
        log.info("not the leader: workers, watch and resync stopped")

    def request_resync(self, request: ResyncRequest | None = None) -> None:
        """Resync now rather than at the next period (an installation changed)."""
        if request is not None:
            log.info("resync requested: %s", request.reason)
        self._resync_now.set()

    def on_sha(self, hint: ShaHint) -> Outcome | None:
        """A check or status finished on a commit: sync the PRs whose head waits on it (a PR
        the bot does not know of yet is found by the resync). Outcome.QUEUE_FULL when the
        queue refused one (the intake answers 503, so GitHub can redeliver).
        Called on the intake's hot path: a dictionary lookup, nothing more."""
        syncer = self.syncer
        numbers = syncer.prs_waiting_on(hint.repo, hint.sha) if syncer else frozenset()
        refused = False
        for number in numbers:
            work = Work(WorkKey(hint.repo, number), hint.installation_id, "status")
            refused |= self.queue.put_nowait(work) is Outcome.QUEUE_FULL
        return Outcome.QUEUE_FULL if refused else None

    # ---- the loops -----------------------------------------------------------------------

    async def _work_loop(self, name: str) -> None:
        while not self._draining:
            work = await self.queue.get()
            self._busy.add(name)
            self._all_done.clear()
            try:
                await self.handle(work)
            finally:
                self.queue.done(work.key)
                self._busy.discard(name)
                if not self._busy:
                    self._all_done.set()
                self.supervisor.alive(name)
        # Draining: take nothing more and wait to be stopped (a supervised task that returns
        # is a fault, and would be restarted and logged as one during every shutdown).
        await asyncio.Event().wait()

    async def _resync_loop(self) -> None:
        if not self.resync_at_start:
            await self._wait_for_resync()
        while True:
            try:
                await self.resync_once()
            except TemporaryError as exc:  # GitHub or the cluster down: the next round retries
                log.warning("resync could not finish: %s", exc)
            else:
                self.supervisor.alive("resync")
            await self._wait_for_resync()

    async def _wait_for_resync(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._resync_now.wait(), self.settings.resync_seconds)
        self._resync_now.clear()

    async def resync_once(self) -> ResyncReport:
        """Converge every repository in scope now (see bot.resync)."""
        resyncer = self._started(self.resyncer)
        syncer = self._started(self.syncer)
        return await resyncer.run(syncer.clock())

    # ---- shutdown ------------------------------------------------------------------------

    async def stop(self, grace: float | None = None) -> None:
        """Stop acting: not ready at once, syncs in flight get `grace` seconds (default
        shutdown_grace_seconds) to finish, queued keys are left to the next start's resync,
        and the lease is released so another replica leads at once."""
        self.intake.health.stopping = True
        self._draining = True
        self.queue.close()
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        # The elector stays until the grace is over: stopping it now would stop the workers
        # (losing the lead stops them) and leave syncs in flight no grace at all.
        await self.supervisor.stop(["resync", "watch"])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_done.wait(), grace)
        if self._busy:
            log.warning(
                "shutdown: %d syncs still running were stopped; the next resync finishes them",
                len(self._busy),
            )
        await self.supervisor.stop()
        self.leading = False
        if self._elector is not None:
            with contextlib.suppress(Exception):  # the lease expires by itself anyway
                await self._elector.release()

    # ---- one sync ------------------------------------------------------------------------

    async def handle(self, work: Work) -> None:
        """Run one sync; schedule a retry for temporary errors, report permanent ones."""
        syncer = self._started(self.syncer)
        with log_context(repo=work.key.repo, pr=work.key.number, delivery=work.delivery):
            try:
                outcome = await syncer.sync(work)
            except TemporaryError as exc:
                self._retry(work, exc)
                return
            except PermanentError as exc:
                log.error("sync failed and will not be retried: %s", exc)
            except Exception as exc:
                # A bug, not the world: retried with backoff like a temporary failure (the
                # worker lives on, the PR is not forgotten), with the traceback once.
                log.exception("sync crashed")
                self._retry(work, TemporaryError(f"sync crashed: {type(exc).__name__}: {exc}"))
                return
            else:
                if outcome.requeue_after is not None:
                    self.queue.put_later(work, outcome.requeue_after)
            self._attempts.pop(work.key, None)

    def _retry(self, work: Work, exc: TemporaryError) -> None:
        """Exponential backoff with jitter from retry_seconds, capped at 5 minutes, unless the
        other side said how long to wait (rate limits: never earlier, a little later so not
        every key wakes at once). Deliveries meanwhile join the retry. One log line per retry.
        """
        attempt = self._attempts.get(work.key, 0) + 1
        self._attempts[work.key] = attempt
        if exc.retry_after is not None:
            delay = exc.retry_after * random.uniform(1.0, 1.1)
        else:
            base = min(self.settings.retry_seconds * 2 ** (attempt - 1), 300.0)
            delay = base * random.uniform(0.5, 1.0)
        self.queue.put_later(work, delay, hold=True)
        log.warning("retry %d in %.1fs: %s", attempt, delay, exc)

    @staticmethod
    def _started(part: T | None) -> T:
        if part is None:
            raise RuntimeError("Bot.start() first")
        return part

    async def idle(self, quiet: float = 0.3, limit: float = 30.0) -> None:
        """Wait until no sync is queued or running for `quiet` seconds (tests, local mode)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        calm_since: float | None = None
        while True:
            now = loop.time()
            if len(self.queue) == 0 and self.queue.running == 0 and not self.queue.scheduled:
                calm_since = calm_since if calm_since is not None else now
                if now - calm_since >= quiet:
                    return
            else:
                calm_since = None
            if now > deadline:
                raise TimeoutError(
                    f"bot still busy after {limit}s: {len(self.queue)} queued, "
                    f"{self.queue.running} running"
                )
            await asyncio.sleep(0.02)
