"""The chaos test (issue 10 item 8): a seeded storm of PR activity and faults, then convergence.

On the rig (real API server, the GitHub fake over HTTP, the Argo CD stand-in on autopilot, real
kustomize), two replicas with Lease electors run while 30 PRs are labeled, pushed, unlabeled,
closed and reopened at random. Meanwhile 20% of webhooks are dropped, some duplicated and some
held back and sent late (out of order), GitHub answers 10% of requests with a 5xx (some after
applying a write), a primary and a secondary rate-limit window open, the API server is killed
and restarted, and the leader is killed without grace (a fresh replica takes its place). After
the faults clear, everything must converge within 2 resync periods. Each seed prints its figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import httpx2 as httpx
import pytest
import yaml

from bot.app import create_app
from bot.config import Settings
from bot.github import GitHub
from bot.kube import ArgoCD
from bot.kubeapi import LEASES, KubeApi
from bot.leader import Elector, LeaseRef
from bot.model import A_HEAD_SHA, MANAGED_BY
from bot.service import Bot
from bot.webhooks import delivery_headers
from tests.rig.argocd import ArgoCDStandIn
from tests.rig.github.server import FakeGitHub
from tests.rig.github.state import Recorded
from tests.rig.harness import NAME, OWNER, SECRET, rig_settings, skeleton_files
from tests.rig.kube import KubeRig
from tests.rig.kustomize import build, validate

pytestmark = pytest.mark.rig

SEEDS = (1, 2, 3)
PRS = 30
FORKS = 3  # of the PRs, from forks: labeled or not, never a preview (fork_policy deny)
# Random PR actions between the big faults: before the primary window, before the secondary
# one, before the API server stops, while it is down (two batches), after the leader is killed.
BATCHES = (10, 10, 10, 5, 20, 15)
RESYNC_SECONDS = 6
# Production resyncs every 300 s, the test every RESYNC_SECONDS: other policy periods of the
# bot are compressed by the same factor (see Fleet.start).
TIME_SCALE = 300 / RESYNC_SECONDS
LEASE_SECONDS = 5.0  # short for a quick handover, long enough for a loaded machine to renew
DROP, LATE, DUPLICATE = 0.20, 0.15, 0.10  # shares of webhook deliveries
GITHUB_5XX = 0.10
PRIMARY_RESET_IN, SECONDARY_RETRY_AFTER = 3, 2  # the rate-limit windows, seconds
# A request already on its way when the bot read a rate-limit answer is no breach: the bot
# could not have known. Requests that arrive this long after the answer was sent could.
IN_FLIGHT = 0.5
LABEL = "preview"
_WEBHOOK_FAULTS = ("dropped", "late", "duplicated")
TAG = "ghcr.io/data-literate/dex:sha-"


@dataclass
class Replica:
    """One pod of the bot: its own Bot, HTTP session, API server client and intake."""

    name: str
    bot: Bot
    session: aiohttp.ClientSession
    api: KubeApi
    http: httpx.AsyncClient

    async def close(self) -> None:
        await self.http.aclose()
        await self.session.close()
        await self.api.close()


@dataclass
class Fleet:
    """The replicas of one Deployment, electing a leader on one Lease."""

    kube: KubeRig
    settings: Settings
    lease: LeaseRef
    live: list[Replica] = field(default_factory=list)
    started: int = 0

    async def start(self) -> Replica:
        name = f"replica-{self.started}"
        self.started += 1
        bot = Bot(self.settings)
        session = aiohttp.ClientSession()
        api = self.kube.kubeapi()
        elector = Elector(api, self.lease, name, LEASE_SECONDS)
        github = GitHub(session, self.settings, bot.metrics)
        # The slow-down after a secondary limit (writes 1 s apart for 300 s) is compressed like
        # the resync period, else it alone would outlast the convergence bound.
        throttle = github.transport.throttle
        slow = throttle.policy.slow_seconds / TIME_SCALE
        throttle.policy = replace(throttle.policy, slow_seconds=slow)
        bot.start(github, ArgoCD(api, self.settings.argocd_namespace), elector=elector)
        transport = httpx.ASGITransport(app=create_app(bot.intake))
        http = httpx.AsyncClient(transport=transport, base_url=f"http://{name}")
        replica = Replica(name, bot, session, api, http)
        self.live.append(replica)
        return replica

    def leader(self) -> Replica | None:
        return next((r for r in self.live if r.bot.leading), None)

    async def wait_for_leader(self, within: float) -> Replica | None:
        deadline = time.monotonic() + within
        while (leader := self.leader()) is None and time.monotonic() < deadline:  # noqa: ASYNC110 - polls other objects' state
            await asyncio.sleep(0.05)
        return leader

    async def kill(self, replica: Replica) -> None:
        """SIGKILL, as near as one process gets: every task cancelled at once, no grace, no
        lease release, nothing drained (its queue is lost with it)."""
        self.live.remove(replica)
        await replica.bot.supervisor.stop()
        replica.bot.leading = False
        await replica.close()

    async def stop(self) -> None:
        for replica in list(self.live):
            self.live.remove(replica)
            await replica.bot.stop(grace=1.0)
            await replica.close()


@dataclass
class Postman:
    """GitHub's webhooks over a bad network: some dropped, some twice, some late."""

    rng: random.Random
    fleet: Fleet
    seed: int
    # Who is up depends on timing: its own generator keeps the seed's actions reproducible.
    routing: random.Random = field(default_factory=random.Random)
    late: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)

    async def send(self, event: str, payload: dict[str, Any]) -> None:
        self.stats["webhooks"] += 1
        delivery = f"chaos-{self.seed}-{self.stats['webhooks']}"
        draw = self.rng.random()
        if draw < DROP:
            self.stats["webhooks dropped"] += 1
        elif draw < DROP + LATE:
            self.stats["webhooks late"] += 1
            self.late.append((event, payload, delivery))
        else:
            await self._post(event, payload, delivery)
            if self.rng.random() < DUPLICATE:
                self.stats["webhooks duplicated"] += 1
                await self._post(event, payload, delivery)
        if self.late and self.rng.random() < 0.3:
            await self._post(*self.late.pop(self.rng.randrange(len(self.late))))

    async def flush(self) -> None:
        """The late ones arrive last, newest first."""
        while self.late:
            await self._post(*self.late.pop())

    async def _post(self, event: str, payload: dict[str, Any], delivery: str) -> None:
        # The Service sends to ready pods: the leader; during a handover, to whoever is up.
        target = self.fleet.leader() or (
            self.routing.choice(self.fleet.live) if self.fleet.live else None
        )
        if target is None:
            self.stats["webhooks lost (no replica)"] += 1
            return
        body = json.dumps(payload).encode()
        headers = delivery_headers(SECRET, event, body, delivery)
        resp = await target.http.post("/webhook", content=body, headers=headers)
        self.stats[f"webhooks answered {resp.status_code}"] += 1


