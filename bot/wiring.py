"""The composition root: production adapters (GitHub over aiohttp, Argo CD on the cluster)
plugged into the Bot, and the ASGI app `preview-bot serve` runs.

The only module besides the adapters themselves that imports bot.github and bot.kube; local
mode borrows `connect_cluster` from here to use a real cluster when one answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import FrameType
from typing import NamedTuple

import aiohttp
import uvicorn
from starlette.applications import Starlette

from bot import kubeapi
from bot.app import Intake, Server, create_app
from bot.config import Settings
from bot.github import GitHub
from bot.kube import ArgoCD
from bot.leader import elector_for
from bot.logs import flush_logs
from bot.ports import ClusterPort
from bot.registry import Registry
from bot.service import PROBE_SECONDS, Bot

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
        await asyncio.wait_for(argocd.reachable(), probe_seconds)
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
    before = dict(intake.health.notes)
    try:
        async with session.get(intake.settings.github_api_url + "/") as resp:
            intake.health.notes["github"] = "ok" if resp.status < 500 else f"HTTP {resp.status}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        intake.health.notes["github"] = f"unreachable: {exc}"
    if argocd is not None:
        try:
            await asyncio.wait_for(argocd.reachable(), PROBE_SECONDS)
            intake.health.notes["cluster"] = "ok"
        except Exception as exc:  # any failure is worth showing, none is fatal here
            intake.health.notes["cluster"] = f"unreachable: {exc}"
    for name, note in intake.health.notes.items():
        if note != "ok" and before.get(name) != note:  # once per change, not every round
            log.warning("%s %s; deliveries are queued and retried", name, note)


def build(settings: Settings) -> tuple[Server, Bot]:
    """The production app and its Bot (which `serve` tells about SIGTERM at once)."""
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
                images = Registry(session, settings) if settings.image_check else None
                elector = elector_for(api, settings) if settings.leader_election else None
                github = GitHub(session, settings, bot.metrics)
                bot.start(github, argocd, images=images, elector=elector)
            else:
                intake.health.started = True

            async def probing() -> None:  # refreshed continuously, not only at start
                while True:
                    await probe(intake, session, argocd)
                    bot.supervisor.alive("probe")
                    await asyncio.sleep(PROBE_SECONDS)

            bot.supervisor.spawn("probe", probing)
            log.info("preview-bot ready")
            try:
                yield
            finally:
                await bot.stop()
                if argocd is not None:
                    await argocd.close()

    return create_app(intake, lifespan), bot


class ServerImpl(NamedTuple):
    """The event loop and HTTP parser uvicorn runs on (its `loop` and `http` options)."""

    loop: str
    http: str


def server_impl() -> ServerImpl:
    """uvloop and httptools when importable (runtime dependencies: the image has them), else
    asyncio and h11. For uvicorn.run or uvicorn.Config(loop=..., http=...)."""
    return ServerImpl(
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
    )


def serve(settings: Settings, host: str, port: int) -> None:
    """Run the production bot until SIGTERM or SIGINT, then stop gracefully: /readyz fails at
    once, requests in flight are answered, syncs in flight get shutdown_grace_seconds, queued
    keys are left to the next start's resync, and the leader's lease is released."""
    app, bot = build(settings)

    class StopsReady(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            bot.intake.health.stopping = True  # not ready from this moment
            # The lines of the turn the loop is in are held until it ends: a loop stuck in
            # that turn (why a pod gets killed) would take them with it at the SIGKILL.
            flush_logs()
            super().handle_exit(sig, frame)

    impl = server_impl()
    log.info("serving on %s:%d with %s and %s", host, port, impl.loop, impl.http)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        loop=impl.loop,
        http=impl.http,
        timeout_graceful_shutdown=5,
        # Nothing reads the client's address, so X-Forwarded-* need no parsing; and the
        # answer does not announce the server software.
        proxy_headers=False,
        server_header=False,
    )
    StopsReady(config).run()
