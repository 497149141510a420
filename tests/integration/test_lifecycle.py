"""The preview lifecycle end to end on the rig: label -> deploy, push -> redeploy, close -> gone.

GitHub is the HTTP fake (contract-checked, real git objects), the cluster is a real API server
with Argo CD's CRDs, Argo CD's part is played by the stand-in, and the overlay is built with
real kustomize. Request counts come from the fake's log of what the bot sent.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bot.comment import parse_comment_state
from bot.kube import APPLICATIONS
from bot.model import A_HEAD_SHA, FINALIZER, TEARDOWN_FINALIZER
from tests.rig.harness import NAME, OWNER, Harness

pytestmark = pytest.mark.rig

TAG = "ghcr.io/data-literate/dex:sha-"


def images(objs: list[dict[str, object]]) -> list[str]:
    out = []
    for o in objs:
        if o["kind"] == "Deployment":
            spec = o["spec"]["template"]["spec"]  # type: ignore[index]
            out += [c["image"] for c in spec["containers"]]
    return out


def comment_state(h: Harness, number: int) -> str:
    """The state the PR's one comment shows (its hidden marker, which the bot reads too)."""
    (comment,) = [c for c in h.comments(number) if c.via_app]
    state, _ = parse_comment_state(comment.body)
    return state or "?"


async def label(h: Harness, number: int, **pull: object) -> str:
    pr = h.fake.create_pull(OWNER, NAME, number, **pull)  # type: ignore[arg-type]
    h.fake.add_label(OWNER, NAME, number, "preview")
    resp = await h.deliver("labeled", number)
    assert resp.status_code == 202, resp.text
    await h.settle()
    return pr.head_sha


