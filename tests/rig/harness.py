"""The whole bot on the rig: real intake over ASGI, real GitHub adapter to the fake, real
Argo CD adapter to the test API server, and the Argo CD stand-in playing the controller."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import aiohttp
import httpx2 as httpx
import pytest
import pytest_asyncio

from bot.config import SPECS, Settings, parse_value
from bot.github import GitHub
from bot.kube import ArgoCD
from bot.model import A_HEAD_SHA
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


@dataclass(frozen=True)
class Snapshot:
    """What a PR's world looks like to a user, to tell what a step changed (`changed`)."""

    commits: tuple[str, ...]  # main's history, newest first
    app: str | None  # the Application's spec and head (None: none), not its bookkeeping
    comments: tuple[tuple[int, str], ...]  # (id, author) of every comment on the PR
    bot_comment: str | None  # the bot's comment as it reads
    deployments: tuple[tuple[int, str, str | None], ...]  # (id, sha, latest state)
    labels: tuple[str, ...]
    reactions: tuple[tuple[int, str, str], ...]  # (comment id, who, content)

    def changed(self, after: Snapshot) -> set[str]:
        """The names of the parts that differ in `after`."""
        return {f.name for f in fields(self) if getattr(self, f.name) != getattr(after, f.name)}


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

    async def snapshot(self, number: int) -> Snapshot:
        app = await self.app(number)
        if app is not None:
            head = app["metadata"].get("annotations", {}).get(A_HEAD_SHA)
            app_text: str | None = json.dumps([app["spec"], head], sort_keys=True)
        else:
            app_text = None
        comments = self.comments(number)
        ours = [c.body for c in comments if c.via_app]
        return Snapshot(
            commits=tuple(c["sha"] for c in self.commits()),
            app=app_text,
            comments=tuple((c.id, c.user.login) for c in comments),
            bot_comment=ours[0] if ours else None,
            deployments=tuple((d.id, d.sha, d.latest_state) for d in self.deployments(number)),
            labels=tuple(sorted(self.fake.pull(OWNER, NAME, number).labels)),
            reactions=tuple(
                (c.id, who, what)
                for c in comments
                for who, what in self.fake.reactions(OWNER, NAME, c.id)
            ),
        )

    def build(self, number: int, dest: Path) -> list[dict[str, Any]]:
        """Check the repository out at main and build the PR's overlay with real kustomize."""
        if dest.exists():
            shutil.rmtree(dest)
        self.fake.checkout(OWNER, NAME, "main", dest)
        return build_and_validate(dest / Path(self.overlay_path(number)).parent)


def harness_env(**env: str) -> pytest.MarkDecorator:
    """Run a test's `harness` with settings given as the environment would give them, e.g.
    `@harness_env(PREVIEW_BOT_DRAFTS="true")` (parsed by the same code as the real thing)."""
    label = ",".join(f"{k}={v}" for k, v in env.items())
    return pytest.mark.parametrize("harness", [env], indirect=True, ids=[label])


def _env_changes(env: dict[str, str]) -> dict[str, Any]:
    by_env = {spec.env: spec for spec in SPECS}
    unknown = sorted(set(env) - set(by_env))
    if unknown:
        raise ValueError(f"harness_env: no setting is read from {', '.join(unknown)}")
    return {by_env[k].name: parse_value(by_env[k], v) for k, v in env.items()}


@pytest_asyncio.fixture(loop_scope="session")
async def harness(
    request: pytest.FixtureRequest, github: FakeGitHub, kube: KubeRig, argocd_ns: str
) -> AsyncIterator[Harness]:
    """A fresh DEX repository in the fake and a running bot; everything stopped afterwards.
    Settings differ from the defaults below only where a test asks (`harness_env`)."""
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
    settings = replace(settings, **_env_changes(getattr(request, "param", {})))
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


def with_settings(h: Harness, **changes: Any) -> Settings:
    return replace(h.settings, **changes)
