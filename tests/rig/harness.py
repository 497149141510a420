"""The whole bot on the rig: real intake over ASGI, real GitHub adapter to the fake, real
Argo CD adapter to the test API server, and the Argo CD stand-in playing the controller."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx2 as httpx
import pytest
import pytest_asyncio

from bot.app import create_app
from bot.config import SPECS, Settings, parse_value
from bot.github import GitHub
from bot.kube import ArgoCD
from bot.model import A_HEAD_SHA
from bot.ports import ImagePort
from bot.resync import ResyncReport
from bot.service import Bot
from bot.webhooks import delivery_headers
from tests.rig.argocd import ArgoCDStandIn
from tests.rig.clock import FakeClock
from tests.rig.github.server import FakeGitHub
from tests.rig.kube import KubeRig
from tests.rig.kustomize import build_and_validate

ImagesFactory = Callable[[aiohttp.ClientSession, Settings], ImagePort]

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
    """A running bot wired to the rig, plus helpers to act as GitHub and as a user.

    With a `clock`, the bot's syncs, its resync and its GitHub adapter, and the GitHub fake
    (its label, comment and token times) all read that one FakeClock, so a test crosses days
    with `advance` instead of sleeping. `restart` replaces the bot by a fresh one (a new
    process: no memory of the old one) on the same GitHub fake, cluster and Argo CD stand-in.
    """

    def __init__(
        self,
        fake: FakeGitHub,
        kube: KubeRig,
        standin: ArgoCDStandIn,
        settings: Settings,
        clock: FakeClock | None = None,
        *,
        images: ImagesFactory | None = None,
        kubeconfig: dict[str, Any] | None = None,
    ) -> None:
        self.fake = fake
        self.images = images
        self.kubeconfig = kubeconfig
        self.kube = kube
        self.standin = standin
        self.settings = settings
        self.clock = clock
        self._running: AsyncExitStack | None = None
        # Set by start(): the bot and its adapters.
        self.bot: Bot
        self.github: GitHub
        self.argocd: ArgoCD
        self.http: httpx.AsyncClient

    def now(self) -> datetime:
        """What the bot takes for now."""
        return datetime.fromtimestamp(self.clock.now() if self.clock else time.time(), UTC)

    async def start(self) -> None:
        """Start a bot on the current settings (the harness fixture has started one)."""
        if self._running is not None:
            raise RuntimeError("a bot is running: stop() or restart()")
        stack = AsyncExitStack()
        bot = Bot(self.settings) if self.clock is None else Bot(self.settings, clock=self.now)
        bot.resync_at_start = False  # tests call resync_once() when they mean it
        session = await stack.enter_async_context(aiohttp.ClientSession())
        api = await stack.enter_async_context(self.kube.kubeapi(self.kubeconfig))
        gh = GitHub(session, self.settings, bot.metrics, clock=self.clock)
        argocd = ArgoCD(api, self.standin.namespace)
        images = self.images(session, self.settings) if self.images else None
        bot.start(gh, argocd, images=images)
        transport = httpx.ASGITransport(app=create_app(bot.intake))
        http = httpx.AsyncClient(transport=transport, base_url="http://bot")
        await stack.enter_async_context(http)
        self.bot, self.github, self.argocd, self.http = bot, gh, argocd, http
        self._running = stack

    async def stop(self, *, kill: bool = False) -> None:
        """Stop the bot and close its clients (the stand-in and the fake stay). With `kill`,
        syncs in flight get no grace and stop where they are, as in a killed pod."""
        if self._running is not None:
            running, self._running = self._running, None
            await self.bot.stop(grace=0 if kill else None)  # before its clients close
            await running.aclose()

    async def restart(self, **changes: Any) -> None:
        """A fresh bot (a new process) on the same GitHub fake and cluster, with `changes` to
        the settings: whatever it knows it reads from GitHub and the cluster."""
        await self.stop()
        self.settings = replace(self.settings, **changes)
        await self.start()

    def advance(self, seconds: float) -> None:
        """Move the shared fake clock (only on a harness made with one)."""
        if self.clock is None:
            raise RuntimeError("this harness runs on the real clock: use `timed_harness`")
        self.clock.advance(seconds)

    async def resync(self) -> ResyncReport:
        """One resync, as the periodic loop would run it, and the syncs it queues."""
        report = await self.bot.resync_once()
        await self.settle()
        return report

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

    async def settle(self, limit: float = 30.0, *, follow_ups: bool = True) -> None:
        """Wait until the bot has nothing to do for a moment. With `follow_ups=False` a later
        look the bot scheduled (a gate's backoff: the image may appear) is not work to wait
        for, only syncs queued, running or retrying are."""
        if follow_ups:
            await self.bot.idle(quiet=0.4, limit=limit)
            return
        queue = self.bot.queue
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        calm_since: float | None = None
        while calm_since is None or loop.time() - calm_since < 0.4:
            if len(queue) or queue.running or queue.held:
                calm_since = None
            elif calm_since is None:
                calm_since = loop.time()
            if loop.time() > deadline:
                raise TimeoutError(f"bot still busy after {limit}s")
            await asyncio.sleep(0.02)

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


def rig_settings(github: FakeGitHub, argocd_ns: str, **changes: Any) -> Settings:
    """The rig's bot settings (the fake's App and URL, the rig's repository and namespace,
    fast retries, no periodic resync: tests call resync_once()), with `changes`."""
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
        resync_seconds=3600,
    )
    return replace(settings, **changes)


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


@asynccontextmanager
async def running_harness(
    github: FakeGitHub,
    kube: KubeRig,
    argocd_ns: str,
    *,
    clock: FakeClock | None = None,
    images: ImagesFactory | None = None,
    kubeconfig: dict[str, Any] | None = None,
    **changes: Any,
) -> AsyncIterator[Harness]:
    """A fresh DEX repository in the fake and a running bot; everything stopped afterwards.

    `changes` are settings for this bot, `clock` a FakeClock the bot and the fake share,
    `images` makes its registry probe (from the bot's session and settings), `kubeconfig`
    points the bot (not the stand-in) at another address of the API server, such as a relay
    a test can cut.
    """
    github.create_repo(OWNER, NAME, files=skeleton_files())
    # PR authors of the rig are the repository's maintainers: their label counts.
    github.set_permission(OWNER, NAME, "octocat", "write")
    if clock is not None:
        github.clock = clock.now  # the fixture `github` puts the real clock back
    settings = rig_settings(github, argocd_ns, **changes)
    api_client = await kube.api_client()  # the stand-in's
    try:
        async with ArgoCDStandIn(api_client, argocd_ns) as argo:
            h = Harness(github, kube, argo, settings, clock, images=images, kubeconfig=kubeconfig)
            await h.start()
            try:
                yield h
            finally:
                await h.stop()
    finally:
        await api_client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def harness(
    request: pytest.FixtureRequest, github: FakeGitHub, kube: KubeRig, argocd_ns: str
) -> AsyncIterator[Harness]:
    """A fresh DEX repository in the fake and a running bot; everything stopped afterwards.
    Settings differ from the defaults only where a test asks (`harness_env`)."""
    changes = _env_changes(getattr(request, "param", {}))
    async with running_harness(github, kube, argocd_ns, **changes) as h:
        yield h


@pytest_asyncio.fixture(loop_scope="session")
async def timed_harness(
    github: FakeGitHub, kube: KubeRig, argocd_ns: str
) -> AsyncIterator[Harness]:
    """The harness on a FakeClock shared by the bot and the GitHub fake: `h.advance(7 * DAY)`
    crosses a week in no time."""
    async with running_harness(github, kube, argocd_ns, clock=FakeClock()) as h:
        yield h


def with_settings(h: Harness, **changes: Any) -> Settings:
    return replace(h.settings, **changes)
