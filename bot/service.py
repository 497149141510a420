"""The running bot: intake, queue, workers, the Application watch and the resync, on any ports.

Production (bot.wiring), local mode and the tests all run this same `Bot`; only the adapters
handed to `start` differ.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TypeVar

from bot.app import Intake
from bot.config import Settings
from bot.errors import PermanentError, TemporaryError
from bot.logs import log_context
from bot.metrics import Metrics
from bot.model import AppStatus, ObservedApp, Work, WorkKey
from bot.ports import ClusterPort, GitHubPort
from bot.queue import KeyedQueue, run_worker
from bot.sync import Syncer
from bot.webhooks import Outcome

log = logging.getLogger(__name__)
T = TypeVar("T")

# A change of Argo CD's verdict, or the start of a deletion, is news to a sync.
Verdict = tuple[tuple[str | None, str | None, str | None], bool]


class Watcher:
    """Turns Application changes that matter (health, sync, phase, deletion) into work."""

    def __init__(self, queue: KeyedQueue) -> None:
        self.queue = queue
        # One entry per managed Application: bounded by the previews that exist.
        self._seen: dict[str, Verdict] = {}

    async def on_event(self, kind: str, app: ObservedApp) -> None:
        work = app.work(delivery="watch")
        if work is None:
            return
        verdict = (app.status.verdict, app.terminating)
        before = self._seen.get(app.name)
        if kind == "DELETED":
            self._seen.pop(app.name, None)
        else:
            self._seen[app.name] = verdict
            if kind != "SYNCED" and not self._worth_a_sync(before, app.status):
                return
        self.queue.put_nowait(work)

    @staticmethod
    def _worth_a_sync(before: Verdict | None, now: AppStatus) -> bool:
        """Argo CD rewrites status often and the bot's own writes echo back as events: only a
        change of Argo CD's verdict (sync, health, operation phase) calls for a sync. The start
        of a deletion is the bot's own doing; its end (DELETED) always counts."""
        if before is None:
            return any(v is not None for v in now.verdict)
        return before[0] != now.verdict


class Bot:
    """A running bot: intake, queue, workers and the Application watch, on injected adapters.

    Production (build_app), local mode and the tests all run this same object; only the
    adapters handed to `start` differ.
    """

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.queue = KeyedQueue(settings.queue_size)
        self.intake = Intake(settings, self.queue, self.metrics)
        self.syncer: Syncer | None = None
        self.cluster: ClusterPort | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._attempts: dict[WorkKey, int] = {}

    def start(self, github: GitHubPort, cluster: ClusterPort, watch: bool = True) -> None:
        """Start the workers, the resync loop and (unless told not to) the watch."""
        self.syncer = Syncer(self.settings, github, cluster, self.metrics)
        self.cluster = cluster
        self._tasks += [
            asyncio.create_task(run_worker(self.queue, self.handle))
            for _ in range(self.settings.workers)
        ]
        self._tasks.append(asyncio.create_task(self._resync_loop()))
        if watch:
            self._tasks.append(asyncio.create_task(cluster.watch(Watcher(self.queue).on_event)))
        self.intake.health.started = True

    async def resync_once(self) -> int:
        """Queue a sync of every managed Application's PR; returns how many were queued.

        GitHub does not redeliver failed webhooks, so without this a lost `closed` would leave
        a preview running forever. Each sync costs one conditional read of the PR (usually a
        304, free) when nothing changed.
        """
        queued = 0
        for app in await self._started(self.cluster).list_managed():
            work = app.work(delivery="resync")
            if work is not None and self.queue.put_nowait(work) is not Outcome.QUEUE_FULL:
                queued += 1
        log.info("resync queued %d previews", queued)
        return queued

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            try:
                await self.resync_once()
            except Exception as exc:  # the cluster may be down; the next round tries again
                log.warning("resync failed: %s", exc)

    async def stop(self) -> None:
        self.intake.health.stopping = True
        self.queue.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

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
            else:
                if outcome.requeue_after is not None:
                    self.queue.put_later(work, outcome.requeue_after)
            self._attempts.pop(work.key, None)

    def _retry(self, work: Work, exc: TemporaryError) -> None:
        """Exponential backoff from retry_seconds, capped at 5 minutes, unless the other side
        said how long to wait (rate limits). One log line per retry."""
        attempt = self._attempts.get(work.key, 0) + 1
        self._attempts[work.key] = attempt
        delay = exc.retry_after
        if delay is None:
            delay = min(self.settings.retry_seconds * 2 ** (attempt - 1), 300.0)
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