@dataclass
class World:
    """The PRs as the test drives them, and what the end state must be."""

    fake: FakeGitHub
    rng: random.Random
    postman: Postman
    forks: frozenset[int]

    def open_labeled(self, number: int) -> tuple[bool, bool]:
        pr = self.fake.pull(OWNER, NAME, number)
        return pr.state == "open", LABEL in pr.labels

    def expected(self) -> set[int]:
        """Exactly these PRs must have a preview: open, labeled, from the repository itself."""
        return {n for n in range(1, PRS + 1) if n not in self.forks and all(self.open_labeled(n))}

    def head(self, number: int) -> str:
        return self.fake.pull(OWNER, NAME, number).head_sha

    async def act(self, number: int) -> str:
        """One random thing a person does to PR `number`, and GitHub's webhook about it."""
        is_open, labeled = self.open_labeled(number)
        draw = self.rng.random()
        fake = self.fake
        if not is_open:
            if draw < 0.6:
                fake.reopen(OWNER, NAME, number)
                return await self._announce("reopened", number)
            return "nothing"
        if draw < 0.35:
            fake.push(OWNER, NAME, number, files={"app.py": f"print({self.rng.random()})\n"})
            return await self._announce("synchronize", number)
        if draw < 0.75:
            if labeled:
                fake.remove_label(OWNER, NAME, number, LABEL)
                return await self._announce("unlabeled", number)
            fake.add_label(OWNER, NAME, number, LABEL)
            return await self._announce("labeled", number)
        fake.close(OWNER, NAME, number)
        return await self._announce("closed", number)

    async def _announce(self, action: str, number: int) -> str:
        payload = self.fake.event_payload("pull_request", action, OWNER, NAME, number)
        await self.postman.send("pull_request", payload)
        return action


