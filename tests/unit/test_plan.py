"""The pure planner, table-tested: plain observations in, actions out, no I/O and no mocks."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.comment import parse_comment_state, render_comment
from bot.config import Settings
from bot.model import (
    ApplyApplication,
    AppStatus,
    ChecksSeen,
    CreateDeployment,
    DeactivateDeployments,
    DeleteApplication,
    DeleteOverlay,
    LabelSeen,
    Observed,
    ObservedApp,
    ObservedComment,
    PullRequest,
    PutOverlay,
    Record,
    RecordState,
    ReleaseApplication,
    Requeue,
    SetDeploymentStatus,
    State,
    UpsertComment,
    git_blob_sha,
    label_safe,
)
from bot.plan import plan_failure, plan_sync
from bot.render import render_overlay

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SHA1 = "1a2b3c4d" + "0" * 32
SHA2 = "9f8e7d6c" + "1" * 32
SETTINGS = Settings(github_app_id=1, github_private_key="k", github_webhook_secret="s")


def pr(**changes: Any) -> PullRequest:
    base = PullRequest(
        repo="data-literate/DEX",
        number=42,
        state="open",
        merged=False,
        labels=frozenset({"preview"}),
        head_sha=SHA1,
        head_repo="data-literate/DEX",
        default_branch="main",
        html_url="https://github.com/data-literate/DEX/pull/42",
        repo_html_url="https://github.com/data-literate/DEX",
    )
    return replace(base, **changes)


COMMIT = "c0ffee00" + "0" * 32  # the commit that wrote the overlay
MAINTAINER = LabelSeen("maintainer", None, writer=True)


def executed(plan: Any, **produced: Any) -> Record:
    """The record a plan leaves once executed, with what execution produced (ids, commits)."""
    record = next(a for a in plan.actions if isinstance(a, RecordState)).record
    return record.updated_by(Record(**produced))


def deployed_record(head: str = SHA1, **changes: Any) -> Record:
    """The record the bot leaves after deploying `head`: the planner's own, executed."""
    first = plan_sync(observed(pr(head_sha=head)), SETTINGS, NOW)
    record = executed(
        first,
        comment_id=99,
        deployment_id=7,
        overlay_commit=COMMIT,
        overlay_blob=git_blob_sha(render_overlay(SETTINGS, pr(head_sha=head))),
    )
    return replace(record, **changes)


def deployed_app(head: str = SHA1, status: AppStatus | None = None, **changes: Any) -> ObservedApp:
    """The Application as the bot leaves it after deploying `head`."""
    return ObservedApp(
        "dex-pr-42",
        managed=True,
        terminating=False,
        repo="data-literate/DEX",
        number=42,
        installation_id=5,
        head_sha=head,
        record=deployed_record(head, **changes),
        status=status or AppStatus(),
    )


def observed(p: PullRequest | None = None, app: ObservedApp | None = None, **kw: Any) -> Observed:
    record = kw.pop("record", app.record if app else Record())
    values: dict[str, Any] = {
        "pr": p or pr(),
        "installation_id": 5,
        "app": app,
        "record": record,
        "comment": record.comment,
        "base_ok": True,
        "namespace_ok": True,
        "branch": "main",
        "label": MAINTAINER,
    }
    values.update(kw)
    return Observed(**values)


def kinds(plan: Any) -> list[str]:
    return [type(a).__name__ for a in plan.actions]


def test_first_deploy_commits_applies_deploys_and_comments_in_that_order() -> None:
    plan = plan_sync(observed(), SETTINGS, NOW)
    assert plan.state is State.DEPLOYING
    assert kinds(plan) == [
        "PutOverlay",
        "ApplyApplication",
        "CreateDeployment",
        "UpsertComment",
        "RecordState",
    ]
    put = plan.actions[0]
    assert isinstance(put, PutOverlay)
    assert put.path == "infra/argocd/previews/pr-42/kustomization.yaml"
    assert put.message.endswith("[skip ci]")
    assert "newTag: sha-1a2b3c4d" in put.content
    assert put.blob_sha == git_blob_sha(put.content)
    dep = plan.actions[2]
    assert isinstance(dep, CreateDeployment)
    assert (dep.environment, dep.environment_url) == (
        "dex-pr-42",
        "https://dex-pr-42.preview.example.com",
    )
    comment = plan.actions[3]
    assert isinstance(comment, UpsertComment) and comment.comment_id is None


