"""The composition root: production adapters (GitHub over aiohttp, Argo CD on the cluster)
plugged into the Bot, and the Starlette app `preview-bot serve` runs.

The only module besides the adapters themselves that imports bot.github and bot.kube; local
mode borrows `connect_cluster` from here to use a real cluster when one answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from starlette.applications import Starlette

from bot import kubeapi
from bot.app import Intake, create_app
from bot.config import Settings
from bot.github import GitHub
from bot.kube import ArgoCD
from bot.ports import ClusterPort
from bot.service import Bot

log = logging.getLogger(__name__)


@dataclass
class ClusterConnection:
    """A cluster reached through the kubeconfig: its port, where it is, and whether it can hold
    Argo CD Applications (`problem` says why not)."""

    port: ClusterPort
    host: str
    close: Callable[[], Awaitable[None]]
    problem: str | None = None


async def connect_cluster(settings: Settings, probe_seconds: float) -> ClusterConnection:
    """The kubeconfig's cluster, probed by listing Applications. Raises when there is no
    usable configuration at all."""
    api = await kubeapi.connect(settings.kubeconfig)
    argocd = ArgoCD(api, settings.argocd_namespace)
    host = api.server
    conn = ClusterConnection(argocd, host, argocd.close)
    try:
        await asyncio.wait_for(argocd.list_managed(), probe_seconds)
    except kubeapi.ApiError as exc:
        why = (
            "it has no Argo CD Application CRD"
            if exc.status == 404
            else f"listing Applications answered {exc.status} {exc.reason}"
        )
        conn.problem = f"the cluster at {host}: {why}"
    except Exception as exc:  # unreachable, timed out, TLS: the caller shows why
        conn.problem = f"the cluster at {host} did not answer: {type(exc).__name__}: {exc}"
    return conn


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
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            argocd: ArgoCD | None = None
            try:
                api = await kubeapi.connect(settings.kubeconfig)
                argocd = ArgoCD(api, settings.argocd_namespace)
            except Exception as exc:  # no kubeconfig at all: say so, keep taking deliveries
                intake.health.notes["cluster"] = f"no configuration: {exc}"
                log.error("no Kubernetes configuration: %s", exc)
            if argocd is not None:
                bot.start(GitHub(session, settings, bot.metrics), argocd)
            else:
                intake.health.started = True
            probing = asyncio.create_task(probe(intake, session, argocd))
            log.info("preview-bot ready")
            try:
                yield
            finally:
                probing.cancel()
                await bot.stop()
                if argocd is not None:
                    await argocd.close()

    return create_app(intake, lifespan)
