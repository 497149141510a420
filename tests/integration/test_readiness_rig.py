"""Ready means ready, on the rig: Argo CD's verdict on the pinned revision, the gates (required
checks, commit statuses, the image in a real registry), the `preview` check run, the deployment
status and the time to ready.

The Argo CD stand-in writes `.status` the way Argo CD's controller does; GitHub is the HTTP fake
(contract-checked), CI's check runs and statuses are set in it and announced with deliveries built
from GitHub's own examples; the registry is CNCF distribution with an image pushed through its
API. Time that must pass (a ready timeout, a time to ready) passes on a fake clock given to the
syncer: nothing sleeps for it and nothing is timed.
"""

from __future__ import annotations

import copy
import re
import secrets
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from bot.comment import parse_comment_state
from bot.config import Settings
from bot.model import A_HEAD_SHA
from bot.ports import ImagePort
from bot.registry import Registry
from tests.rig.clock import FakeClock, until
from tests.rig.github.server import FakeGitHub
from tests.rig.github.state import CheckRun, Deployment
from tests.rig.harness import NAME, OWNER, Harness, running_harness
from tests.rig.kube import KubeRig
from tests.rig.net import Relay
from tests.rig.registry import RegistryRig, push_image

pytestmark = pytest.mark.rig

URL = "https://dex-pr-{}.preview.example.com"


# ---- what the PR shows ------------------------------------------------------------------------


def comment(h: Harness, number: int) -> tuple[str, str]:
    """(state, body) of the PR's one comment, which the bot wrote."""
    (ours,) = [c for c in h.comments(number) if c.via_app]
    assert len(h.comments(number)) == 1  # never a second one
    state, _ = parse_comment_state(ours.body)
    return state or "?", ours.body


def preview_runs(h: Harness, sha: str | None = None) -> list[CheckRun]:
    """The bot's `preview` check runs (on `sha`), oldest first."""
    runs = h.fake.repo(OWNER, NAME).check_runs.values()
    return sorted(
        (
            r
            for r in runs
            if r.name == "preview" and r.app is None and (sha is None or r.head_sha == sha)
        ),
        key=lambda r: r.id,
    )


def check_run(h: Harness, sha: str) -> tuple[str, str | None, str | None]:
    """(status, conclusion, details_url) of the head's one `preview` check run."""
    (run,) = preview_runs(h, sha)
    return run.status, run.conclusion, run.details_url


def deployment(h: Harness, number: int, sha: str) -> Deployment:
    found: list[Deployment] = [d for d in h.deployments(number) if d.sha == sha]
    (dep,) = found
    return dep


async def revision(h: Harness, number: int) -> str:
    """The overlay commit the Application is pinned to."""
    app = await h.app(number)
    assert app is not None
    pinned: str = app["spec"]["source"]["targetRevision"]
    return pinned


async def label(h: Harness, number: int, *, follow_ups: bool = True) -> str:
    """A maintainer's PR (opened here unless the test did) gets the `preview` label; its head."""
    repo = h.fake.repo(OWNER, NAME)
    pr = repo.pulls[number] if number in repo.pulls else h.fake.create_pull(OWNER, NAME, number)
    h.fake.add_label(OWNER, NAME, number, "preview")
    resp = await h.deliver("labeled", number)
    assert resp.status_code == 202, resp.text
    await h.settle(follow_ups=follow_ups)
    return pr.head_sha


async def argo(h: Harness, number: int, **status: Any) -> None:
    """Argo CD writes a status; the bot's watch sees it."""
    await h.standin.set_status(f"dex-pr-{number}", **status)
    await h.settle()


async def healthy(h: Harness, number: int, pinned: str) -> None:
    """Argo CD synced `pinned` and every resource is healthy."""
    await argo(
        h, number, sync="Synced", health="Healthy", revision=pinned, operation_phase="Succeeded"
    )


def fake_time(h: Harness) -> FakeClock:
    """The syncer's clock, moved by hand (deploy times, time to ready, the ready timeout)."""
    clock = FakeClock()
    syncer = h.bot.syncer
    assert syncer is not None
    syncer.clock = lambda: datetime.fromtimestamp(clock.now(), UTC)
    return clock


async def time_to_ready(h: Harness) -> tuple[float, float]:
    """(count, sum) of the time-to-ready histogram, as /metrics exports it."""
    resp = await h.http.get("/metrics")
    assert resp.status_code == 200
    for family in text_string_to_metric_families(resp.text):
        if family.name == "preview_bot_time_to_ready_seconds":
            values = {s.name: s.value for s in family.samples}
            return values["preview_bot_time_to_ready_seconds_count"], values[
                "preview_bot_time_to_ready_seconds_sum"
            ]
    raise AssertionError("no preview_bot_time_to_ready_seconds in /metrics")


