"""Wiring of the running bot: adapters, syncer, workers and the Application watch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
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
from bot.webhooks import Work, WorkKey

log = logging.getLogger("bot.service")


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
        if kind == "DELETED":
            self._seen.pop(name, None)
        elif self._seen.get(name) == fingerprint:
            return  # Argo CD rewrites status often; only a change of state is worth a sync
        else:
            self._seen[name] = fingerprint
        self.queue.put_nowait(work)


class Runtime:
    """Owns the long-lived clients and tasks of a running bot."""

    def __init__(self, settings: Settings, github: GitHubPort, cluster: ClusterPort,
                 queue: KeyedQueue, metrics: Metrics) -> None:
        self.settings = settings
        self.queue = queue
        self.syncer = Syncer(settings, github, cluster, metrics)

    async def handle(self, work: Work) -> None:
        """Run one sync; schedule a retry for temporary errors, report permanent ones."""
        ctx = {"repo": work.key.repo, "pr": work.key.number, "delivery": work.delivery}
        try:
            await self.syncer.sync(work)
        except (TemporaryError, ClusterUnavailable) as exc:
            delay = exc.retry_after if isinstance(exc, TemporaryError) else 10.0
            self.queue.put_later(work, delay)
            log.warning("retrying in %.0fs", delay, extra=ctx)
        except PermanentError as exc:
            log.error("sync failed and will not be retried: %s", exc, extra=ctx)


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
    """The production app: intake, workers and the Application watch."""
    queue = KeyedQueue(settings.queue_size)
    metrics = Metrics()
    intake = Intake(settings, queue, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks: list[asyncio.Task[None]] = []
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
                runtime = Runtime(settings, GitHub(session, settings, metrics), argocd, queue,
                                  metrics)
                tasks += [asyncio.create_task(run_worker(queue, runtime.handle))
                          for _ in range(settings.workers)]
                tasks.append(asyncio.create_task(argocd.watch(Watcher(queue).on_event)))
            tasks.append(asyncio.create_task(probe(intake, session, argocd)))
            intake.health.started = True
            log.info("preview-bot ready")
            try:
                yield
            finally:
                intake.health.stopping = True
                queue.close()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if api_client is not None:
                    await api_client.close()

    return create_app(intake, lifespan)
