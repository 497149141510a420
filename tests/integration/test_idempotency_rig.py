"""Idempotent writes on the rig: a fault right after each create of a deploy, a redeploy and a
teardown, then convergence on exactly one of everything.

The faults: GitHub applied the write and its answer was lost (a 502 instead of the answer), the
connection was cut after GitHub applied it, or the bot was killed while the write was in
flight (it reaches GitHub and is applied; a fresh Bot on the same fake and cluster starts and
resyncs). Each case prints the GitHub requests of the retry (what the bot sent after the fault
until it converged) and how many more the phase took than the same phase without a fault.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from bot.comment import parse_comment_state
from bot.model import TEARDOWN_FINALIZER
from tests.rig.github.server import FakeGitHub
from tests.rig.harness import NAME, OWNER, Harness

pytestmark = pytest.mark.rig

HOLD = 0.2  # how long the fake holds the write a kill interrupts (it is applied afterwards)


# ---- the rig: the harness's bot, restartable, with the check run on -----------------------


class Rig:
    """The harness with the check run on, plus a kill: the bot stopped mid-sync with no grace
    and a fresh one (new process state, new clients) started on the same fake and cluster,
    as a restarted pod would."""

    def __init__(self, h: Harness) -> None:
        self.h = h

    @property
    def fake(self) -> FakeGitHub:
        return self.h.fake

    async def kill(self) -> None:
        """Stop the running bot with no grace: its sync stops where it is."""
        await self.h.stop(kill=True)

    async def start(self) -> None:
        """A fresh bot on the same fake and cluster."""
        await self.h.start()

    async def settle(self) -> None:
        await self.h.bot.idle(quiet=0.1)


@pytest_asyncio.fixture(loop_scope="session")
async def rig(harness: Harness) -> Rig:
    # The check run on; a short teardown grace (the stand-in prunes at once) keeps it fast.
    await harness.restart(check_run=True, teardown_grace_seconds=0.3)
    return Rig(harness)


# ---- the creates, and where each phase makes them ------------------------------------------

Where = tuple[str, str]  # the method and a path pattern ({n}: the PR number) of its request


@dataclass(frozen=True)
class Create:
    """One kind of object the bot creates, and the request that makes it in each phase."""

    name: str
    deploy: Where | None
    redeploy: Where | None = None
    teardown: Where | None = None

    def at(self, phase: str, n: int) -> Where | None:
        where: Where | None = getattr(self, phase)
        return None if where is None else (where[0], where[1].format(n=n))


OVERLAY = r"/contents/infra/argocd/previews/pr-{n}/"
CREATES = (
    Create("overlay commit", ("PUT", OVERLAY), ("PUT", OVERLAY), ("DELETE", OVERLAY)),
    Create("deployment", ("POST", r"/deployments$"), ("POST", r"/deployments$")),
    Create(
        "deployment status",
        ("POST", r"/deployments/\d+/statuses$"),
        ("POST", r"/deployments/\d+/statuses$"),
        ("POST", r"/deployments/\d+/statuses$"),
    ),
    Create(
        "check run",
        ("POST", r"/check-runs$"),
        ("POST", r"/check-runs$"),
        ("PATCH", r"/check-runs/\d+$"),
    ),
    Create(
        "comment",
        ("POST", r"/issues/{n}/comments$"),
        ("PATCH", r"/issues/comments/\d+$"),
        ("PATCH", r"/issues/comments/\d+$"),
    ),
)
SHARED = Create("shared component files", ("PUT", r"/contents/infra/argocd/previews/_namespace/"))
# Killed right after the Application was written: the next GitHub write is held and never
# applied (cut), so the cluster holds the only trace of the interrupted sync.
APPLICATION = Create(
    "Application",
    ("POST", r"/deployments$"),
    ("POST", r"/deployments/\d+/statuses$"),
    ("DELETE", OVERLAY),
)


# ---- one case ------------------------------------------------------------------------------


@dataclass
class Figures:
    """The GitHub requests of one phase (token requests aside)."""

    total: int
    retry: list[str]  # the requests after the fault, until converged


def _requests(fake: FakeGitHub) -> list[Any]:
    return [r for r in fake.requests if not r.token_request]


def _label(r: Any) -> str:
    route = (r.route or r.path).removeprefix("/repos/{owner}/{repo}")
    return f"{r.method} {route} {r.status or 'cut'}"


class Case:
    """One PR going through deploy, ready, redeploy and teardown with one kind of fault."""

    def __init__(self, rig: Rig, n: int, fault: str, *creates: Create) -> None:
        self.rig = rig
        self.h = rig.h
        self.fake = rig.fake
        self.n = n
        self.fault = fault
        self.creates = creates  # each faulted once per phase that makes it (a kill: one)
        self.create = creates[0] if len(creates) == 1 else None
        self.heads: list[str] = []

    async def phase(self, phase: str, act: Callable[[], Any]) -> Figures | None:
        """Run one phase with the fault on this case's creates (those the phase makes)."""
        wheres = [w for c in self.creates if (w := c.at(phase, self.n)) is not None]
        self.fake.reset_counts()
        if not wheres:
            await act()
            await self.rig.settle()
            await self._finish(phase)
            return None if self.creates else Figures(len(_requests(self.fake)), [])
        if self.fault == "kill":
            return await self._kill(phase, wheres[0], act)
        for method, path in wheres:
            if self.fault == "502":
                self.fake.fail_after_apply(method, path, 502)
            else:
                self.fake.cut_after_apply(method, path)
        await act()
        await self.rig.settle()
        await self._finish(phase)
        reqs = _requests(self.fake)
        hit = [i for i, r in enumerate(reqs) if r.injected]
        assert len(hit) == len(wheres), f"faults {wheres} not hit once each: {hit}"
        return Figures(len(reqs), [_label(r) for r in reqs[hit[0] + 1 :]])

    async def _kill(self, phase: str, where: Where, act: Callable[[], Any]) -> Figures:
        """Hold the write, kill the bot while it is in flight, let the fake apply it (for the
        Application case: refuse it), then a fresh bot resyncs."""
        method, path = where
        self.fake.delay_next(method, path, HOLD)
        delay = self.fake._delays[-1]  # no public view of held requests
        if self.create is APPLICATION:
            self.fake.cut_next(method, path)
        app = f"dex-pr-{self.n}"
        if phase == "teardown":
            # Argo CD is still pruning when the pod restarts (a cascade takes seconds, a
            # write milliseconds), so the terminating Application still holds the record.
            self.h.standin.stick(app)
        await act()
        await _until(lambda: delay.count == 0, f"{method} {path} held")  # the bot waits on it
        served = self.fake.count(method, path)
        await self.rig.kill()
        # The held write answers (applied, or refused for the Application case) before the
        # fresh bot starts: the old process's request is over by the time a new pod runs.
        await _until(lambda: self.fake.count(method, path) > served, "the held write served")
        await self.rig.start()
        after = len(_requests(self.fake))
        await self.rig.h.bot.resync_once()
        await self.rig.settle()
        self.h.standin.unstick(app)
        await self._finish(phase)
        reqs = _requests(self.fake)
        return Figures(len(reqs), [_label(r) for r in reqs[after:]])

    async def _finish(self, phase: str) -> None:
        if phase == "teardown":
            await self.h.standin.wait_gone(f"dex-pr-{self.n}")
            await self.rig.settle()

    # ---- the phases
    async def deploy(self) -> Figures | None:
        pr = self.fake.create_pull(OWNER, NAME, self.n)
        self.heads.append(pr.head_sha)
        self.fake.add_label(OWNER, NAME, self.n, "preview")
        return await self.phase("deploy", lambda: self.h.deliver("labeled", self.n))

    async def ready(self) -> None:
        app = await self.h.app(self.n)
        assert app is not None
        await self.h.standin.set_status(
            f"dex-pr-{self.n}",
            revision=app["spec"]["source"]["targetRevision"],
            operation_phase="Succeeded",
        )
        await self.rig.settle()
        assert self.comment_state() == "ready"

    async def redeploy(self) -> Figures | None:
        sha = self.fake.push(OWNER, NAME, self.n, files={"app.py": f"v{len(self.heads)}\n"})
        self.heads.append(sha)
        return await self.phase("redeploy", lambda: self.h.deliver("synchronize", self.n))

    async def teardown(self) -> Figures | None:
        self.fake.close(OWNER, NAME, self.n)
        return await self.phase("teardown", lambda: self.h.deliver("closed", self.n))

    # ---- what converged means
    def comment_state(self) -> str:
        ours = [c for c in self.h.comments(self.n) if c.via_app]
        assert len(ours) == 1, f"PR {self.n}: {len(ours)} bot comments"
        return parse_comment_state(ours[0].body)[0] or "?"

    async def assert_converged(self, running: bool, commits: list[dict[str, Any]]) -> None:
        """One of everything: overlay commit, Application, comment, check run per head;
        deployments tidy."""
        n, fake = self.n, self.fake
        path = self.h.overlay_path(n)
        writes = [c for c in commits if path in c["files"]]
        assert len(writes) == 1, f"PR {n}: {len(writes)} overlay commits for one change"
        app = await self.h.app(n)
        head = self.heads[-1]
        if running:
            assert app is not None
            # Pinned to the very commit that wrote this head's overlay.
            assert app["spec"]["source"]["targetRevision"] == writes[0]["sha"]
            assert f"sha-{head[:8]}" in (self.h.overlay(n) or "")
            assert self.comment_state() == "deploying"
        else:
            assert app is None and self.h.overlay(n) is None
            assert self.comment_state() == "destroyed"
        runs = [r for r in fake.repo(OWNER, NAME).check_runs.values() if r.name == "preview"]
        for sha in self.heads:
            mine = [r for r in runs if r.head_sha == sha]
            assert len(mine) == 1, f"PR {n}: {len(mine)} check runs on {sha[:8]}"
        latest = next(r for r in runs if r.head_sha == head)
        assert (latest.status == "completed") is not running
        assert_tidy(fake, f"dex-pr-{n}", head if running else None)