def test_replayed_event_after_deploy_plans_nothing() -> None:
    plan = plan_sync(observed(app=deployed_app()), SETTINGS, NOW)
    assert plan.actions == ()


def test_push_redeploys_supersedes_the_old_deployment_and_edits_the_comment() -> None:
    plan = plan_sync(observed(pr(head_sha=SHA2), app=deployed_app(SHA1)), SETTINGS, NOW)
    assert kinds(plan) == [
        "PutOverlay",
        "ApplyApplication",
        "SetDeploymentStatus",
        "CreateDeployment",
        "UpsertComment",
        "RecordState",
    ]
    put, _, old, new, comment, _ = plan.actions
    assert isinstance(put, PutOverlay) and put.previous_blob is not None
    assert "sha-9f8e7d6c" in put.content
    assert isinstance(old, SetDeploymentStatus)
    assert (old.deployment_id, old.state) == (7, "inactive")
    assert isinstance(new, CreateDeployment) and new.sha == SHA2
    assert isinstance(comment, UpsertComment) and comment.comment_id == 99


@pytest.mark.parametrize(
    ("status", "state", "gh_state"),
    [
        (AppStatus(sync="Synced", health="Healthy", revision=COMMIT), State.READY, "success"),
        (AppStatus(sync="Synced", health="Degraded", revision=COMMIT), State.FAILED, "failure"),
        (
            AppStatus(
                sync="OutOfSync", health="Missing", operation_phase="Failed", revision=COMMIT
            ),
            State.FAILED,
            "failure",
        ),
    ],
)
def test_argo_health_drives_comment_and_deployment_status(
    status: AppStatus, state: State, gh_state: str
) -> None:
    plan = plan_sync(observed(app=deployed_app(status=status)), SETTINGS, NOW)
    assert plan.state is state
    assert kinds(plan) == ["SetDeploymentStatus", "UpsertComment", "RecordState"]
    dep = plan.actions[0]
    assert isinstance(dep, SetDeploymentStatus) and (dep.deployment_id, dep.state) == (7, gh_state)


def test_progressing_changes_nothing() -> None:
    app = deployed_app(status=AppStatus(sync="Synced", health="Progressing"))
    assert plan_sync(observed(app=app), SETTINGS, NOW).actions == ()


@pytest.mark.parametrize(
    "change",
    [{"state": "closed"}, {"state": "closed", "merged": True}, {"labels": frozenset({"bug"})}],
)
def test_close_or_unlabel_deletes_app_first_and_waits_for_it_to_go(change: dict[str, Any]) -> None:
    plan = plan_sync(observed(pr(**change), app=deployed_app()), SETTINGS, NOW)
    assert kinds(plan) == [
        "DeleteApplication",
        "DeleteOverlay",
        "DeactivateDeployments",
        "Requeue",
        "RecordState",
    ]
    delete, overlay, deactivate, requeue, record = plan.actions
    assert isinstance(delete, DeleteApplication) and delete.name == "dex-pr-42"
    assert isinstance(overlay, DeleteOverlay) and overlay.previous_blob is not None
    assert isinstance(deactivate, DeactivateDeployments) and deactivate.known_id == 7
    assert isinstance(requeue, Requeue)
    assert requeue.seconds == SETTINGS.teardown_grace_seconds
    assert isinstance(record, RecordState)
    assert (record.record.overlay_blob, record.record.deployment_id) == (None, None)


def done_record(**changes: Any) -> Record:
    """The record after a teardown sync did its GitHub steps."""
    return deployed_record(overlay_blob=None, deployment_id=None, **changes)


