"""The whole bot on the rig: real intake over ASGI, real GitHub adapter to the fake, real
Argo CD adapter to the test API server, and the Argo CD stand-in playing the controller."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import httpx2 as httpx
import pytest_asyncio

from bot.config import Settings
from bot.github import GitHub
from bot.kube import ArgoCD
from bot.service import Bot
from bot.webhooks import delivery_headers
from tests.rig.argocd import ArgoCDStandIn
from tests.rig.github.server import FakeGitHub
from tests.rig.kube import KubeRig
from tests.rig.kustomize import build_and_validate

SKELETON = Path(__file__).resolve().parents[2] / "bot" / "skeleton"
OWNER, NAME = "data-literate", "DEX"
SECRET = "rig-webhook-secret"


def skeleton_files() -> dict[str, str]:
    """The DEX-style infra tree (base + overlays/preview) as repository files."""
    return {
        str(p.relative_to(SKELETON)): p.read_text()
        for p in sorted(SKELETON.rglob("*"))
        if p.is_file() and "infra" in p.relative_to(SKELETON).parts
    }


class Harness:
    """A running bot wired to the rig, plus helpers to act as GitHub and as a user."""

    def __init__(
        self,
        fake: FakeGitHub,
        settings: Settings,
        bot: Bot,
        github: GitHub,
        argocd: ArgoCD,
        standin: ArgoCDStandIn,
        http: httpx.AsyncClient,
    ) -> None:
        self.fake = fake
        self.settings = settings
        self.bot = bot
        self.github = github
        self.argocd = argocd
        self.standin = standin
        self.http = http

    async def deliver(
        self,
        action: str,
        number: int,
        *,
        event: str = "pull_request",
        delivery: str | None = None,
        **extra: Any,
    ) -> httpx.Response:
        """Sign and POST a webhook built from the fake's current state."""
        payload = self.fake.event_payload(event, action, OWNER, NAME, number, **extra)
        return await self.post(payload, event=event, delivery=delivery)

    async def command(self, number: int, body: str, user: str = "octocat") -> httpx.Response:
        """`user` writes a comment on the PR and GitHub announces it (issue_comment created)."""
        resp = await self.deliver("created", number, event="issue_comment", body=body, user=user)
        assert resp.status_code in (200, 202), resp.text
        await self.settle()
        return resp

    async def post(
        self, payload: dict[str, Any], *, event: str = "pull_request", delivery: str | None = None
    ) -> httpx.Response:
        body = json.dumps(payload).encode()
        headers = delivery_headers(SECRET, event, body, delivery)
        return await self.http.post("/webhook", content=body, headers=headers)

    async def settle(self, limit: float = 30.0) -> None:
        await self.bot.idle(quiet=0.4, limit=limit)

    async def app(self, number: int) -> dict[str, Any] | None:
        """The whole Application object as the API server has it (None when gone)."""
        return await self.standin.find(f"dex-pr-{number}")

    def overlay_path(self, number: int) -> str:
        return f"infra/argocd/previews/pr-{number}/kustomization.yaml"

    def overlay(self, number: int, ref: str = "main") -> str | None:
        return self.fake.read_file(OWNER, NAME, ref, self.overlay_path(number))

    def commits(self) -> list[dict[str, Any]]:
        return self.fake.log(OWNER, NAME, "main")

    def comments(self, number: int) -> list[Any]:
        return self.fake.comments(OWNER, NAME, number)

    def deployments(self, number: int) -> list[Any]:
        return self.fake.deployments(OWNER, NAME, f"dex-pr-{number}")

    def build(self, number: int, dest: Path) -> list[dict[str, Any]]:
        """Check the repository out at main and build the PR's overlay with real kustomize."""
        if dest.exists():
            shutil.rmtree(dest)
        self.fake.checkout(OWNER, NAME, "main", dest)
        return build_and_validate(dest / Path(self.overlay_path(number)).parent)


@contextlib.asynccontextmanager
async def running_harness(
    github: FakeGitHub, kube: KubeRig, argocd_ns: str, **changes: Any
) -> AsyncIterator[Harness]:
    """A fresh DEX repository in the fake and a bot running on the rig with the harness's
    settings plus `changes`; everything stopped on the way out."""
    github.create_repo(OWNER, NAME, files=skeleton_files())
    # PR authors of the rig are the repository's maintainers: their label counts.
    github.set_permission(OWNER, NAME, "octocat", "write")
    settings = Settings(
        github_app_id=github.app_id,
        github_private_key=github.private_key_pem,
        github_webhook_secret=SECRET,
        github_api_url=github.url,
        repositories=(f"{OWNER}/{NAME}",),
        argocd_namespace=argocd_ns,
        workers=2,
        retry_seconds=0.1,
        teardown_grace_seconds=1.5,
        resync_seconds=3600,  # tests call resync_once() themselves
    )
    settings = replace(settings, **changes)
    api_client = await kube.api_client()  # the stand-in's
    bot = Bot(settings)
    bot.resync_at_start = False  # tests call resync_once() when they mean it
    async with (
        aiohttp.ClientSession() as session,
        kube.kubeapi() as api,
        ArgoCDStandIn(api_client, argocd_ns) as argo,
    ):
        gh = GitHub(session, settings, bot.metrics)
        argocd = ArgoCD(api, argocd_ns)
        bot.start(gh, argocd)
        from bot.app import create_app

        transport = httpx.ASGITransport(app=create_app(bot.intake))
        async with httpx.AsyncClient(transport=transport, base_url="http://bot") as http:
            try:
                yield Harness(github, settings, bot, gh, argocd, argo, http)
            finally:
                await bot.stop()
    await api_client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def harness(github: FakeGitHub, kube: KubeRig, argocd_ns: str) -> AsyncIterator[Harness]:
    """A fresh DEX repository in the fake and a running bot; everything stopped afterwards."""
    async with running_harness(github, kube, argocd_ns) as h:
        yield h


def with_settings(h: Harness, **changes: Any) -> Settings:
    return replace(h.settings, **changes)
