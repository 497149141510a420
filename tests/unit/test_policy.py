"""The planner's new rules, table by table: who may deploy, forks, drafts, exclude labels,
commands, TTL, the cap, the image gate, readiness and the comment. Pure: no I/O, no mocks."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from bot.comment import escape
from bot.model import (
    UNKNOWN,
    AddReaction,
    ApplyApplication,
    AppStatus,
    CapSeen,
    ChecksSeen,
    Command,
    CommandSeen,
    LabelSeen,
    ObservedComment,
    PutOverlay,
    Record,
    RecordState,
    ReportCheck,
    RequestSync,
    Requeue,
    SetLabel,
    State,
    UpsertComment,
)
from bot.plan import needs, plan_sync
from tests.unit.test_plan import (
    COMMIT,
    NOW,
    SETTINGS,
    SHA1,
    SHA2,
    deployed_app,
    executed,
    kinds,
    observed,
    pr,
)

READER = LabelSeen("visitor", None, writer=False)


def body(plan: Any) -> str:
    return next(a for a in plan.actions if isinstance(a, UpsertComment)).text.body


def writes(plan: Any) -> list[str]:
    """What a plan changes besides the comment and the record."""
    return [k for k in kinds(plan) if k not in ("UpsertComment", "RecordState", "AddReaction")]


def command(words: tuple[str, ...] = (), writer: bool = True, author: str = "maint") -> CommandSeen:
    return CommandSeen(Command(555, author, words), writer)


# ---- who may deploy --------------------------------------------------------------------------


def test_a_label_from_someone_who_cannot_write_deploys_nothing_and_says_who() -> None:
    plan = plan_sync(observed(label=READER), SETTINGS, NOW)
    assert plan.state is State.NOT_DEPLOYED
    assert writes(plan) == []
    assert "`@visitor`, who cannot write" in body(plan) and "/preview" in body(plan)


def test_an_unknown_label_author_is_refused_with_a_way_out() -> None:
    plan = plan_sync(observed(label=None), SETTINGS, NOW)
    assert writes(plan) == [] and "could not tell who added" in body(plan)


def test_the_approval_is_recorded_so_a_redeploy_needs_no_new_check() -> None:
    plan = plan_sync(observed(), SETTINGS, NOW)
    assert executed(plan).approver == "maintainer"
    app = deployed_app()
    assert needs(pr(head_sha=SHA2), app.record, app, SETTINGS, deploying=False).label is False
    push = plan_sync(observed(pr(head_sha=SHA2), app=app, label=None), SETTINGS, NOW)
    assert "PutOverlay" in kinds(push)


def test_preview_command_from_a_writer_labels_deploys_and_acknowledges() -> None:
    obs = observed(pr(labels=frozenset()), label=None, commands=(command(),))
    plan = plan_sync(obs, SETTINGS, NOW)
    assert plan.actions[0] == AddReaction(555, "eyes")
    assert plan.actions[1] == SetLabel("preview", True)
    assert "PutOverlay" in kinds(plan) and "ApplyApplication" in kinds(plan)
    assert AddReaction(555, "+1") in plan.actions
    assert executed(plan).approver == "maint"


def test_a_command_from_a_reader_is_refused_and_changes_nothing() -> None:
    obs = observed(pr(labels=frozenset()), label=None, commands=(command(writer=False),))
    plan = plan_sync(obs, SETTINGS, NOW)
    assert writes(plan) == []
    assert AddReaction(555, "confused") in plan.actions
    assert AddReaction(555, "eyes") not in plan.actions
    assert "needs write access" in body(plan) or "need write access" in body(plan)


def test_unknown_commands_point_to_help_and_help_opens_the_list() -> None:
    plan = plan_sync(
        observed(app=deployed_app(), commands=(command(("frobnicate",)),)), SETTINGS, NOW
    )
    assert "is not a command" in body(plan) and AddReaction(555, "confused") in plan.actions
    helped = plan_sync(
        observed(app=deployed_app(), commands=(command(("help",), writer=False),)), SETTINGS, NOW
    )
    assert "<details open><summary>Commands</summary>" in body(helped)
    assert writes(helped) == []


def test_destroy_removes_the_label_and_tears_down() -> None:
    plan = plan_sync(observed(app=deployed_app(), commands=(command(("destroy",)),)), SETTINGS, NOW)
    assert SetLabel("preview", False) in plan.actions
    assert "DeleteApplication" in kinds(plan) and "DeleteOverlay" in kinds(plan)


def test_redeploy_reapplies_and_asks_argo_cd_to_sync() -> None:
    plan = plan_sync(
        observed(app=deployed_app(), commands=(command(("redeploy",)),)), SETTINGS, NOW
    )
    assert any(isinstance(a, ApplyApplication) for a in plan.actions)
    assert RequestSync("dex-pr-42") in plan.actions
    assert "PutOverlay" not in kinds(plan)  # the overlay is what it should be


def test_status_rewrites_the_comment_even_when_unchanged() -> None:
    plan = plan_sync(observed(app=deployed_app(), commands=(command(("status",)),)), SETTINGS, NOW)
    assert "UpsertComment" in kinds(plan) and writes(plan) == []


# ---- forks, drafts, exclude labels -----------------------------------------------------------

FORK = {"head_repo": "someone/DEX"}


def test_a_fork_deploys_the_head_a_writer_labeled_and_waits_for_approval_of_a_push() -> None:
    first = plan_sync(observed(pr(**FORK)), SETTINGS, NOW)
    assert "PutOverlay" in kinds(first)
    record = executed(first, overlay_commit=COMMIT, deployment_id=7, comment_id=9)
    assert record.approved_sha == SHA1
    app = replace(deployed_app(), record=record)
    pushed = plan_sync(observed(pr(head_sha=SHA2, **FORK), app=app, label=None), SETTINGS, NOW)
    assert pushed.state is State.WAITING and writes(pushed) == []
    text = body(pushed)
    assert "`9f8e7d6c` deploys once" in text and "/preview approve" in text
    assert f"[`{SHA1[:8]}`]" in text and "runs;" in text  # what runs, and what waits
    approved = plan_sync(
        observed(pr(head_sha=SHA2, **FORK), app=app, commands=(command(("approve",)),)),
        SETTINGS,
        NOW,
    )
    assert "PutOverlay" in kinds(approved) and executed(approved).approved_sha == SHA2


@pytest.mark.parametrize(("policy", "deploys"), [("deny", False), ("allow", True)])
def test_fork_policy_deny_and_allow(policy: str, deploys: bool) -> None:
    plan = plan_sync(observed(pr(**FORK)), replace(SETTINGS, fork_policy=policy), NOW)
    assert ("PutOverlay" in kinds(plan)) is deploys


def test_a_labeled_draft_waits_for_ready_for_review_unless_drafts_are_on() -> None:
    draft = pr(draft=True)
    plan = plan_sync(observed(draft), SETTINGS, NOW)
    assert plan.state is State.WAITING and "marked ready for review" in body(plan)
    assert writes(plan) == []
    assert "PutOverlay" in kinds(plan_sync(observed(draft), replace(SETTINGS, drafts=True), NOW))
    # A PR turned back into a draft keeps its running preview.
    assert plan_sync(observed(draft, app=deployed_app()), SETTINGS, NOW).actions == ()


def test_an_exclude_label_prevents_and_tears_down() -> None:
    excluded = pr(labels=frozenset({"preview", "no-preview"}))
    assert writes(plan_sync(observed(excluded), SETTINGS, NOW)) == []
    plan = plan_sync(observed(excluded, app=deployed_app()), SETTINGS, NOW)
    assert "DeleteApplication" in kinds(plan)


# ---- time-to-live and the cap ----------------------------------------------------------------


def ready_app() -> Any:
    """A preview Argo CD reported ready, with the record that sync left."""
    ok = AppStatus(sync="Synced", health="Healthy", revision=COMMIT)
    app = deployed_app(status=ok)
    return replace(app, record=executed(plan_sync(observed(app=app), SETTINGS, NOW)))


def test_ttl_warns_with_the_exact_time_then_expires_and_removes_the_label() -> None:
    app = ready_app()
    warn_at = NOW + timedelta(days=6, hours=1)
    warned = plan_sync(observed(app=app), SETTINGS, warn_at)
    assert kinds(warned) == ["UpsertComment", "RecordState"]
    assert "⚠️ Expires 2026-12-05 12:00 UTC" in body(warned)
    later = NOW + timedelta(days=7, minutes=1)
    expired = plan_sync(observed(app=app), SETTINGS, later)
    assert SetLabel("preview", False) in expired.actions
    assert "DeleteApplication" in kinds(expired)


def test_an_expiry_teardown_still_says_expiry_once_the_bot_removed_the_label() -> None:
    later = NOW + timedelta(days=7, minutes=1)
    expired = plan_sync(observed(app=ready_app()), SETTINGS, later)
    record = executed(expired)
    assert record.expired_at == int(later.timestamp())
    # Argo CD has pruned the Application; the PR has lost its label (the bot removed it).
    unlabeled = pr(labels=frozenset())
    gone = plan_sync(observed(unlabeled, record=record), SETTINGS, later)
    assert gone.state is State.DESTROYED
    assert "Torn down because it had no activity for 7d. Re-add the `preview` label" in body(gone)
    # Labeled again: deployed afresh, and no longer an expired preview.
    back = plan_sync(observed(record=record), SETTINGS, later + timedelta(hours=1))
    assert "PutOverlay" in kinds(back) and executed(back).expired_at is None
    # A user's own unlabel of a preview that never expired says just that.
    removed = plan_sync(observed(unlabeled, app=ready_app()), SETTINGS, later)
    assert "DeleteApplication" in kinds(removed) and executed(removed).expired_at is UNKNOWN


def test_activity_resets_the_clock_and_keep_exempts() -> None:
    app = ready_app()
    later = NOW + timedelta(days=6, hours=12)
    pushed = plan_sync(observed(pr(head_sha=SHA2), app=app), SETTINGS, later)
    assert executed(pushed).activity_at == int(later.timestamp())
    kept = plan_sync(observed(app=app, commands=(command(("keep",)),)), SETTINGS, later)
    assert executed(kept).keep is True and "📌 Kept" in body(kept)
    labeled_keep = pr(labels=frozenset({"preview", "preview:keep"}))
    far = NOW + timedelta(days=30)
    assert "DeleteApplication" not in kinds(
        plan_sync(observed(labeled_keep, app=app), SETTINGS, far)
    )


def test_removing_the_keep_label_restarts_the_clock_instead_of_tearing_down() -> None:
    labeled_keep = pr(labels=frozenset({"preview", "preview:keep"}))
    app = ready_app()
    kept = plan_sync(observed(labeled_keep, app=app), SETTINGS, NOW + timedelta(hours=1))
    record = executed(kept)
    assert record.kept_by_label is True and "📌 Kept" in body(kept)
    # A month later the keep label goes: a new week from then, with its warning ahead.
    later = NOW + timedelta(days=30)
    ended = plan_sync(observed(app=replace(app, record=record)), SETTINGS, later)
    assert "DeleteApplication" not in kinds(ended)
    assert executed(ended).activity_at == int(later.timestamp())
    assert executed(ended).kept_by_label is None
    assert "⌛ Expires 2027-01-04 12:00 UTC" in body(ended)


def test_the_cap_queues_by_label_time_and_deploys_when_a_slot_frees() -> None:
    capped = replace(SETTINGS, max_previews=10)
    queued = plan_sync(observed(cap=CapSeen(10, 10, 2)), capped, NOW)
    assert queued.state is State.QUEUED and writes(queued) == []
    assert "Queued: position 2, 10 of 10 previews in use" in body(queued)
    free = plan_sync(observed(cap=CapSeen(9, 10, 1)), capped, NOW)
    assert "PutOverlay" in kinds(free)
    second = plan_sync(observed(cap=CapSeen(9, 10, 2)), capped, NOW)
    assert second.state is State.QUEUED  # one slot, and another PR was labeled first


# ---- the gate on the build -------------------------------------------------------------------


def test_required_checks_gate_the_deploy() -> None:
    gated = replace(SETTINGS, required_checks=("build",))
    waiting = plan_sync(observed(checks=ChecksSeen("pending", "build", "https://ci/1")), gated, NOW)
    assert waiting.state is State.WAITING and writes(waiting) == []
    assert f"Waiting for [build](https://ci/1) on `{SHA1[:8]}`" in body(waiting)
    failed = plan_sync(observed(checks=ChecksSeen("failure", "build")), gated, NOW)
    assert failed.state is State.FAILED and "`build` failed" in body(failed)
    ok = plan_sync(observed(checks=ChecksSeen("success", "build")), gated, NOW)
    assert "PutOverlay" in kinds(ok)


def test_a_redeploy_waits_for_its_build_while_the_old_commit_keeps_running() -> None:
    gated = replace(SETTINGS, required_checks=("build",))
    obs = observed(pr(head_sha=SHA2), app=deployed_app(), checks=ChecksSeen("pending", "build"))
    plan = plan_sync(obs, gated, NOW)
    assert plan.state is State.WAITING and writes(plan) == []
    assert f"[`{SHA1[:8]}`]" in body(plan) and f"[`{SHA2[:8]}`]" in body(plan)


def test_the_image_gate_waits_with_backoff_then_fails() -> None:
    gated = replace(SETTINGS, image_check=True)
    first = plan_sync(observed(image=False), gated, NOW)
    assert first.state is State.WAITING
    assert "Waiting for the image `ghcr.io/data-literate/dex:sha-1a2b3c4d`" in body(first)
    assert isinstance(first.actions[-2], Requeue)
    record = executed(first, comment_id=3)
    late = NOW + timedelta(seconds=gated.image_wait_seconds + 1)
    gone = plan_sync(observed(image=False, record=record, comment=record.comment), gated, late)
    assert gone.state is State.FAILED and "did not appear" in body(gone)
    there = plan_sync(observed(image=True, record=record, comment=record.comment), gated, late)
    assert "PutOverlay" in kinds(there)


# ---- readiness and the comment ---------------------------------------------------------------


def test_healthy_on_an_older_revision_is_not_ready() -> None:
    old = AppStatus(sync="Synced", health="Healthy", revision="0" * 40)
    plan = plan_sync(observed(app=deployed_app(status=old)), SETTINGS, NOW)
    assert plan.state is State.DEPLOYING and plan.actions == ()


def test_no_verdict_in_time_fails_with_what_argo_cd_last_said() -> None:
    status = AppStatus(sync="OutOfSync", health="Progressing", revision=COMMIT, message="waiting")
    late = NOW + timedelta(seconds=SETTINGS.ready_timeout_seconds + 1)
    plan = plan_sync(observed(app=deployed_app(status=status)), SETTINGS, late)
    assert plan.state is State.FAILED
    text = body(plan)
    assert "timed out after 600s; Argo CD last said: sync OutOfSync, health Progressing" in text


def test_argo_cd_messages_cannot_mention_link_or_break_the_table() -> None:
    nasty = "@admin see [here](https://evil.example) | </details> <b>x</b>"
    status = AppStatus(sync="Synced", health="Degraded", revision=COMMIT, message=nasty)
    text = body(plan_sync(observed(app=deployed_app(status=status)), SETTINGS, NOW))
    assert "@admin" not in text and "](https://evil.example)" not in text
    assert "| </details>" not in text and "<b>" not in text
    assert escape(nasty) in text


def test_a_succeeded_syncs_message_is_no_reason_for_bad_health() -> None:
    synced = "successfully synced (all tasks run)"
    status = AppStatus(
        sync="Synced",
        health="Degraded",
        revision=COMMIT,
        operation_phase="Succeeded",
        message=synced,
    )
    plan = plan_sync(observed(app=deployed_app(status=status)), SETTINGS, NOW)
    assert plan.state is State.FAILED
    assert "Last error: Argo CD reports the preview degraded\n" in body(plan)
    assert synced not in body(plan)
    # The health's own message (no operation to speak of) is the reason, quoted.
    said = replace(status, operation_phase=None, message="Back-off pulling image")
    text = body(plan_sync(observed(app=deployed_app(status=said)), SETTINGS, NOW))
    assert "Argo CD reports the preview degraded: Back-off pulling image" in text


def test_ready_records_the_time_from_the_push() -> None:
    status = AppStatus(sync="Synced", health="Healthy", revision=COMMIT)
    later = NOW + timedelta(minutes=2, seconds=13)
    plan = plan_sync(observed(app=deployed_app(status=status)), SETTINGS, later)
    assert plan.state is State.READY
    assert executed(plan).ready_seconds == 133 and "Ready in 2m 13s" in body(plan)


def test_the_check_run_follows_the_states_when_enabled() -> None:
    checked = replace(SETTINGS, check_run=True)
    plan = plan_sync(observed(), checked, NOW)
    (check,) = [a for a in plan.actions if isinstance(a, ReportCheck)]
    assert (check.sha, check.state) == (SHA1, State.DEPLOYING)
    record = executed(plan, overlay_commit=COMMIT, check_run_id=11, check_run_sha=SHA1)
    app = replace(deployed_app(), record=replace(record, comment_id=99, deployment_id=7))
    ready = AppStatus(sync="Synced", health="Healthy", revision=COMMIT)
    done = plan_sync(observed(app=replace(app, status=ready)), checked, NOW)
    (final,) = [a for a in done.actions if isinstance(a, ReportCheck)]
    assert (
        final.state is State.READY and final.details_url == "https://dex-pr-42.preview.example.com"
    )


def test_a_teardown_closes_the_heads_check_run_the_record_lost() -> None:
    # Killed mid-teardown: the Application (and its record) is gone; the comment's hidden
    # record knows only the previous head's check run, finished.
    checked = replace(SETTINGS, check_run=True)
    lost = Record(check_run_sha=SHA1, check_run_state=State.READY.value, comment_id=99)
    seen = ObservedComment(99, State.DEPLOYING.value, "fp", lost)
    closed = pr(head_sha=SHA2, state="closed")
    plan = plan_sync(observed(closed, record=lost, comment=seen), checked, NOW)
    (check,) = [a for a in plan.actions if isinstance(a, ReportCheck)]
    assert (check.sha, check.state) == (SHA2, State.DESTROYED)
    known = replace(lost, check_run_sha=SHA2, check_run_state=State.DESTROYED.value)
    again = plan_sync(observed(closed, record=known, comment=seen), checked, NOW)
    assert not [a for a in again.actions if isinstance(a, ReportCheck)]


def test_a_permanent_failure_is_not_retried_until_the_pr_changes() -> None:
    app = deployed_app(failure_sha=SHA1)
    assert all(
        isinstance(a, RecordState) for a in plan_sync(observed(app=app), SETTINGS, NOW).actions
    )
    pushed = plan_sync(observed(pr(head_sha=SHA2), app=app), SETTINGS, NOW)
    assert any(isinstance(a, PutOverlay) for a in pushed.actions)
