"""Wiring of the running bot: adapters, syncer, workers and the Application watch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import aiohttp
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio import config as kconfig
from starlette.applications import Starlette

from bot.app import Intake, create_app
from bot.config import Settings
from bot.github import GitHub, PermanentError, TemporaryError
from bot.kube import ArgoCD, ClusterUnavailable
from bot.metrics import Metrics
from bot.model import A_INSTALLATION, A_PR, A_REPO, BOT, MANAGED_BY
from bot.queue import KeyedQueue, run_worker
from bot.sync import ClusterPort, GitHubPort, Syncer
from bot.webhooks import Outcome, Work, WorkKey

log = logging.getLogger("bot.service")

OnEvent = Callable[[str, dict[str, Any]], Awaitable[None]]
WatchSource = Callable[[OnEvent], Coroutine[Any, Any, None]]


def work_from_application(obj: dict[str, Any]) -> Work | None:
    """The PR an Application belongs to, from the annotations the bot wrote on it."""
    meta = obj.get("metadata") or {}
    if (meta.get("labels") or {}).get(MANAGED_BY) != BOT:
        return None
    ann = meta.get("annotations") or {}
    repo, pr, inst = ann.get(A_REPO), ann.get(A_PR, ""), ann.get(A_INSTALLATION, "")
    if not repo or "/" not in repo or not pr.isdigit() or not inst.isdigit():
        return None
    return Work(WorkKey(repo, int(pr)), int(inst), delivery="watch")


class Watcher:
    """Turns Application changes that matter (health, sync, phase, deletion) into work."""

    def __init__(self, queue: KeyedQueue) -> None:
        self.queue = queue
        self._seen: dict[str, tuple[Any, ...]] = {}

    async def on_event(self, kind: str, obj: dict[str, Any]) -> None:
        work = work_from_application(obj)
        name = (obj.get("metadata") or {}).get("name", "")
        if work is None:
            return
        status = obj.get("status") or {}
        fingerprint = (
            (status.get("sync") or {}).get("status"),
            (status.get("health") or {}).get("status"),
            (status.get("operationState") or {}).get("phase"),
            bool((obj.get("metadata") or {}).get("deletionTimestamp")),
        )
        before = self._seen.get(name)
        if kind == "DELETED":
            self._seen.pop(name, None)
        else:
            self._seen[name] = fingerprint
            if kind != "SYNCED" and not self._worth_a_sync(before, fingerprint):
                return
        self.queue.put_nowait(work)

    @staticmethod
    def _worth_a_sync(before: tuple[Any, ...] | None, now: tuple[Any, ...]) -> bool:
        """Argo CD rewrites status often and the bot's own writes echo back as events: only a
        change of Argo CD's verdict (sync, health, operation phase) calls for a sync. The start
        of a deletion is the bot's own doing; its end (DELETED) always counts."""
        if before is None:
            return any(v is not None for v in now[:3])
        return before[:3] != now[:3]


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

    def start(
        self, github: GitHubPort, cluster: ClusterPort, watch: WatchSource | None = None
    ) -> None:
        """Start the workers (and the watch) on the running loop."""
        self.syncer = Syncer(self.settings, github, cluster, self.metrics)
        self.cluster = cluster
        self._tasks += [
            asyncio.create_task(run_worker(self.queue, self.handle))
            for _ in range(self.settings.workers)
        ]
        self._tasks.append(asyncio.create_task(self._resync_loop()))
        if watch is not None:
            self._tasks.append(asyncio.create_task(watch(Watcher(self.queue).on_event)))
        self.intake.health.started = True

    async def resync_once(self) -> int:
        """Queue a sync of every managed Application's PR; returns how many were queued.

        GitHub does not redeliver failed webhooks, so without this a lost `closed` would leave
        a preview running forever. Each sync costs one conditional read of the PR (usually a
        304, free) when nothing changed.
        """
        assert self.cluster is not None, "Bot.start() first"
        queued = 0
        for obj in await self.cluster.list_managed():
            work = work_from_application(obj)
            if work is not None:
                work = Work(work.key, work.installation_id, delivery="resync")
                if self.queue.put_nowait(work) is not Outcome.QUEUE_FULL:
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
        assert self.syncer is not None, "Bot.start() first"
        ctx = {"repo": work.key.repo, "pr": work.key.number, "delivery": work.delivery}
        try:
            outcome = await self.syncer.sync(work)
            if outcome.requeue_after is not None:
                self.queue.put_later(work, outcome.requeue_after)
        except (TemporaryError, ClusterUnavailable) as exc:
            # Exponential backoff from retry_seconds, capped at 5 minutes, unless GitHub said
            # how long to wait (rate limits).
            attempt = self._attempts.get(work.key, 0) + 1
            self._attempts[work.key] = attempt
            hint = exc.retry_after if isinstance(exc, TemporaryError) else None
            delay = (
                hint
                if hint is not None
                else min(self.settings.retry_seconds * 2 ** (attempt - 1), 300.0)
            )
            self.queue.put_later(work, delay)
            log.warning("retry %d in %.1fs", attempt, delay, extra=ctx)
            return
        except PermanentError as exc:
            log.error("sync failed and will not be retried: %s", exc, extra=ctx)
        self._attempts.pop(work.key, None)

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


async def load_kube_client(settings: Settings) -> kclient.ApiClient:
    """An ApiClient from KUBECONFIG, else the in-cluster service account, else ~/.kube/config."""
    if settings.kubeconfig:
        await kconfig.load_kube_config(config_file=settings.kubeconfig)
        return kclient.ApiClient()
    try:
        kconfig.load_incluster_config()  # type: ignore[no-untyped-call]  # untyped upstream
    except kconfig.ConfigException:
        await kconfig.load_kube_config()
    return kclient.ApiClient()


async def probe(intake: Intake, session: aiohttp.ClientSession, argocd: ArgoCD | None) -> None:
    """Note in /readyz whether GitHub and the cluster answer. Not a readiness condition:
    deliveries are taken anyway and work retries until they do."""
    try:
        async with session.get(intake.settings.github_api_url + "/") as resp:
            intake.health.notes["github"] = "ok" if resp.status < 500 else f"HTTP {resp.status}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        intake.health.notes["github"] = f"unreachable: {exc}"
    if argocd is None:
        return
    try:
        await argocd.list_managed()
        intake.health.notes["cluster"] = "ok"
    except Exception as exc:  # any failure is worth showing, none is fatal here
        intake.health.notes["cluster"] = f"unreachable: {exc}"
    for name, note in intake.health.notes.items():
        if note != "ok":
            log.warning("%s %s; deliveries are queued and retried", name, note)


def build_app(settings: Settings) -> Starlette:
    """The production app: GitHub through aiohttp, the cluster from the kubeconfig."""
    bot = Bot(settings)
    intake = bot.intake

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            api_client: kclient.ApiClient | None = None
            argocd: ArgoCD | None = None
            try:
                api_client = await load_kube_client(settings)
                argocd = ArgoCD(api_client, settings.argocd_namespace)
            except Exception as exc:  # no kubeconfig at all: say so, keep taking deliveries
                intake.health.notes["cluster"] = f"no configuration: {exc}"
                log.error("no Kubernetes configuration: %s", exc)
            if argocd is not None:
                bot.start(GitHub(session, settings, bot.metrics), argocd, argocd.watch)
            else:
                intake.health.started = True
            probing = asyncio.create_task(probe(intake, session, argocd))
            log.info("preview-bot ready")
            try:
                yield
            finally:
                probing.cancel()
                await bot.stop()
                if api_client is not None:
                    await api_client.close()

    return create_app(intake, lifespan)
