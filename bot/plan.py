"""The decision: observed state + settings -> the actions of one sync. Pure, no I/O.

The rule: a preview exists for a PR exactly when the PR is open, carries the trigger label and
comes from the repository itself (not a fork). Everything else follows from comparing that wish
with what was observed: write only what differs, so a replayed or stale event plans nothing.
Order matters and is chosen for safety: the overlay is committed before the Application points
at it; on teardown the Application goes first so Argo CD prunes before its source disappears;
the comment is written last, so it never claims more than was done.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from bot.config import Settings
from bot.model import (
    SHA_RE,
    UNKNOWN,
    Action,
    ApplyApplication,
    CommentText,
    CreateDeployment,
    DeactivateDeployments,
    DeleteApplication,
    DeleteOverlay,
    Observed,
    ObservedApp,
    Plan,
    PullRequest,
    PutOverlay,
    Record,
    RecordState,
    Requeue,
    SetDeploymentStatus,
    State,
    UpsertComment,
    git_blob_sha,
    known_value,
)
from bot.render import (
    FORK_REFUSAL,
    argocd_app_url,
    deployment_description,
    names,
    overlay_message,
    render_application,
    render_comment,
    render_overlay,
)

# Comment states after which nothing is left to tear down.
_FINAL = {State.DESTROYED.value, State.NOT_DEPLOYED.value}


def wants_preview(pr: PullRequest, settings: Settings) -> bool:
    """The rule's first half: open and labeled (the fork check comes after)."""
    return pr.state == "open" and settings.trigger_label in pr.labels


def needs_base_check(
    pr: PullRequest, settings: Settings, record: Record, app: ObservedApp | None
) -> bool:
    """Whether the plan needs to know that the base overlay exists: only before a PR's first
    overlay (a redeploy builds on a base that existed), and only when it may deploy at all."""
    return (
        wants_preview(pr, settings)
        and not pr.is_fork
        and record.overlay_blob is UNKNOWN
        and (app is None or app.owned_by(pr.repo))
    )


def app_state(app: ObservedApp | None, head_sha: str) -> State:
    """What Argo CD's status says about the preview of `head_sha`."""
    if app is None or app.head_sha != head_sha:
        return State.DEPLOYING
    st = app.status
    if st.health == "Degraded" or st.operation_phase in ("Failed", "Error"):
        return State.FAILED
    if st.sync == "Synced" and st.health == "Healthy":
        return State.READY
    return State.DEPLOYING


def _comment(obs: Observed, text: CommentText) -> list[Action]:
    """Write the comment only when what it shows changed."""
    if obs.comment is not None and obs.comment.fingerprint == text.fingerprint:
        return []
    return [UpsertComment(obs.comment.id if obs.comment else None, text)]


def _with_comment(record: Record, obs: Observed, text: CommentText) -> Record:
    """The record once `text` is the comment (its id comes from executing, if it is new)."""
    return replace(
        record,
        comment_id=obs.comment.id if obs.comment else record.comment_id,
        comment_state=text.state.value,
        comment_fingerprint=text.fingerprint,
    )


def _refuse(obs: Observed, settings: Settings, now: datetime, detail: str, reason: str) -> Plan:
    text = render_comment(settings, obs.pr, State.NOT_DEPLOYED, now, detail)
    return Plan(State.NOT_DEPLOYED, tuple(_comment(obs, text)), reason)


def _state_of(value: str | None) -> State:
    """The State a comment's hidden marker names (deploying when unknown)."""
    try:
        return State(value)
    except ValueError:
        return State.DEPLOYING


def plan_sync(obs: Observed, settings: Settings, now: datetime) -> Plan:
    """The actions that make the world match the rule for this PR."""
    pr = obs.pr
    n = names(settings, pr.repo, pr.number)
    app = obs.app
    want = wants_preview(pr, settings)

    # Never touch an Application the bot does not own, or one owned for another repository.
    if app is not None and not app.owned_by(pr.repo):
        if not want:
            return Plan(State.NOT_DEPLOYED, (), f"Application {n.app} is not ours; nothing to do")
        owner = app.repo if app.managed else "something other than preview-bot"
        detail = (
            f"An Argo CD Application named `{n.app}` already exists in namespace "
            f"`{settings.argocd_namespace}` and is managed by {owner}. preview-bot leaves it "
            "alone; change `app_name_template` or remove that Application."
        )
        return _refuse(obs, settings, now, detail, "name taken by an Application not ours")

    if want and pr.is_fork:
        return _refuse(obs, settings, now, FORK_REFUSAL, "fork PR")
    if want and not SHA_RE.match(pr.head_sha):
        detail = f"The head commit `{pr.head_sha[:60]}` is not a 40-hex SHA; nothing deployed."
        return _refuse(obs, settings, now, detail, "bad head sha")
    if want:
        return _plan_deploy(obs, settings, now)
    return _plan_teardown(obs, settings, now)


def plan_failure(obs: Observed, settings: Settings, now: datetime, reason: str) -> Plan:
    """Say once on the PR that a sync failed for good (GitHub refused a request), and why."""
    pr = obs.pr
    n = names(settings, pr.repo, pr.number)
    detail = f"preview-bot could not finish: {reason}. It will try again on the next event."
    text = render_comment(settings, pr, State.FAILED, now, detail)
    actions = _comment(obs, text)
    if actions and obs.app is not None and obs.app.owned_by(pr.repo):
        actions.append(RecordState(n.app, _with_comment(obs.record, obs, text)))
    return Plan(State.FAILED, tuple(actions), "permanent failure")