@pytest.fixture
async def standin(kube: KubeRig, argocd_ns: str) -> AsyncIterator[ArgoCDStandIn]:
    async with (
        await kube.api_client() as client,
        ArgoCDStandIn(client, argocd_ns, autopilot=True) as argo,
    ):
        yield argo


@pytest.mark.parametrize("seed", SEEDS)
async def test_chaos_converges(
    seed: int,
    github: FakeGitHub,
    kube: KubeRig,
    argocd_ns: str,
    standin: ArgoCDStandIn,
    admin_api: KubeApi,
    tmp_path: Path,
) -> None:
    fake = github
    rng = random.Random(seed)
    fake.create_repo(OWNER, NAME, files=skeleton_files())
    fake.set_permission(OWNER, NAME, "octocat", "write")
    settings = rig_settings(
        fake,
        argocd_ns,
        teardown_grace_seconds=1.0,
        resync_seconds=RESYNC_SECONDS,
        fork_policy="deny",
        leader_election=True,
        lease_seconds=LEASE_SECONDS,
        shutdown_grace_seconds=1.0,
    )
    lease = LeaseRef(argocd_ns, f"chaos-{seed}-{secrets.token_hex(4)}")
    fleet = Fleet(kube, settings, lease)
    postman = Postman(rng, fleet, seed)
    forks = frozenset(rng.sample(range(1, PRS + 1), FORKS))
    world = World(fake, rng, postman, forks)
    faults: Counter[str] = Counter()
    figures: dict[str, Any] = {}
    try:
        began = time.monotonic()
        await fleet.start()
        await fleet.start()
        for n in range(1, PRS + 1):
            if n in forks:
                fake.create_pull(OWNER, NAME, n, fork=True, user="outsider")
            else:
                fake.create_pull(OWNER, NAME, n)
            await postman.send(
                "pull_request", fake.event_payload("pull_request", "opened", OWNER, NAME, n)
            )
        figures["2 replicas up, PRs opened (s)"] = round(time.monotonic() - began, 1)
        fake.fail_randomly(GITHUB_5XX, seed, after_apply=0.3)
        began = time.monotonic()
        await storm(world, fleet, kube, faults, figures)
        figures["storm (s)"] = round(time.monotonic() - began, 1)
        await postman.flush()
        fake.stop_failing_randomly()
        # The faults have cleared once the last rate-limit window announced has closed too.
        windows = [r.pause_until for r in fake.requests if r.pause_until is not None]
        await asyncio.sleep(max([0.0, *windows]) - fake.clock())
        cleared = time.monotonic()
        expected = world.expected()
        converged_after = await wait_converged(world, admin_api, argocd_ns, cleared, figures)
        began = time.monotonic()
        results = await invariants(world, admin_api, argocd_ns, tmp_path)
        figures["final checks (s)"] = round(time.monotonic() - began, 1)
        requests = list(fake.requests)
    finally:
        await fleet.stop()
        await asyncio.to_thread(kube.restart_apiserver)  # no-op unless the storm left it down
        fake.stop_failing_randomly()
        with contextlib.suppress(Exception):
            await admin_api.delete(LEASES.path(lease.namespace, lease.name))

    injected = Counter(r.injected for r in requests if r.injected)
    faults["GitHub 5xx, not applied"] = injected["fail_randomly"]
    faults["GitHub 5xx after applying"] = injected["fail_randomly_after_apply"]
    faults["secondary-limit 403s"] = injected["fail_next"]
    faults["primary-limit 403s"] = sum(r.pause_scope == "installation" for r in requests)
    faults.update({k: v for k, v in postman.stats.items() if k.split()[-1] in _WEBHOOK_FAULTS})
    statuses = Counter(f"{r.status // 100}xx" if r.status else "cut" for r in requests)
    print(f"\n[chaos seed {seed}] {PRS} PRs ({len(forks)} from forks), {sum(BATCHES)} actions")
    print(
        f"  time to converge after the faults cleared: {converged_after:.1f} s "
        f"(bound: 2 resync periods = {2 * RESYNC_SECONDS} s)"
        if converged_after is not None
        else f"  did NOT converge within {2 * RESYNC_SECONDS} s of the faults clearing"
    )
    print(f"  previews expected at the end: {len(expected)}")
    print(f"  requests to GitHub: {len(requests)} ({dict(sorted(statuses.items()))})")
    print(f"  webhooks: {dict(sorted(postman.stats.items()))}")
    print(f"  faults injected: {dict(sorted(faults.items()))}")
    print(f"  timings: {figures}")
    for name, (ok, detail) in results.items():
        print(f"  {'PASS' if ok else 'FAIL'} {name}: {detail}")
    assert converged_after is not None, "no convergence within 2 resync periods"
    failed = [name for name, (ok, _) in results.items() if not ok]
    assert not failed, f"invariants broken: {failed}"