async def deliver(h: Harness, payload: dict[str, Any], event: str) -> None:
    resp = await h.post(payload, event=event)
    assert resp.status_code == 202, resp.text
    await h.settle()


# ---- Argo CD's verdict ------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def checked(github: FakeGitHub, kube: KubeRig, argocd_ns: str) -> AsyncIterator[Harness]:
    """The rig's bot with the `preview` check run on."""
    async with running_harness(github, kube, argocd_ns, check_run=True) as h:
        yield h


async def test_progressing_then_healthy_is_ready_with_its_time_to_ready(checked: Harness) -> None:
    h = checked
    clock = fake_time(h)
    sha = await label(h, 51)
    assert comment(h, 51)[0] == "deploying"
    assert check_run(h, sha) == ("in_progress", None, None)
    assert deployment(h, 51, sha).latest_state == "in_progress"
    pinned = await revision(h, 51)

    # Argo CD syncs the pinned revision; the pods are still starting: nothing changes.
    h.fake.reset_counts()
    clock.advance(40)
    await argo(
        h, 51, sync="Synced", health="Progressing", revision=pinned, operation_phase="Running"
    )
    assert comment(h, 51)[0] == "deploying"
    assert h.fake.count(method="PATCH") + h.fake.count(method="POST") == 0

    clock.advance(35)
    await healthy(h, 51, pinned)
    state, body = comment(h, 51)
    assert state == "ready"
    assert "✅ Preview ready" in body
    assert "⏱️ Ready in 1m 15s from the push." in body
    assert f"[Visit Preview]({URL.format(51)})" in body
    assert check_run(h, sha) == ("completed", "success", URL.format(51))
    dep = deployment(h, 51, sha)
    assert dep.latest_state == "success"
    assert dep.statuses[-1].environment_url == URL.format(51)
    # Exported too: one observation of 75 s.
    assert await time_to_ready(h) == (1.0, 75.0)

    # Argo CD rewrites the same verdict (a periodic reconcile): no new observation, no write.
    h.fake.reset_counts()
    await argo(h, 51, sync="Synced", health="Healthy", revision=pinned)
    assert h.fake.count(method="PATCH") + h.fake.count(method="POST") == 0
    assert await time_to_ready(h) == (1.0, 75.0)


NASTY = (
    'one or more objects failed to apply, reason: Deployment.apps "dex-api" is invalid: '
    "<img src=x onerror=alert(1)> @octocat [click](https://evil.example) `x` | cell"
)


async def test_degraded_and_a_failed_sync_fail_with_argo_cds_words_escaped(
    checked: Harness,
) -> None:
    h = checked
    # PR 52: synced, then the pods crash-loop: Degraded after a successful sync operation.
    sha = await label(h, 52)
    pinned = await revision(h, 52)
    await argo(
        h, 52, sync="Synced", health="Degraded", revision=pinned, operation_phase="Succeeded"
    )
    state, body = comment(h, 52)
    assert state == "failed"
    assert "❌ Preview failed" in body
    assert "Last error: Argo CD reports the preview degraded" in body
    assert "successfully synced" not in body  # the sync's own success is no reason
    status, conclusion, details = check_run(h, sha)
    assert (status, conclusion, details) == ("completed", "failure", None)
    assert preview_runs(h, sha)[0].output["summary"] == "Argo CD reports the preview degraded"
    assert deployment(h, 52, sha).latest_state == "failure"

    # PR 53: the sync operation fails, with a message full of markup: quoted, inert.
    sha = await label(h, 53)
    pinned = await revision(h, 53)
    await argo(
        h,
        53,
        sync="OutOfSync",
        health="Missing",
        revision=pinned,
        operation_phase="Failed",
        message=NASTY,
    )
    state, body = comment(h, 53)
    assert state == "failed"
    escaped = (
        'Deployment.apps "dex-api" is invalid: \\<img src=x onerror=alert\\(1\\)\\> @\u200docto'
    )
    assert f"Last error: one or more objects failed to apply, reason: {escaped}" in body
    assert "\\[click\\]\\(https://evil.example\\) \\`x\\` \\| cell" in body
    # Markup only escaped: no raw tag, no mention (a zero-width joiner breaks it).
    assert re.search(r"(?<!\\)<img", body) is None and "@octocat" not in body
    assert check_run(h, sha) == ("completed", "failure", None)
    assert "\\<img" in preview_runs(h, sha)[0].output["summary"]
    assert deployment(h, 53, sha).latest_state == "failure"