def _plan_deploy(obs: Observed, settings: Settings, now: datetime) -> Plan:
    pr = obs.pr
    n = names(settings, pr.repo, pr.number)
    app = obs.app
    content = render_overlay(settings, pr)
    blob = git_blob_sha(content)
    actions: list[Action] = []
    overlay_known = obs.record.overlay_blob is not UNKNOWN
    overlay_current = obs.record.overlay_blob == blob

    if not overlay_current and obs.base_ok is False:
        detail = (
            f"The base overlay `{n.base_dir}` (the overlay's `{settings.overlay_base}`) is "
            f"missing on branch `{obs.branch}`, so no overlay was committed. Add it, or set "
            "`overlay_base` to the repository's preview overlay."
        )
        text = render_comment(settings, pr, State.FAILED, now, detail)
        return Plan(State.FAILED, tuple(_comment(obs, text)), "base overlay missing")

    if app is not None and app.terminating:
        # The previous preview is still being pruned; applying now would be refused by the API
        # server. The watch sees it vanish and queues this PR again.
        text = render_comment(settings, pr, State.TEARDOWN_PENDING, now)
        return Plan(State.TEARDOWN_PENDING, tuple(_comment(obs, text)), "old Application pruning")

    if not overlay_current:
        actions.append(
            PutOverlay(
                path=n.overlay_path,
                content=content,
                blob_sha=blob,
                previous_blob=known_value(obs.record.overlay_blob) if overlay_known else None,
                branch=obs.branch,
                message=overlay_message(pr, settings),
            )
        )
    manifest = render_application(settings, pr, obs.branch, obs.installation_id)
    if app is None or app.head_sha != pr.head_sha or not overlay_current:
        actions.append(ApplyApplication(manifest))

    deploying = bool(actions)
    state = State.DEPLOYING if deploying else app_state(app, pr.head_sha)
    log_url = argocd_app_url(settings, n.app)
    record = replace(obs.record, overlay_blob=blob)
    deployment_id = known_value(obs.record.deployment_id)
    if obs.record.deployed_sha != pr.head_sha or deployment_id is None:
        if deployment_id is not None:
            actions.append(
                SetDeploymentStatus(
                    deployment_id, "inactive", None, log_url, "Superseded by a newer commit"
                )
            )
        actions.append(
            CreateDeployment(
                pr.head_sha,
                n.app,
                n.preview_url,
                log_url,
                deployment_description(State.DEPLOYING),
            )
        )
        # The new deployment's id is produced by executing CreateDeployment.
        record = replace(record, deployed_sha=pr.head_sha, deployment_id=UNKNOWN)
    text = render_comment(settings, pr, state, now)
    comment_actions = _comment(obs, text)
    if comment_actions and state in (State.READY, State.FAILED) and deployment_id:
        gh_state = "success" if state is State.READY else "failure"
        actions.append(
            SetDeploymentStatus(
                deployment_id, gh_state, n.preview_url, log_url, deployment_description(state)
            )
        )
    actions.extend(comment_actions)
    if actions:
        actions.append(RecordState(n.app, _with_comment(record, obs, text)))
    return Plan(state, tuple(actions), "deploy" if deploying else f"preview {state.value}")


def _plan_teardown(obs: Observed, settings: Settings, now: datetime) -> Plan:
    """Undo what is left, Application first; the comment follows the Application's fate.

    The comment is written once the Application is gone (Argo CD prunes in seconds and the
    watch then queues a sync), so a normal teardown edits it once, to destroyed. Only if the
    Application is still terminating after `teardown_grace_seconds` (Argo CD down, a stuck
    finalizer) does the comment say teardown pending.
    """
    pr = obs.pr
    n = names(settings, pr.repo, pr.number)
    app = obs.app
    comment_state = obs.comment.state if obs.comment else None
    if app is None and (obs.comment is None or comment_state in _FINAL):
        return Plan(State.DESTROYED if obs.comment else State.NOT_DEPLOYED, (), "nothing deployed")

    # Without any record (a restart after a crash) the comment tells: a teardown writes it only
    # after its GitHub steps, so "teardown pending" means they were done.
    overlay = obs.record.overlay_blob
    unknown = overlay is UNKNOWN and comment_state == State.TEARDOWN_PENDING.value
    actions: list[Action] = []
    if app is not None and not app.terminating:
        actions.append(DeleteApplication(n.app))
    if overlay is not None and not unknown:
        actions.append(
            DeleteOverlay(
                path=n.overlay_path,
                previous_blob=known_value(overlay),
                branch=obs.branch,
                message=overlay_message(pr, settings, deleting=True),
            )
        )
    if obs.record.deployment_id is not None and not unknown:
        actions.append(DeactivateDeployments(n.app, known_value(obs.record.deployment_id)))
    record = replace(obs.record, overlay_blob=None, deployment_id=None)
    if app is None:
        text = render_comment(settings, pr, State.DESTROYED, now)
        actions.extend(_comment(obs, text))
        if actions:
            actions.append(RecordState(n.app, record))
        return Plan(State.DESTROYED, tuple(actions), "teardown finished")
    if not app.terminating:
        actions.append(Requeue(settings.teardown_grace_seconds))
        state = _state_of(comment_state)
    else:
        actions.extend(_comment(obs, render_comment(settings, pr, State.TEARDOWN_PENDING, now)))
        state = State.TEARDOWN_PENDING
    if actions:
        actions.append(RecordState(n.app, record))
    return Plan(state, tuple(actions), "teardown")