async def storm(
    world: World, fleet: Fleet, kube: KubeRig, faults: Counter[str], figures: dict[str, Any]
) -> None:
    """Random PR actions throughout, and the big faults one after another between them."""
    rng, fake = world.rng, world.fake

    async def actions(count: int) -> None:
        for _ in range(count):
            await world.act(rng.randint(1, PRS))
            await asyncio.sleep(rng.uniform(0.02, 0.15))

    await actions(BATCHES[0])
    # The installation's budget is spent until a reset a few seconds away.
    fake.set_rate_limit(fake.installation_for(OWNER, NAME).id, 0, reset_in=PRIMARY_RESET_IN)
    faults["primary rate-limit window"] += 1
    await actions(BATCHES[1])
    fake.fail_secondary_rate_limit(None, r"^/repos/", retry_after=SECONDARY_RETRY_AFTER)
    faults["secondary rate-limit window"] += 1
    await actions(BATCHES[2])
    await asyncio.to_thread(kube.stop_apiserver)
    down_at = time.monotonic()
    faults["API server killed"] += 1
    await actions(BATCHES[3])
    restart = asyncio.create_task(asyncio.to_thread(kube.restart_apiserver))
    await actions(BATCHES[4])
    await restart
    back_at = time.monotonic()
    figures["API server down (s)"] = round(back_at - down_at, 1)
    leader = await fleet.wait_for_leader(LEASE_SECONDS * 4)
    figures["a leader again after the API server came back (s)"] = round(
        time.monotonic() - back_at, 1
    )
    faults["leader killed" if leader is not None else "replica killed (no leader)"] += 1
    await fleet.kill(leader or fleet.live[0])
    await fleet.start()  # its pod comes back as a fresh process
    await actions(BATCHES[5])


async def observe(world: World, api: KubeApi, namespace: str) -> dict[str, tuple[bool, str]]:
    """The cheap invariants, read from the stores as they are now."""
    fake = world.fake
    expected = world.expected()
    files = fake.files(OWNER, NAME, "main")
    root = "infra/argocd/previews/"
    overlays = {
        int(p[len(root) + 3 :].split("/")[0])
        for p in files
        if p.startswith(root + "pr-") and p.endswith("/kustomization.yaml")
    }
    stale = sorted(
        n
        for n in expected & overlays
        if f"sha-{world.head(n)[:8]}" not in files[f"{root}pr-{n}/kustomization.yaml"]
    )
    listing = await api.get(f"/apis/argoproj.io/v1alpha1/namespaces/{namespace}/applications")
    apps = {
        a["metadata"]["name"]: a
        for a in listing["items"]
        if a["metadata"].get("labels", {}).get(MANAGED_BY) == "preview-bot"
    }
    want_apps = {f"dex-pr-{n}" for n in expected}
    behind = sorted(
        n
        for n in expected
        if (app := apps.get(f"dex-pr-{n}")) is not None
        and app["metadata"].get("annotations", {}).get(A_HEAD_SHA) != world.head(n)
    )
    return {
        "overlays are exactly the open labeled same-repo PRs": (
            overlays == expected,
            f"missing {sorted(expected - overlays)}, orphans {sorted(overlays - expected)}",
        ),
        "overlays pin the current head": (not stale, f"stale {stale}"),
        "Applications are exactly those PRs'": (
            set(apps) == want_apps,
            f"missing {sorted(want_apps - set(apps))}, orphans {sorted(set(apps) - want_apps)}",
        ),
        "Applications record the current head": (not behind, f"behind {behind}"),
    }