def assert_tidy(fake: FakeGitHub, environment: str, running: str | None) -> None:
    """At most one deployment not inactive, for the SHA that runs; one deployment per head."""
    deps = fake.deployments(OWNER, NAME, environment)
    shas = [d.sha for d in deps]
    assert len(shas) == len(set(shas)), f"{environment}: two deployments of one SHA: {shas}"
    live = [d for d in deps if d.latest_state != "inactive"]
    if running is None:
        assert live == [], f"{environment}: {[(d.id, d.latest_state) for d in live]} active"
    else:
        assert [d.sha for d in live] == [running], f"{environment}: active {live}"


async def _until(check: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        await asyncio.sleep(0.005)


# ---- the tests -----------------------------------------------------------------------------

PHASES = ("deploy", "redeploy", "teardown")


def _cost(figures: Figures, happy: int | None) -> str:
    extra = "" if happy is None else f", {figures.total - happy:+d} over the happy path"
    shown = ", ".join(figures.retry)
    return f"{figures.total} requests{extra}; the retry {len(figures.retry)}: {shown}"


async def _lifecycle(case: Case, happy: dict[str, int] | None) -> dict[str, int]:
    """Deploy, ready, redeploy, teardown, each converged and checked; the figures printed."""
    h = case.h
    totals: dict[str, int] = {}
    steps = (
        ("deploy", case.deploy, True),
        ("redeploy", case.redeploy, True),
        ("teardown", case.teardown, False),
    )
    for phase, run, running in steps:
        before = len(h.commits())
        figures = await run()
        commits = h.commits()
        await case.assert_converged(running, commits[: len(commits) - before])
        if phase == "deploy":
            await case.ready()
        if figures is not None:
            totals[phase] = figures.total
            if case.creates:
                base = None if happy is None else happy[phase]
                what = case.create.name if case.create else "every create"
                label = f"{case.fault:>4} after {what} ({phase})"
                print(f"  {label:<42} {_cost(figures, base)}")
    return totals


@pytest.mark.parametrize("fault", ["502", "cut", "kill"])
async def test_a_fault_after_each_create_converges(rig: Rig, fault: str) -> None:
    print(f"\n[{fault}] GitHub requests per phase (token requests aside)")
    # The repository's first preview also writes the shared Namespace component.
    first = Case(rig, 100, fault, SHARED)
    before = len(rig.h.commits())
    figures = await first.deploy()
    commits = rig.h.commits()[: len(rig.h.commits()) - before]
    await first.assert_converged(True, commits)
    shared = [p for c in commits for p in c["files"] if "/_namespace/" in p]
    assert sorted(shared) == sorted(set(shared)) and len(shared) == 2, shared
    assert figures is not None
    print(f"  {fault:>4} after {SHARED.name + ' (deploy)':<36} {_cost(figures, None)}")

    if fault == "cut":
        # Past the adapter a cut is a lost answer like a 502 (same retry paths), so one PR
        # has every create cut once, to keep the file fast.
        await _lifecycle(Case(rig, 102, fault, *CREATES), None)
    elif fault == "502":
        happy = await _lifecycle(Case(rig, 101, fault), None)
        print(f"  happy path: {happy}")
        for n, create in enumerate(CREATES, start=102):
            await _lifecycle(Case(rig, n, fault, create), happy)
    else:  # a kill: the happy path is the 502 case's
        # A restarted bot finds a lost comment, status or check run by the same lookups as
        # the 502 cases above; the kills that differ are those whose trace is only in git or
        # the cluster (the overlay commit, the Application) or that must not be doubled (the
        # deployment). Three, to keep the file fast.
        killed = (CREATES[0], CREATES[1], APPLICATION)
        for n, create in enumerate(killed, start=102):
            await _lifecycle(Case(rig, n, fault, create), None)

    before = len(rig.h.commits())
    await first.teardown()
    await first.assert_converged(False, rig.h.commits()[: len(rig.h.commits()) - before])


# ---- the teardown's blind spot: Argo CD done while the bot is down -------------------------


async def _pruned_and_held(h: Harness, n: int) -> None:
    """Wait until Argo CD (the stand-in) has dropped its finalizer; the bot's still holds."""
    for _ in range(400):
        app = await h.app(n)
        assert app is not None, "gone: nothing held the Application for the bot"
        if app["metadata"]["finalizers"] == [TEARDOWN_FINALIZER]:
            assert app["metadata"]["deletionTimestamp"]
            return
        await asyncio.sleep(0.025)
    raise AssertionError("Argo CD's stand-in did not prune")


@pytest.mark.parametrize("killed", ["after the first teardown sync", "in the first teardown sync"])
async def test_a_teardown_argocd_finished_while_the_bot_was_down_ends_on_github(
    rig: Rig, killed: str
) -> None:
    # Without the bot's finalizer the Application would be gone by the restart: a closed PR
    # is in no list the resync reads, and its comment would say "deploying" for ever.
    h, fake, n = rig.h, rig.fake, 42
    await h.restart(check_run=True, teardown_grace_seconds=3600)  # no "teardown pending"
    fake.create_pull(OWNER, NAME, n)
    fake.add_label(OWNER, NAME, n, "preview")
    await h.deliver("labeled", n)
    await rig.settle()
    app = f"dex-pr-{n}"
    fake.close(OWNER, NAME, n)
    if killed == "after the first teardown sync":
        h.standin.stick(app)  # Argo CD slow: the first sync ends while it prunes
        await h.deliver("closed", n)
        await h.settle(follow_ups=False)
        assert h.overlay(n) is None  # the first sync did its part ...
        await rig.kill()
        h.standin.unstick(app)  # ... and Argo CD finishes while the bot is down
    else:
        # Killed while the overlay's delete (the first GitHub write after the Application's)
        # is in flight; GitHub applies it, Argo CD prunes meanwhile.
        path = OVERLAY.format(n=n)
        fake.delay_next("DELETE", path, HOLD)
        delay = fake._delays[-1]  # no public view of held requests
        await h.deliver("closed", n)
        await _until(lambda: delay.count == 0, "the overlay's delete held")
        served = fake.count("DELETE", path)
        await rig.kill()
        await _until(lambda: fake.count("DELETE", path) > served, "the held delete served")
    await _pruned_and_held(h, n)
    ours = [c for c in h.comments(n) if c.via_app]
    assert parse_comment_state(ours[0].body)[0] == "deploying"  # nobody said it yet

    fake.reset_counts()
    await rig.start()
    await h.resync()
    await h.standin.wait_gone(app)
    await rig.settle()
    recovery = _requests(fake)
    print(
        f"\nrecovery of a teardown killed {killed}: {len(recovery)} GitHub requests "
        f"(token requests aside): {', '.join(_label(r) for r in recovery)}"
    )
    case = Case(rig, n, "kill")
    assert case.comment_state() == "destroyed"
    assert await h.app(n) is None and h.overlay(n) is None
    assert_tidy(fake, app, None)  # every deployment inactive
    runs = [r for r in fake.repo(OWNER, NAME).check_runs.values() if r.name == "preview"]
    assert len(runs) == 1 and runs[0].status == "completed"