def test_app_gone_after_teardown_steps_only_says_destroyed() -> None:
    record = done_record()
    obs = observed(pr(state="closed"), record=record)
    assert obs.comment is not None and obs.comment == record.comment and obs.comment.id == 99
    plan = plan_sync(obs, SETTINGS, NOW)
    assert kinds(plan) == ["UpsertComment", "RecordState"]
    assert plan.state is State.DESTROYED
    assert plan.actions[0].text.state is State.DESTROYED  # type: ignore[union-attr]


def test_restart_after_pending_comment_only_says_destroyed() -> None:
    pending = render_comment(SETTINGS, pr(state="closed"), State.TEARDOWN_PENDING, NOW)
    obs = observed(
        pr(state="closed"), comment=ObservedComment(99, pending.state.value, pending.fingerprint)
    )
    plan = plan_sync(obs, SETTINGS, NOW)
    assert kinds(plan) == ["UpsertComment", "RecordState"]


def test_restart_after_a_crash_mid_teardown_redoes_the_github_steps() -> None:
    obs = observed(pr(state="closed"), comment=ObservedComment(99, "ready", "x"))
    plan = plan_sync(obs, SETTINGS, NOW)
    assert kinds(plan) == ["DeleteOverlay", "DeactivateDeployments", "UpsertComment", "RecordState"]
    overlay, deactivate = plan.actions[:2]
    assert isinstance(overlay, DeleteOverlay) and overlay.previous_blob is None
    assert isinstance(deactivate, DeactivateDeployments) and deactivate.known_id is None


def test_terminating_past_the_grace_says_pending_once() -> None:
    app = replace(deployed_app(), terminating=True, record=done_record())
    plan = plan_sync(observed(pr(state="closed"), app=app), SETTINGS, NOW)
    assert kinds(plan) == ["UpsertComment", "RecordState"]
    assert plan.state is State.TEARDOWN_PENDING
    app2 = replace(app, record=executed(plan))
    assert plan_sync(observed(pr(state="closed"), app=app2), SETTINGS, NOW).actions == ()


def pruned_app(**changes: Any) -> ObservedApp:
    """A deleted Application Argo CD has pruned: terminating, the bot's finalizer left."""
    app = replace(deployed_app(), terminating=True, held=True, pruned=True, **changes)
    assert app.releasable
    return app


def test_pruned_and_held_counts_as_gone_the_comment_says_destroyed_then_release() -> None:
    app = pruned_app(record=done_record())
    plan = plan_sync(observed(pr(state="closed"), app=app), SETTINGS, NOW)
    assert kinds(plan) == ["UpsertComment", "RecordState", "ReleaseApplication"]
    assert plan.state is State.DESTROYED
    assert plan.actions[0].text.state is State.DESTROYED  # type: ignore[union-attr]
    assert plan.actions[-1] == ReleaseApplication("dex-pr-42")
    # Killed between the comment and the release: the next sync only releases.
    done = replace(app, record=executed(plan))
    again = plan_sync(observed(pr(state="closed"), app=done), SETTINGS, NOW)
    assert kinds(again) == ["ReleaseApplication"]


def test_pruned_and_held_after_a_teardown_cut_short_finishes_the_github_steps_first() -> None:
    # Killed in the first teardown sync, after the delete: the record still names the overlay
    # and the deployment, and Argo CD has pruned meanwhile.
    app = pruned_app()
    plan = plan_sync(observed(pr(state="closed"), app=app), SETTINGS, NOW)
    assert kinds(plan) == [
        "DeleteOverlay",
        "DeactivateDeployments",
        "UpsertComment",
        "RecordState",
        "ReleaseApplication",
    ]
    assert plan.state is State.DESTROYED


def test_terminating_and_held_but_not_pruned_waits_for_argocd() -> None:
    app = replace(pruned_app(record=done_record()), pruned=False)
    plan = plan_sync(observed(pr(state="closed"), app=app), SETTINGS, NOW)
    assert plan.state is State.TEARDOWN_PENDING
    assert not any(isinstance(a, ReleaseApplication) for a in plan.actions)