async def wait_converged(
    world: World, api: KubeApi, namespace: str, cleared: float, figures: dict[str, Any]
) -> float | None:
    """Seconds from the faults clearing until the stores agree, or None past the bound."""
    deadline = cleared + 2 * RESYNC_SECONDS
    while (looked := time.monotonic()) <= deadline:
        with contextlib.suppress(Exception):  # the API server may still be coming back
            found = await observe(world, api, namespace)
            if all(ok for ok, _ in found.values()):
                return looked - cleared
            late = {name: detail for name, (ok, detail) in found.items() if not ok}
            figures["last to converge"] = f"+{looked - cleared:.1f}s {late}"
        await asyncio.sleep(0.25)
    return None


async def invariants(
    world: World, api: KubeApi, namespace: str, tmp_path: Path
) -> dict[str, tuple[bool, str]]:
    fake = world.fake
    results = await observe(world, api, namespace)
    expected = sorted(world.expected())
    checkout = fake.checkout(OWNER, NAME, "main", tmp_path / "main")
    wrong: list[str] = []
    overlays = {n: checkout / f"infra/argocd/previews/pr-{n}" for n in expected}
    wrong += [f"pr-{n}: no overlay" for n, path in overlays.items() if not path.is_dir()]
    built = [n for n, path in overlays.items() if path.is_dir()]
    texts = await asyncio.gather(*(asyncio.to_thread(build, overlays[n]) for n in built))
    if texts:
        # One validation of every build: kubernetes-validate starts slowly.
        await asyncio.to_thread(validate, "---\n".join(texts))
    for n, text in zip(built, texts, strict=True):
        objs = [doc for doc in yaml.safe_load_all(text) if doc]
        images = [
            c["image"]
            for o in objs
            if o["kind"] == "Deployment"
            for c in o["spec"]["template"]["spec"]["containers"]
        ]
        spaces = [o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"]
        homes = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
        if (
            images != [TAG + world.head(n)[:8]]
            or spaces != [f"dex-pr-{n}"]
            or homes != {f"dex-pr-{n}"}
        ):
            wrong.append(f"pr-{n}: images {images}, namespaces {spaces}, homes {homes}")
    results["each preview builds (kustomize) to sha-<head[:8]> in its own Namespace"] = (
        not wrong,
        f"{len(expected)} built" + (f"; wrong: {wrong}" if wrong else ""),
    )
    comments = {n: sum(c.via_app for c in fake.comments(OWNER, NAME, n)) for n in range(1, PRS + 1)}
    many = {n: k for n, k in comments.items() if k > 1}
    results["at most one bot comment per PR"] = (
        not many,
        f"{sum(comments.values())} bot comments on {sum(1 for k in comments.values() if k)} PRs"
        + (f"; more than one: {many}" if many else ""),
    )
    active: dict[str, int] = Counter(
        d.environment for d in fake.deployments(OWNER, NAME) if d.latest_state != "inactive"
    )
    crowded = {env: k for env, k in active.items() if k > 1}
    results["at most one non-inactive deployment per environment"] = (
        not crowded,
        f"{len(fake.deployments(OWNER, NAME))} deployments"
        + (f"; crowded: {crowded}" if crowded else ""),
    )
    breaches, windows = rate_limit_breaches(fake.requests)
    results["no request inside an announced rate-limit window"] = (
        not breaches,
        f"{windows} windows announced, {len(breaches)} breaches"
        + (f": {breaches[:5]}" if breaches else ""),
    )
    return results


def rate_limit_breaches(requests: list[Recorded]) -> tuple[list[str], int]:
    """Requests the bot sent while a window it had been told of was open: a primary window
    (remaining 0 until x-ratelimit-reset) holds its installation, a secondary one (retry-after)
    the whole App."""
    breaches: list[str] = []
    windows = [r for r in requests if r.pause_until is not None]
    for w in windows:
        until = w.pause_until
        assert until is not None
        app_wide = w.pause_scope == "app"
        held = [
            r
            for r in requests
            if w.at + IN_FLIGHT < r.arrived < until
            and (app_wide or r.installation == w.installation)
        ]
        breaches += [
            f"{r.method} {r.path} {r.arrived - w.at:.2f}s into a {until - w.at:.1f}s "
            f"{w.pause_scope} window"
            for r in held
        ]
    return breaches, len(windows)