async def test_an_old_revision_reported_healthy_is_not_ready(checked: Harness) -> None:
    h = checked
    sha1 = await label(h, 54)
    old = await revision(h, 54)
    # A push before Argo CD got to the first commit: a new overlay commit, a new check run.
    sha2 = h.fake.push(OWNER, NAME, 54, files={"app.py": "print('v2')\n"})
    await h.deliver("synchronize", 54)
    await h.settle()
    new = await revision(h, 54)
    assert new != old
    (superseded,) = preview_runs(h, sha1)
    assert (superseded.status, superseded.conclusion) == ("completed", "neutral")
    assert superseded.output["title"] == "Superseded"
    assert check_run(h, sha2) == ("in_progress", None, None)

    # Argo CD finishes the *old* revision, healthy: it speaks for the old overlay, not this head.
    h.fake.reset_counts()
    await healthy(h, 54, old)
    state, body = comment(h, 54)
    assert state == "deploying"
    assert f"/commit/{sha2})" in body
    assert check_run(h, sha2) == ("in_progress", None, None)
    assert deployment(h, 54, sha1).latest_state == "inactive"
    assert deployment(h, 54, sha2).latest_state == "in_progress"
    assert h.fake.count(method="PATCH") + h.fake.count(method="POST") == 0

    # Then the pinned one: ready.
    await healthy(h, 54, new)
    assert comment(h, 54)[0] == "ready"
    assert check_run(h, sha2) == ("completed", "success", URL.format(54))
    assert deployment(h, 54, sha2).latest_state == "success"
    assert (superseded.status, superseded.conclusion) == ("completed", "neutral")  # untouched


async def test_a_watch_cut_mid_way_resumes_and_reaches_ready(
    github: FakeGitHub, kube: KubeRig, argocd_ns: str
) -> None:
    host, port = kube.server.removeprefix("https://").rsplit(":", 1)
    relay = Relay(host, int(port))
    await relay.start()
    kubeconfig = copy.deepcopy(kube.kubeconfig)
    kubeconfig["clusters"][0]["cluster"]["server"] = f"https://{host}:{relay.port}"
    try:
        async with running_harness(
            github, kube, argocd_ns, kubeconfig=kubeconfig, check_run=True
        ) as h:
            sha = await label(h, 55)
            pinned = await revision(h, 55)
            before = relay.accepted
            # The bot's connection to the API server drops (its watch with it); meanwhile
            # Argo CD reports the preview healthy. The bot cannot have seen it.
            relay.cut()
            await h.standin.set_status(
                "dex-pr-55",
                sync="Synced",
                health="Healthy",
                revision=pinned,
                operation_phase="Succeeded",
            )
            assert comment(h, 55)[0] == "deploying"
            relay.up = True  # the network is back
            await until(lambda: comment(h, 55)[0] == "ready", limit=20)
            await h.settle()
            assert relay.accepted > before  # it came back on a new connection
            watch = h.bot.supervisor.tasks["watch"]
            # ...by itself, resuming from the last version it saw: not a crash and restart.
            assert watch.restarts == 0
            assert check_run(h, sha) == ("completed", "success", URL.format(55))
            assert deployment(h, 55, sha).latest_state == "success"
    finally:
        await relay.stop()


async def test_a_verdict_the_watch_never_delivered_is_found_by_the_resync(
    checked: Harness,
) -> None:
    h = checked
    sha = await label(h, 56)
    pinned = await revision(h, 56)
    await h.bot.supervisor.stop(["watch"])  # a watch that hangs: its events never arrive
    await healthy(h, 56, pinned)
    assert comment(h, 56)[0] == "deploying"
    report = await h.bot.resync_once()
    assert report.queued == 1
    await h.settle()
    assert comment(h, 56)[0] == "ready"
    assert check_run(h, sha) == ("completed", "success", URL.format(56))
    assert deployment(h, 56, sha).latest_state == "success"


async def test_no_verdict_within_the_ready_timeout_fails_with_what_argo_cd_last_said(
    checked: Harness,
) -> None:
    h = checked
    clock = fake_time(h)
    sha = await label(h, 57)
    pinned = await revision(h, 57)
    await argo(
        h, 57, sync="OutOfSync", health="Progressing", revision=pinned, operation_phase="Running"
    )
    clock.advance(h.settings.ready_timeout_seconds - 1)
    assert (await h.bot.resync_once()).queued == 0  # not yet due
    await h.settle()
    assert comment(h, 57)[0] == "deploying"
    clock.advance(1)
    assert (await h.bot.resync_once()).queued == 1  # the resync enforces the timeout
    await h.settle()
    state, body = comment(h, 57)
    assert state == "failed"
    said = (
        "timed out after 600s; Argo CD last said: sync OutOfSync, health Progressing, "
        "operation Running; one or more tasks are running"
    )
    assert f"Last error: {said}" in body
    assert check_run(h, sha) == ("completed", "failure", None)
    assert preview_runs(h, sha)[0].output["summary"] == said
    assert deployment(h, 57, sha).latest_state == "failure"