async def test_full_lifecycle(harness: Harness, tmp_path: Path) -> None:
    h = harness
    fake = h.fake
    commits_before = len(h.commits())

    # ---- label -> deploy
    fake.reset_counts()
    sha1 = await label(h, 42)
    deploy_requests = fake.count()
    objs = h.build(42, tmp_path / "co1")
    assert images(objs) == [TAG + sha1[:8]]
    # Its own Namespace is part of the preview (so Argo CD prunes it), the rest lives in it.
    (namespace,) = [o for o in objs if o["kind"] == "Namespace"]
    assert namespace["metadata"]["name"] == "dex-pr-42"
    assert {o["metadata"]["namespace"] for o in objs if o is not namespace} == {"dex-pr-42"}
    log = h.commits()
    # The repository's very first preview also adds the shared Namespace component (2 files).
    assert len(log) == commits_before + 3
    assert all(c["message"].endswith("[skip ci]") for c in log[:3])
    commits_before += 2
    app = await h.app(42)
    assert app is not None
    # Argo CD's first (it prunes), then the bot's (it says destroyed, then lets it go).
    assert app["metadata"]["finalizers"] == [FINALIZER, TEARDOWN_FINALIZER]
    assert app["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "preview-bot"
    assert app["spec"]["source"]["path"] == "infra/argocd/previews/pr-42"
    # Pinned to the commit that wrote the overlay: Argo CD's synced revision says what runs.
    assert app["spec"]["source"]["targetRevision"] == log[0]["sha"]
    assert app["spec"]["destination"] == {
        "server": "https://kubernetes.default.svc",
        "namespace": "dex-pr-42",
    }
    assert "syncOptions" not in app["spec"]["syncPolicy"]  # no CreateNamespace: it never deletes
    assert comment_state(h, 42) == "deploying"
    body = h.comments(42)[0].body
    assert "https://dex-pr-42.preview.example.com" in body
    assert f"/commit/{sha1})" in body
    (dep1,) = h.deployments(42)
    assert (dep1.sha, dep1.latest_state) == (sha1, "in_progress")
    assert dep1.statuses[-1].environment_url == "https://dex-pr-42.preview.example.com"
    assert dep1.transient_environment and not dep1.production_environment

    tokens = fake.token_requests

    # ---- Argo CD reports healthy -> ready (the watch queues the sync)
    fake.reset_counts()
    await h.standin.set_status(
        "dex-pr-42",
        sync="Synced",
        health="Healthy",
        revision=log[0]["sha"],
        operation_phase="Succeeded",
    )
    await h.settle()
    assert comment_state(h, 42) == "ready"
    assert dep1.latest_state == "success"

    # ---- push -> redeploy
    tokens += fake.token_requests
    fake.reset_counts()
    sha2 = fake.push(OWNER, NAME, 42, files={"app.py": "print('v2')\n"})
    await h.deliver("synchronize", 42)
    await h.settle()
    redeploy_requests = fake.count()
    assert images(h.build(42, tmp_path / "co2")) == [TAG + sha2[:8]]
    assert len(h.commits()) == commits_before + 2
    assert len(h.comments(42)) == 1
    assert comment_state(h, 42) == "deploying"
    app = await h.app(42)
    assert app is not None
    assert app["metadata"]["annotations"][A_HEAD_SHA] == sha2
    dep1_, dep2 = h.deployments(42)
    assert (dep1_.latest_state, dep2.sha, dep2.latest_state) == ("inactive", sha2, "in_progress")

    # ---- close -> teardown (the stand-in prunes and removes the finalizer)
    tokens += fake.token_requests
    fake.reset_counts()
    fake.close(OWNER, NAME, 42)
    await h.deliver("closed", 42)
    await h.settle()
    await h.standin.wait_gone("dex-pr-42")
    await h.settle()
    teardown_requests = fake.count()
    assert await h.app(42) is None
    assert h.overlay(42) is None
    assert not any(
        p.startswith("infra/argocd/previews/pr-42") for p in fake.files(OWNER, NAME, "main")
    )
    assert len(h.commits()) == commits_before + 3
    assert comment_state(h, 42) == "destroyed"
    assert len(h.comments(42)) == 1
    assert all(d.latest_state == "inactive" for d in h.deployments(42))
    tokens += fake.token_requests
    assert tokens == 1  # one installation token for the whole story

    # ---- a second PR's deploy: the tree read is conditional (a 304, free, when main has not
    # moved since; here it has, the teardown committed)
    fake.reset_counts()
    await label(h, 43)
    second = fake.count()
    second_304 = fake.count(status=304)

    print(
        f"\nGitHub requests (token requests aside): first deploy {deploy_requests}, "
        f"next deploy {second} ({second_304} of them 304, free), redeploy "
        f"{redeploy_requests}, teardown {teardown_requests}"
    )
    # The first preview of a repository: pull, tree, the labeler's permission, the overlay,
    # deployment, status, comment (7), plus the shared Namespace component written once (2).
    assert deploy_requests <= 9
    # Any later one: the permission is cached (5 min) and the component exists.
    assert second - second_304 <= 6
    assert redeploy_requests <= 6
    assert teardown_requests <= 5


async def test_replays_and_duplicates_change_nothing(harness: Harness) -> None:
    h = harness
    await label(h, 7)
    commits = len(h.commits())
    h.fake.reset_counts()
    first = await h.deliver("labeled", 7, delivery="same-delivery")
    again = await h.deliver("labeled", 7, delivery="same-delivery")
    assert again.json()["outcome"] == "duplicate"
    await h.deliver("labeled", 7)  # the same event under a new delivery id
    await h.settle()
    assert first.status_code == 202
    assert len(h.commits()) == commits
    assert len(h.comments(7)) == 1
    assert len(h.deployments(7)) == 1
    # A replay costs reads only: the PR, nothing written.
    assert (
        h.fake.count(method="POST") + h.fake.count(method="PUT") + h.fake.count(method="PATCH") == 0
    )


async def test_an_old_synchronize_after_a_newer_one_keeps_the_newest(harness: Harness) -> None:
    h = harness
    await label(h, 8)
    h.fake.push(OWNER, NAME, 8, files={"a.txt": "2"})
    old = h.fake.event_payload("pull_request", "synchronize", OWNER, NAME, 8)
    sha3 = h.fake.push(OWNER, NAME, 8, files={"a.txt": "3"})
    await h.deliver("synchronize", 8)
    await h.settle()
    commits = len(h.commits())
    await h.post(old)  # the older delivery arrives last
    await h.settle()
    assert f"newTag: sha-{sha3[:8]}" in (h.overlay(8) or "")
    assert len(h.commits()) == commits
    app = await h.app(8)
    assert app is not None
    assert app["metadata"]["annotations"][A_HEAD_SHA] == sha3


async def test_push_while_deploying_ends_on_the_newest_sha(harness: Harness) -> None:
    h = harness
    h.fake.create_pull(OWNER, NAME, 9)
    h.fake.add_label(OWNER, NAME, 9, "preview")
    # Hold the overlay write so a push lands while the first sync is mid-flight.
    h.fake.delay_next("PUT", r"/contents/", 0.8)
    await h.deliver("labeled", 9)
    sha_new = h.fake.push(OWNER, NAME, 9, files={"b.txt": "new"})
    await h.deliver("synchronize", 9)
    await h.settle()
    assert f"newTag: sha-{sha_new[:8]}" in (h.overlay(9) or "")
    app = await h.app(9)
    assert app is not None
    assert app["metadata"]["annotations"][A_HEAD_SHA] == sha_new
    assert len(h.comments(9)) == 1


async def test_two_prs_at_once(harness: Harness, tmp_path: Path) -> None:
    h = harness
    for n in (11, 12):
        h.fake.create_pull(OWNER, NAME, n)
        h.fake.add_label(OWNER, NAME, n, "preview")
    await h.deliver("labeled", 11)
    await h.deliver("labeled", 12)
    await h.settle()
    for n in (11, 12):
        assert await h.app(n) is not None
        assert len(h.comments(n)) == 1
        assert images(h.build(n, tmp_path / f"co{n}")) == [
            TAG + h.fake.pull(OWNER, NAME, n).head_sha[:8]
        ]


async def test_another_actor_moves_the_branch_and_hand_edits_the_overlay(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h = harness
    await label(h, 13)
    # Someone else commits to main, and someone hand-edits the managed overlay.
    h.fake.commit_as_other_actor(OWNER, NAME, "main", {"README.md": "docs\n"}, "docs")
    h.fake.commit_as_other_actor(
        OWNER, NAME, "main", {h.overlay_path(13): "# hand edit\nresources: []\n"}, "tweak"
    )
    sha = h.fake.push(OWNER, NAME, 13, files={"c.txt": "x"})
    caplog.set_level(logging.WARNING, logger="bot.sync")
    await h.deliver("synchronize", 13)
    await h.settle()
    overlay = h.overlay(13) or ""
    assert f"newTag: sha-{sha[:8]}" in overlay
    assert "hand edit" not in overlay
    assert h.fake.read_file(OWNER, NAME, "main", "README.md") == "docs\n"
    assert any("changed outside preview-bot" in r.getMessage() for r in caplog.records)
    assert len(h.comments(13)) == 1


async def test_label_on_a_closed_pr_and_unrelated_labels(harness: Harness) -> None:
    h = harness
    h.fake.create_pull(OWNER, NAME, 14)
    h.fake.add_label(OWNER, NAME, 14, "bug")
    resp = await h.deliver("labeled", 14)
    assert resp.json()["outcome"] == "ignored"
    h.fake.close(OWNER, NAME, 14)
    h.fake.add_label(OWNER, NAME, 14, "preview")
    await h.deliver("labeled", 14)
    await h.settle()
    assert await h.app(14) is None
    assert h.overlay(14) is None
    assert h.comments(14) == []


async def test_reopened_with_the_label_deploys_again(harness: Harness) -> None:
    h = harness
    await label(h, 15)
    h.fake.close(OWNER, NAME, 15)
    await h.deliver("closed", 15)
    await h.settle()
    await h.standin.wait_gone("dex-pr-15")
    await h.settle()
    assert comment_state(h, 15) == "destroyed"
    h.fake.reopen(OWNER, NAME, 15)
    await h.deliver("reopened", 15)
    await h.settle()
    assert await h.app(15) is not None
    assert h.overlay(15) is not None
    assert len(h.comments(15)) == 1
    assert comment_state(h, 15) == "deploying"


async def test_fork_pr_waits_for_approval_in_one_comment(harness: Harness) -> None:
    h = harness
    sha = await label(h, 16, fork=True, user="stranger")
    assert await h.app(16) is None
    assert h.overlay(16) is None
    (comment,) = h.comments(16)
    assert comment_state(h, 16) == "waiting"
    assert "comes from a fork" in comment.body and "/preview approve" in comment.body
    await h.deliver("labeled", 16)
    await h.settle()
    assert len(h.comments(16)) == 1
    # A maintainer looked at it: that very commit deploys, in the same one comment.
    await h.command(16, "/preview approve")
    assert f"newTag: sha-{sha[:8]}" in (h.overlay(16) or "")
    assert await h.app(16) is not None
    assert len([c for c in h.comments(16) if c.via_app]) == 1
    assert comment_state(h, 16) == "deploying"


async def test_stuck_finalizer_says_pending_then_finishes(harness: Harness) -> None:
    h = harness
    await label(h, 17)
    h.standin.stick("dex-pr-17")
    h.fake.remove_label(OWNER, NAME, 17, "preview")
    await h.deliver("unlabeled", 17, label="preview")
    await h.settle()
    app = await h.app(17)
    assert app is not None
    assert app["metadata"].get("deletionTimestamp")
    assert comment_state(h, 17) == "teardown pending"
    assert h.overlay(17) is None
    h.standin.unstick("dex-pr-17")
    await h.standin.finish_deletion("dex-pr-17")
    await h.settle()
    assert await h.app(17) is None
    assert comment_state(h, 17) == "destroyed"


async def test_missing_base_overlay_fails_clearly_without_a_commit(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h = harness
    h.fake.commit_as_other_actor(
        OWNER,
        NAME,
        "main",
        {
            "infra/argocd/overlays/preview/kustomization.yaml": None,
            "infra/argocd/overlays/preview/ingress.yaml": None,
        },
        "drop the preview overlay",
    )
    commits = len(h.commits())
    caplog.set_level(logging.INFO)
    await label(h, 18)
    assert len(h.commits()) == commits
    assert await h.app(18) is None
    (comment,) = h.comments(18)
    assert "Preview failed" in comment.body
    assert "infra/argocd/overlays/preview" in comment.body
    assert any("base overlay missing" in r.getMessage() for r in caplog.records)


async def test_github_outage_is_retried_until_it_works(harness: Harness) -> None:
    h = harness
    h.fake.create_pull(OWNER, NAME, 19)
    h.fake.add_label(OWNER, NAME, 19, "preview")
    h.fake.fail_next("PUT", r"/contents/", 502, count=2)
    await h.deliver("labeled", 19)
    await h.settle()
    assert h.overlay(19) is not None
    assert await h.app(19) is not None
    assert len(h.comments(19)) == 1


async def test_an_application_the_bot_does_not_manage_is_left_alone(harness: Harness) -> None:
    h = harness
    foreign = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": "dex-pr-21", "namespace": "argocd", "labels": {"team": "humans"}},
        "spec": {
            "project": "default",
            "source": {
                "repoURL": "https://example.com/x.git",
                "path": "x",
                "targetRevision": "main",
            },
            "destination": {"server": "https://kubernetes.default.svc", "namespace": "elsewhere"},
        },
    }
    await h.argocd.api.create(APPLICATIONS.path("argocd"), foreign)
    before = await h.app(21)
    await label(h, 21)
    after = await h.app(21)
    assert before is not None and after is not None
    assert after["spec"] == before["spec"]
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert h.overlay(21) is None
    (comment,) = h.comments(21)
    assert "belongs to something other than preview-bot" in comment.body
    h.fake.close(OWNER, NAME, 21)
    await h.deliver("closed", 21)
    await h.settle()
    assert await h.app(21) is not None


async def test_a_permanent_github_refusal_is_said_once_on_the_pr(harness: Harness) -> None:
    h = harness
    h.fake.create_pull(OWNER, NAME, 22)
    h.fake.add_label(OWNER, NAME, 22, "preview")
    h.fake.fail_next(
        "POST",
        r"/deployments$",
        422,
        count=1,
        body={
            "message": "Validation Failed",
            "errors": [],
            "documentation_url": "https://docs.github.com/rest",
        },
    )
    await h.deliver("labeled", 22)
    await h.settle()
    (comment,) = h.comments(22)
    assert "Preview failed" in comment.body
    assert "422" in comment.body
    first_update = comment.updated_at
    assert "after the next push or `/preview redeploy`" in comment.body
    h.fake.reset_counts()
    await h.deliver("labeled", 22)  # a repeat on the same head: no retry, nothing rewritten
    await h.settle()
    (comment,) = h.comments(22)
    assert comment.updated_at == first_update
    assert h.fake.count(method="POST") + h.fake.count(method="PATCH") == 0
    await h.command(22, "/preview redeploy")  # someone asks again; GitHub accepts now
    assert len(h.deployments(22)) == 1
    assert comment_state(h, 22) == "deploying"


async def test_resync_heals_a_lost_close_webhook(harness: Harness) -> None:
    h = harness
    await label(h, 23)
    await label(h, 24)
    h.fake.close(OWNER, NAME, 23)  # GitHub's delivery of `closed` never arrives
    h.fake.reset_counts()
    report = await h.bot.resync_once()
    # Only the PR whose world differs from the rule is queued: the closed one.
    assert (report.repositories, report.queued) == (1, 1)
    await h.settle()
    await h.standin.wait_gone("dex-pr-23")
    await h.settle()
    assert await h.app(23) is None
    assert h.overlay(23) is None
    assert comment_state(h, 23) == "destroyed"
    assert await h.app(24) is not None  # the open PR is left as it was
    assert comment_state(h, 24) == "deploying"


async def test_a_head_sha_that_is_not_40_hex_is_refused_without_a_commit(
    harness: Harness,
) -> None:
    h = harness
    pr = h.fake.create_pull(OWNER, NAME, 25)
    pr.head_sha = "1a2b3c4d"  # what GitHub never sends: a short SHA
    h.fake.add_label(OWNER, NAME, 25, "preview")
    commits = len(h.commits())
    await h.deliver("labeled", 25)
    await h.settle()
    assert len(h.commits()) == commits
    assert await h.app(25) is None
    (comment,) = h.comments(25)
    assert "not a 40-hex SHA" in comment.body