def test_without_the_bots_finalizer_the_old_path_stands() -> None:
    # Applied before the bot had a finalizer: pruned, it vanishes by itself, and the watch's
    # DELETED brings the sync that says destroyed (app None, tested above).
    app = replace(pruned_app(record=done_record()), held=False)
    plan = plan_sync(observed(pr(state="closed"), app=app), SETTINGS, NOW)
    assert kinds(plan) == ["UpsertComment", "RecordState"]
    assert plan.state is State.TEARDOWN_PENDING


def test_a_failure_report_never_releases() -> None:
    app = pruned_app(record=done_record())
    plan = plan_failure(observed(pr(state="closed"), app=app), SETTINGS, NOW, "boom")
    assert not any(isinstance(a, ReleaseApplication) for a in plan.actions)


def test_an_application_not_ours_is_never_released() -> None:
    app = replace(pruned_app(), repo="other/repo")
    for p in (pr(), pr(state="closed")):
        plan = plan_sync(observed(p, app=app), SETTINGS, NOW)
        assert not any(isinstance(a, ReleaseApplication) for a in plan.actions)


def test_never_deployed_pr_closing_plans_nothing() -> None:
    plan = plan_sync(observed(pr(state="closed", labels=frozenset())), SETTINGS, NOW)
    assert plan.actions == ()


def test_label_on_a_closed_pr_deploys_nothing() -> None:
    plan = plan_sync(observed(pr(state="closed")), SETTINGS, NOW)
    assert plan.actions == ()


def test_fork_pr_gets_one_refusal_comment_and_nothing_else() -> None:
    deny = replace(SETTINGS, fork_policy="deny")
    obs = observed(pr(head_repo="someone/DEX"))
    plan = plan_sync(obs, deny, NOW)
    assert plan.state is State.NOT_DEPLOYED
    assert kinds(plan) == ["UpsertComment", "RecordState"]  # the record remembers the comment
    text = plan.actions[0].text  # type: ignore[union-attr]
    assert "forks" in text.body
    record = executed(plan, comment_id=5)
    again = replace(obs, record=record, comment=record.comment)
    assert plan_sync(again, deny, NOW).actions == ()


def test_bad_head_sha_is_refused_with_a_clear_comment() -> None:
    plan = plan_sync(observed(pr(head_sha="not-a-sha")), SETTINGS, NOW)
    assert plan.state is State.NOT_DEPLOYED
    assert kinds(plan) == ["UpsertComment", "RecordState"]
    assert "not a 40-hex SHA" in plan.actions[0].text.body  # type: ignore[union-attr]


def test_missing_base_fails_in_the_comment_without_a_commit() -> None:
    plan = plan_sync(observed(base_ok=False), SETTINGS, NOW)
    assert plan.state is State.FAILED
    assert kinds(plan) == ["UpsertComment", "RecordState"]
    body = plan.actions[0].text.body  # type: ignore[union-attr]
    assert "infra/argocd/overlays/preview" in body and "missing" in body


@pytest.mark.parametrize(
    "app",
    [
        ObservedApp("dex-pr-42", managed=False, terminating=False),
        ObservedApp("dex-pr-42", managed=True, terminating=False, repo="other/repo"),
        # the managed-by label alone, without the repository annotation: copied, not ours
        ObservedApp("dex-pr-42", managed=True, terminating=False),
    ],
)
def test_an_application_not_ours_is_never_touched(app: ObservedApp) -> None:
    plan = plan_sync(observed(app=app), SETTINGS, NOW)
    assert all(isinstance(a, UpsertComment) for a in plan.actions)
    assert plan.state is State.NOT_DEPLOYED
    closed = plan_sync(observed(pr(state="closed"), app=app), SETTINGS, NOW)
    assert closed.actions == ()


def test_ownership_needs_the_label_and_the_repository_whatever_its_case() -> None:
    app = ObservedApp("dex-pr-42", managed=True, terminating=False, repo="Data-Literate/DEX")
    assert app.owned_by("data-literate/dex")
    assert not replace(app, managed=False).owned_by("data-literate/dex")
    assert not replace(app, repo=None).owned_by("data-literate/dex")