# ---- the gate: required checks and statuses ------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def gated(github: FakeGitHub, kube: KubeRig, argocd_ns: str) -> AsyncIterator[Harness]:
    """The rig's bot waiting for CI's `build` (a check run or a commit status) on each head."""
    async with running_harness(
        github, kube, argocd_ns, check_run=True, required_checks=("build",)
    ) as h:
        yield h


async def assert_waiting(h: Harness, number: int, sha: str, link: str) -> None:
    state, body = comment(h, number)
    assert state == "waiting"
    assert f"Waiting for {link} on `{sha[:8]}`." in body
    assert check_run(h, sha) == ("queued", None, None)
    assert h.deployments(number) == []
    assert await h.app(number) is None
    assert h.overlay(number) is None


async def test_a_required_check_pending_then_success_deploys(gated: Harness) -> None:
    h = gated
    pr = h.fake.create_pull(OWNER, NAME, 60)
    build = h.fake.start_check(OWNER, NAME, pr.head_sha, "build")
    link = f"[build](https://github.com/{OWNER}/{NAME}/runs/{build.id})"
    sha = await label(h, 60)
    await assert_waiting(h, 60, sha, link)
    # Another check finishing changes nothing (it is not a required one).
    other = h.fake.complete_check(OWNER, NAME, sha, "lint", "success")
    await deliver(h, h.fake.check_run_payload(OWNER, NAME, other.id), "check_run")
    await assert_waiting(h, 60, sha, link)

    h.fake.reset_counts()
    h.fake.complete_check(OWNER, NAME, sha, "build", "success")
    await deliver(h, h.fake.check_run_payload(OWNER, NAME, build.id), "check_run")
    gated_deploy = h.fake.count()
    writes = h.fake.count(method="PUT") + h.fake.count(method="POST") + h.fake.count(method="PATCH")
    print(f"\nGitHub requests of a deploy gated on a check run: {gated_deploy} ({writes} writes)")
    assert comment(h, 60)[0] == "deploying"
    assert check_run(h, sha) == ("in_progress", None, None)  # the same check run, moved on
    assert deployment(h, 60, sha).latest_state == "in_progress"
    app = await h.app(60)
    assert app is not None and app["metadata"]["annotations"][A_HEAD_SHA] == sha
    # The PR (a free 304), the head's statuses and check runs, the shared Namespace component
    # (2, the repository's first preview), the overlay, the deployment and its status, the
    # check run, the comment.
    assert gated_deploy <= 11


async def test_a_required_check_that_fails_deploys_nothing(gated: Harness) -> None:
    h = gated
    pr = h.fake.create_pull(OWNER, NAME, 61)
    build = h.fake.start_check(OWNER, NAME, pr.head_sha, "build")
    sha = await label(h, 61)
    link = f"[build](https://github.com/{OWNER}/{NAME}/runs/{build.id})"
    await assert_waiting(h, 61, sha, link)
    h.fake.complete_check(OWNER, NAME, sha, "build", "failure")
    # This time CI's check suite announces it.
    await deliver(h, h.fake.check_suite_payload(OWNER, NAME, sha), "check_suite")
    state, body = comment(h, 61)
    assert state == "failed"
    assert f"{link} failed on `{sha[:8]}`, so it was not deployed. A new push tries again." in body
    assert check_run(h, sha) == ("completed", "failure", None)
    assert h.deployments(61) == []
    assert await h.app(61) is None
    assert h.overlay(61) is None


async def test_a_commit_status_instead_of_a_check_run(gated: Harness) -> None:
    h = gated
    pr = h.fake.create_pull(OWNER, NAME, 62)
    target = "https://ci.example.com/builds/62"
    h.fake.set_status(OWNER, NAME, pr.head_sha, "build", "pending", target_url=target)
    sha = await label(h, 62)
    await assert_waiting(h, 62, sha, f"[build]({target})")
    done = h.fake.set_status(OWNER, NAME, sha, "build", "success", target_url=target)
    h.fake.reset_counts()
    # A status names only a commit: the bot finds the PR that waits on it.
    await deliver(h, h.fake.status_payload(OWNER, NAME, done.id), "status")
    print(f"\nGitHub requests of a deploy gated on a commit status: {h.fake.count()}")
    assert comment(h, 62)[0] == "deploying"
    assert check_run(h, sha) == ("in_progress", None, None)
    assert deployment(h, 62, sha).latest_state == "in_progress"
    assert await h.app(62) is not None
    assert h.fake.count() <= 11


# ---- the gate: the image in the registry ------------------------------------------------------


def probe() -> Callable[[aiohttp.ClientSession, Settings], ImagePort]:
    return Registry


async def test_the_image_gate_waits_for_the_tag_then_deploys_and_gates_a_redeploy(
    github: FakeGitHub, kube: KubeRig, argocd_ns: str, registry: RegistryRig
) -> None:
    repository = f"data-literate/dex-{secrets.token_hex(3)}"  # the registry lives all session
    async with (
        aiohttp.ClientSession() as ci,
        running_harness(
            github,
            kube,
            argocd_ns,
            images=probe(),
            check_run=True,
            image_check=True,
            registry_insecure=True,
            image_name=f"{registry.host}/{repository}",
        ) as h,
    ):
        # ---- tag missing: waiting, and a later look is scheduled
        sha1 = await label(h, 63, follow_ups=False)
        state, body = comment(h, 63)
        assert state == "waiting"
        image1 = f"{registry.host}/{repository}:sha-{sha1[:8]}"
        assert f"Waiting for the image `{image1}`." in body
        assert check_run(h, sha1) == ("queued", None, None)
        assert h.deployments(63) == [] and await h.app(63) is None
        assert h.bot.queue.scheduled == 1  # the bot looks again (with backoff)

        # ---- CI pushes the image and reports a status (any: only the image matters here)
        await push_image(ci, registry, repository, f"sha-{sha1[:8]}")
        done = h.fake.set_status(OWNER, NAME, sha1, "ci/docker", "success")
        h.fake.reset_counts()
        await deliver(h, h.fake.status_payload(OWNER, NAME, done.id), "status")
        gated_deploy = h.fake.count()
        print(f"\nGitHub requests of a deploy gated on the image: {gated_deploy}")
        assert gated_deploy <= 9
        assert comment(h, 63)[0] == "deploying"
        assert check_run(h, sha1) == ("in_progress", None, None)
        assert deployment(h, 63, sha1).latest_state == "in_progress"
        old = await revision(h, 63)
        await healthy(h, 63, old)
        assert comment(h, 63)[0] == "ready"

        # ---- a push whose image is not built yet: the running preview stays where it is
        sha2 = h.fake.push(OWNER, NAME, 63, files={"app.py": "print('v2')\n"})
        await h.deliver("synchronize", 63)
        await h.settle(follow_ups=False)
        state, body = comment(h, 63)
        assert state == "waiting"
        assert f"[`{sha1[:8]}`](https://github.com/{OWNER}/{NAME}/commit/{sha1}) runs; " in body
        assert f"[`{sha2[:8]}`](https://github.com/{OWNER}/{NAME}/commit/{sha2}) waits" in body
        assert f"Waiting for the image `{registry.host}/{repository}:sha-{sha2[:8]}`." in body
        app = await h.app(63)
        assert app is not None
        assert app["metadata"]["annotations"][A_HEAD_SHA] == sha1
        assert app["spec"]["source"]["targetRevision"] == old
        assert f"newTag: sha-{sha1[:8]}" in (h.overlay(63) or "")
        assert deployment(h, 63, sha1).latest_state == "success"  # what runs
        assert check_run(h, sha1) == ("completed", "success", URL.format(63))
        assert check_run(h, sha2) == ("queued", None, None)

        # ---- the image arrives: the redeploy goes ahead
        await push_image(ci, registry, repository, f"sha-{sha2[:8]}")
        done = h.fake.set_status(OWNER, NAME, sha2, "ci/docker", "success")
        await deliver(h, h.fake.status_payload(OWNER, NAME, done.id), "status")
        assert comment(h, 63)[0] == "deploying"
        assert f"newTag: sha-{sha2[:8]}" in (h.overlay(63) or "")
        new = await revision(h, 63)
        assert new != old
        assert check_run(h, sha2) == ("in_progress", None, None)
        assert deployment(h, 63, sha1).latest_state == "inactive"
        assert deployment(h, 63, sha2).latest_state == "in_progress"
        await healthy(h, 63, new)
        assert comment(h, 63)[0] == "ready"
        assert check_run(h, sha2) == ("completed", "success", URL.format(63))
        assert deployment(h, 63, sha2).latest_state == "success"