def test_relabel_while_old_app_terminates_waits() -> None:
    app = replace(deployed_app(), terminating=True)
    plan = plan_sync(observed(app=app), SETTINGS, NOW)
    assert plan.state is State.TEARDOWN_PENDING
    assert not any(isinstance(a, ApplyApplication | PutOverlay) for a in plan.actions)


def test_relabel_while_old_app_is_pruned_releases_it_and_waits() -> None:
    # Without the release it would wait for ever: only the bot's finalizer holds it.
    plan = plan_sync(observed(app=pruned_app()), SETTINGS, NOW)
    assert plan.state is State.TEARDOWN_PENDING
    assert not any(isinstance(a, ApplyApplication | PutOverlay) for a in plan.actions)
    assert plan.actions[-1] == ReleaseApplication("dex-pr-42")


def test_a_held_pr_whose_old_app_is_pruned_releases_it() -> None:
    # Labeled again, but the head waits for a check: the hold path must release it too.
    checks = replace(SETTINGS, required_checks=("ci",))
    pending = ChecksSeen("pending", "ci")
    plan = plan_sync(observed(pr(head_sha=SHA2), app=pruned_app(), checks=pending), checks, NOW)
    assert plan.state is State.WAITING
    assert plan.actions[-1] == ReleaseApplication("dex-pr-42")


def test_lost_annotations_write_with_unknown_sha_and_find_the_comment() -> None:
    obs = observed(comment=ObservedComment(99, "ready", "stale"))
    plan = plan_sync(obs, SETTINGS, NOW)
    put = plan.actions[0]
    assert isinstance(put, PutOverlay) and put.previous_blob is None
    upsert = next(a for a in plan.actions if isinstance(a, UpsertComment))
    assert upsert.comment_id == 99
    record = plan.actions[-1]
    assert isinstance(record, RecordState) and record.record.comment_id == 99


def test_preview_host_patches_the_ingress_and_templates_apply() -> None:
    settings = replace(
        SETTINGS,
        preview_host_template="pr-{number}.{repo}.example.org",
        app_name_template="{repo}-pr-{number}",
        image_tag_template="{sha}",
    )
    plan = plan_sync(observed(), settings, NOW)
    put = plan.actions[0]
    assert isinstance(put, PutOverlay)
    assert "value: pr-42.DEX.example.org" in put.content
    assert f"newTag: {SHA1}" in put.content
    apply = plan.actions[1]
    assert isinstance(apply, ApplyApplication)
    # Kubernetes names are lower case: {repo} is `dex` in them (GitHub ignores case).
    assert apply.manifest["metadata"]["name"] == "dex-pr-42"


def test_comment_state_round_trips_through_its_hidden_marker() -> None:
    text = render_comment(SETTINGS, pr(), State.READY, NOW)
    assert parse_comment_state(text.body) == ("ready", text.fingerprint)
    assert parse_comment_state("a human's comment") == (None, None)
    later = render_comment(SETTINGS, pr(), State.READY, NOW.replace(hour=13))
    assert later.fingerprint == text.fingerprint  # time alone never causes an edit


def test_label_safe_values() -> None:
    assert label_safe("data-literate/DEX") == "data-literate_DEX"
    long = label_safe("o/" + "x" * 100)
    assert len(long) <= 63 and long[0].isalnum() and long[-1].isalnum()
    assert label_safe("o/" + "x" * 100) != label_safe("o/" + "x" * 99 + "y")


def test_comment_links_the_argo_cd_application_when_its_url_is_set() -> None:
    settings = replace(SETTINGS, argocd_url="https://argocd.example.com")
    body = render_comment(settings, pr(), State.READY, NOW).body
    assert "[dex-pr-42](https://argocd.example.com/applications/argocd/dex-pr-42)" in body
    assert "argocd.example.com" not in render_comment(SETTINGS, pr(), State.READY, NOW).body
