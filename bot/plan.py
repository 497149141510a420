"""The decision: observed state + settings -> the actions of one sync. Pure, no I/O.

The rule: a preview exists for a PR exactly when the PR is open, wants one (the trigger label, or
a writer's `/preview`, and no exclude label), has not outlived its TTL, and its head passes the
gates of bot.policy (fork policy, the label's author, drafts, the cap, required checks, the
image). A head that may not deploy yet leaves the running preview (if any) as it is. Everything
follows from comparing that wish with what was observed: write only what differs, so a replayed
or stale event plans nothing. Order matters and is chosen for safety: the overlay is committed
before the Application points at it; on teardown the Application goes first so Argo CD prunes
before its source disappears; the comment is written last, so it never claims more than was
done. Every plan ends with the record of what the bot now knows, and then, when Argo CD has
pruned an Application being deleted, with the bot's release of it (its finalizer goes last, so
a teardown cut short is always found again: the Application is still there).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from bot.commands import Outcome, Verb, judge_all, last_writer, verbs_of
from bot.comment import Extras, escape, history_json, history_with, render_comment
from bot.config import Settings, format_duration
from bot.model import (
    UNKNOWN,
    Action,
    AddReaction,
    ApplyApplication,
    CreateDeployment,
    DeactivateDeployments,
    DeleteApplication,
    DeleteOverlay,
    Observed,
    ObservedApp,
    Plan,
    PullRequest,
    PutOverlay,
    PutSharedFile,
    Record,
    RecordState,
    ReleaseApplication,
    ReportCheck,
    RequestSync,
    Requeue,
    SetDeploymentStatus,
    SetLabel,
    State,
    UpsertComment,
    git_blob_sha,
    known_value,
)
from bot.policy import (
    Gate,
    approved_sha_of,
    approver_of,
    effective_labels,
    gate,
    keep_ended,
    teardown_reason,
    ttl_of,
)
from bot.readiness import health_of
from bot.render import (
    argocd_app_url,
    deployment_description,
    names,
    overlay_message,
    render_application,
    render_namespace_component,
    render_overlay,
)

# Comment states after which nothing is left to tear down.
_FINAL = {State.DESTROYED.value, State.NOT_DEPLOYED.value}
# The GitHub deployment status that follows each state of a running preview.
_DEPLOYMENT_STATES = {
    State.DEPLOYING: "in_progress",
    State.READY: "success",
    State.FAILED: "failure",
}
_ACTIVE = frozenset({Verb.DEPLOY, Verb.REDEPLOY, Verb.APPROVE, Verb.KEEP})  # count as activity


def wants_preview(pr: PullRequest, settings: Settings) -> bool:
    """Open, labeled and not excluded (the gates come after)."""
    return teardown_reason(pr, pr.labels, settings) is None


@dataclass(frozen=True)
class Needs:
    """Which facts a sync must read beyond the PR, its Application and record: each costs a
    request, so only what the plan's gates will look at."""

    layout: bool = False  # the base overlay and the shared Namespace component exist?
    label: bool = False  # who added the trigger label, and may they write?
    checks: bool = False  # the required checks on the head
    image: bool = False  # the image of the head in the registry
    cap: bool = False  # previews in use and this PR's place in the queue


def needs(
    pr: PullRequest, record: Record, app: ObservedApp | None, settings: Settings, deploying: bool
) -> Needs:
    """The facts to read for this PR; `deploying` when a writer's `/preview` came with it."""
    if not wants_preview(pr, settings) and not deploying:
        return Needs()
    if app is not None and not app.owned_by(pr.repo):
        return Needs()
    new_head = record.deployed_sha != pr.head_sha
    return Needs(
        layout=record.overlay_blob is UNKNOWN,
        label=known_value(record.approver) is None and not deploying,
        checks=bool(settings.required_checks) and new_head,
        image=settings.image_check and new_head,
        cap=bool(settings.max_previews) and app is None,
    )


@dataclass
class _Builder:
    """One plan being put together: its actions and the record it leaves."""

    obs: Observed
    settings: Settings
    now: datetime
    outcomes: tuple[Outcome, ...]
    record: Record
    actions: list[Action] = field(default_factory=list)
    follow_up: float | None = None
    # Release an Application Argo CD has pruned at the end (not after a failure: the teardown
    # on GitHub may be unfinished, and the Application holds its record).
    release: bool = True

    @property
    def pr(self) -> PullRequest:
        return self.obs.pr

    @property
    def verbs(self) -> frozenset[Verb]:
        return verbs_of(self.outcomes)

    def comment(self, state: State, detail: str = "", extras: Extras | None = None) -> None:
        """Show `state` in the comment when that changes what it shows (or a command asks)."""
        obs, x = self.obs, extras or Extras()
        history = history_with(self.record, self.now, state, self.pr.head_sha)
        self.record = replace(self.record, history=history_json(history))
        notes = tuple(o.refusal for o in self.outcomes if o.refusal)
        help_open = Verb.HELP in self.verbs
        x = replace(
            x, detail=detail, history=history, notes=notes, help_open=help_open, record=self.record
        )
        text = render_comment(self.settings, self.pr, state, self.now, x)
        force = bool(notes) or bool(self.verbs & {Verb.STATUS, Verb.HELP})
        if force or obs.comment is None or obs.comment.fingerprint != text.fingerprint:
            self.actions.append(UpsertComment(obs.comment.id if obs.comment else None, text))
        self.record = replace(
            self.record,
            comment_id=obs.comment.id if obs.comment else self.record.comment_id,
            comment_state=state.value,
            comment_fingerprint=text.fingerprint,
        )

    def check(self, state: State, summary: str, details_url: str | None = None) -> None:
        """Keep the head's `preview` check run in step with `state` (when enabled)."""
        if not self.settings.check_run:
            return
        rec = self.record
        if rec.check_run_sha == self.pr.head_sha and rec.check_run_state == state.value:
            return
        title = f"Preview {state.value}"
        self.actions.append(ReportCheck(self.pr.head_sha, state, title, summary, details_url))

    def finish(self, state: State, reason: str) -> Plan:
        """The plan: command acknowledgements around the work, the record last."""
        obs = self.obs
        said = any(isinstance(a, UpsertComment) for a in self.actions)
        if not said and any(o.refusal for o in self.outcomes):
            # A refused command is answered in the comment, whatever else this sync does.
            shown = _state_of(obs.comment.state) if obs.comment else State.NOT_DEPLOYED
            self.comment(shown)
        head: list[Action] = [
            AddReaction(o.command.comment_id, "eyes") for o in self.outcomes if o.accepted
        ]
        head += self._label_changes()
        tail: list[Action] = []
        if Verb.REDEPLOY in self.verbs and obs.app is not None and not obs.app.terminating:
            tail.append(RequestSync(obs.app.name))
        tail += [
            AddReaction(o.command.comment_id, "+1" if o.accepted else "confused")
            for o in self.outcomes
        ]
        actions = head + self.actions + tail
        if self.follow_up is not None:
            actions.append(Requeue(self.follow_up))
        if actions or self.record != obs.record:
            name = names(self.settings, self.pr.repo, self.pr.number).app
            actions.append(RecordState(name, self.record))
        app = obs.app
        if self.release and app is not None and app.releasable and app.owned_by(self.pr.repo):
            # Whatever this plan is (a teardown finishing, a PR labeled again while its old
            # preview went), nothing else lets the pruned Application go: last, after the
            # comment and the record.
            actions.append(ReleaseApplication(app.name))
        return Plan(state, tuple(actions), reason)

    def _label_changes(self) -> list[Action]:
        trigger = self.settings.trigger_label
        if Verb.DESTROY in self.verbs and trigger in self.pr.labels:
            return [SetLabel(trigger, False)]
        if Verb.DEPLOY in self.verbs and trigger not in self.pr.labels:
            return [SetLabel(trigger, True)]
        return []


def plan_sync(obs: Observed, settings: Settings, now: datetime) -> Plan:
    """The actions that make the world match the rule for this PR."""
    b = _Builder(obs, settings, now, judge_all(obs.commands), obs.record)
    pr = obs.pr
    labels = effective_labels(pr, settings, b.verbs)
    reason = teardown_reason(pr, labels, settings)
    if reason is not None and _unlabeled_by_expiry(obs, labels, settings):
        reason = _expiry_reason(settings)
    early = _plan_refusals(b, wanted=reason is None)
    if early is not None:
        return early
    if reason is not None:
        return _plan_teardown(b, reason)
    if obs.record.failure_sha == pr.head_sha and Verb.REDEPLOY not in b.verbs:
        return b.finish(State.FAILED, "failed for good on this head; waiting for a change")
    _note_activity(b)
    answer = gate(obs, settings, now, b.verbs)
    if answer.go:
        return _plan_deploy(b)
    return _plan_hold(b, answer)


def _plan_refusals(b: _Builder, wanted: bool) -> Plan | None:
    """Plans that come before the rule: an Application not ours, names Kubernetes would
    refuse, an expired preview. None when none applies."""
    obs, settings, now = b.obs, b.settings, b.now
    app = obs.app
    n = names(settings, obs.pr.repo, obs.pr.number)
    # Never touch an Application the bot does not own, or one owned for another repository.
    if app is not None and not app.owned_by(obs.pr.repo):
        return _plan_collision(b, wanted)
    if wanted and n.problems():
        detail = "No preview: Kubernetes would refuse its names: " + "; ".join(n.problems())
        detail += ". Change `app_name_template` / `namespace_template`."
        b.comment(State.NOT_DEPLOYED, detail)
        return b.finish(State.NOT_DEPLOYED, "invalid names")
    if wanted and app is not None and ttl_of(b.record, obs.pr, settings, now).expired:
        return _plan_teardown(b, _expiry_reason(settings), expired=True)
    return None


def _expiry_reason(settings: Settings) -> str:
    return (
        f"it had no activity for {format_duration(settings.ttl_seconds)}. Re-add the "
        f"`{settings.trigger_label}` label or run `/preview` to bring it back"
    )


def _unlabeled_by_expiry(obs: Observed, labels: frozenset[str], settings: Settings) -> bool:
    """The label is gone because the TTL's teardown removed it (nothing else stands in the way)."""
    return (
        known_value(obs.record.expired_at) is not None
        and obs.pr.state == "open"
        and not labels & set(settings.exclude_labels)
    )


def _note_activity(b: _Builder) -> None:
    """Approval, activity and first sight of the head, as the record keeps them."""
    obs, rec, now = b.obs, b.record, int(b.now.timestamp())
    deployer = last_writer(b.outcomes, frozenset({Verb.DEPLOY, Verb.APPROVE}))
    approver = approver_of(obs, deployer)
    changes: dict[str, object] = {}
    if approver and rec.approver != approver and known_value(rec.approver) is None:
        changes["approver"] = approver
    if obs.pr.is_fork:
        changes["approved_sha"] = approved_sha_of(replace(obs, record=rec), approver, b.verbs)
    new_head = rec.seen_sha != obs.pr.head_sha
    label_at = obs.label.at if obs.label is not None and obs.label.at is not None else None
    activity = known_value(rec.activity_at)
    if new_head or b.verbs & _ACTIVE or activity is None or keep_ended(rec, obs.pr, b.settings):
        activity = now
    if label_at is not None and (activity is None or label_at > activity):
        activity = label_at
    changes["activity_at"] = activity
    if new_head:
        changes.update(seen_sha=obs.pr.head_sha, seen_at=now)
    if Verb.KEEP in b.verbs:
        changes["keep"] = True
    label_kept = b.settings.keep_label in obs.pr.labels
    if label_kept or rec.kept_by_label is True:
        changes["kept_by_label"] = label_kept or None
    if known_value(rec.expired_at) is not None:
        changes["expired_at"] = None  # wanted again: no longer an expired preview
    b.record = replace(rec, **changes)  # type: ignore[arg-type]


def _extras(b: _Builder, running: str | None = None, error: str = "", live: bool = False) -> Extras:
    """What the comment shows besides the state; the expiry only while a preview runs."""
    ttl = ttl_of(b.record, b.pr, b.settings, b.now)
    ready = known_value(b.record.ready_seconds)
    return Extras(
        running_sha=running,
        ready_seconds=ready,
        expires_at=ttl.expires_at if live or running else None,
        warn=ttl.warn,
        kept=ttl.kept,
        error=error,
    )


def _plan_collision(b: _Builder, wanted: bool) -> Plan:
    settings, app = b.settings, b.obs.app
    n = names(settings, b.pr.repo, b.pr.number)
    if not wanted or app is None:
        b.record = b.obs.record
        return Plan(State.NOT_DEPLOYED, (), f"Application {n.app} is not ours; nothing to do")
    # Never name the other owner: it may be a private repository.
    owner = "another repository" if app.managed else "something other than preview-bot"
    detail = (
        f"An Argo CD Application named `{n.app}` already exists in namespace "
        f"`{settings.argocd_namespace}` and belongs to {owner}. preview-bot leaves it alone; "
        "change `app_name_template` to include `{owner}` or `{repo}`."
    )
    b.comment(State.NOT_DEPLOYED, detail)
    plan = b.finish(State.NOT_DEPLOYED, "name taken by an Application not ours")
    # The record belongs to that other Application: keep it out of its annotations.
    return _without_record(plan)


def plan_failure(obs: Observed, settings: Settings, now: datetime, reason: str) -> Plan:
    """Say once on the PR that a sync failed for good, and why; no retry on this head until the
    PR changes (a push, or `/preview redeploy`)."""
    b = _Builder(obs, settings, now, (), obs.record, release=False)
    detail = f"preview-bot could not finish: {escape(reason, 500)}"
    b.record = replace(b.record, failure_sha=obs.pr.head_sha)
    b.check(State.FAILED, detail)
    b.comment(
        State.FAILED, detail + "\n\nIt tries again after the next push or `/preview redeploy`."
    )
    plan = b.finish(State.FAILED, "permanent failure")
    # The record goes on our Application when there is one, and always into the process's
    # memory and the comment; never onto an Application that is not ours.
    if obs.app is not None and not obs.app.owned_by(obs.pr.repo):
        return _without_record(plan)
    return plan


def _without_record(plan: Plan) -> Plan:
    """The plan without its RecordState (for an Application that is not ours)."""
    return replace(plan, actions=tuple(a for a in plan.actions if not isinstance(a, RecordState)))


def _plan_hold(b: _Builder, answer: Gate) -> Plan:
    """The head may not deploy yet: keep what runs, and say what waits and why."""
    app = b.obs.app
    running = app.head_sha if app is not None and not app.terminating else None
    extras = _extras(b, running if running != b.pr.head_sha else None, live=running is not None)
    if answer.state is State.QUEUED:
        extras = replace(extras, queue=b.obs.cap)
    b.check(answer.state, answer.detail or answer.reason)
    b.comment(answer.state, answer.detail, extras)
    b.follow_up = answer.retry_in
    return b.finish(answer.state, answer.reason)


def _plan_deploy(b: _Builder) -> Plan:
    obs, settings, pr = b.obs, b.settings, b.pr
    n = names(settings, pr.repo, pr.number)
    app = obs.app
    content = render_overlay(settings, pr)
    blob = git_blob_sha(content)
    overlay_current = obs.record.overlay_blob == blob

    if not overlay_current and obs.base_ok is False:
        detail = (
            f"The base overlay `{n.base_dir}` (the overlay's `{settings.overlay_base}`) is "
            f"missing on branch `{obs.branch}`, so no overlay was committed. Add it, or set "
            "`overlay_base` to the repository's preview overlay."
        )
        b.comment(State.FAILED, detail)
        return b.finish(State.FAILED, "base overlay missing")
    if app is not None and app.terminating:
        # The previous preview is still being pruned; applying now would be refused by the API
        # server. The watch sees it vanish and queues this PR again (once pruned, `finish`
        # releases it, or it would wait for ever).
        b.comment(State.TEARDOWN_PENDING)
        return b.finish(State.TEARDOWN_PENDING, "old Application pruning")

    redeploy = Verb.REDEPLOY in b.verbs
    deploying = _write_preview(b, content, blob, overlay_current, redeploy)
    if deploying:  # the resync enforces the ready timeout: no per-preview timer
        state, error = State.DEPLOYING, ""
    else:
        health = health_of(app, b.record, pr.head_sha, settings, b.now)
        state, error = health.state, health.error
        if state is State.READY and known_value(b.record.ready_seconds) is None:
            seen = known_value(b.record.seen_at)
            if seen is not None:
                b.record = replace(b.record, ready_seconds=max(0, int(b.now.timestamp()) - seen))
    _deployment(b, state)
    url = n.preview_url if state is State.READY else None
    b.check(state, error or _summary(state), url)
    b.comment(state, "", _extras(b, error=error, live=True))
    return b.finish(state, "deploy" if deploying else f"preview {state.value}")


def _summary(state: State) -> str:
    return {
        State.DEPLOYING: "Argo CD is rolling out this commit.",
        State.READY: "Argo CD reports the preview synced and healthy on this commit.",
    }.get(state, f"Preview {state.value}.")


def _write_preview(
    b: _Builder, content: str, blob: str, overlay_current: bool, redeploy: bool
) -> bool:
    """The git and cluster writes of a deploy; True when anything was (re)deployed."""
    obs, settings, pr = b.obs, b.settings, b.pr
    n = names(settings, pr.repo, pr.number)
    if obs.namespace_ok is False:
        for path, text in render_namespace_component(settings).items():
            message = "chore(preview): add the shared preview Namespace component [skip ci]"
            b.actions.append(PutSharedFile(path, text, obs.branch, message))
    if not overlay_current:
        previous = obs.record.overlay_blob
        b.actions.append(
            PutOverlay(
                path=n.overlay_path,
                content=content,
                blob_sha=blob,
                previous_blob=known_value(previous),
                branch=obs.branch,
                message=overlay_message(pr, settings),
            )
        )
    app = obs.app
    if app is None or app.head_sha != pr.head_sha or not overlay_current or redeploy:
        revision = known_value(obs.record.overlay_commit) or obs.branch
        manifest = render_application(settings, pr, revision, obs.installation_id)
        b.actions.append(ApplyApplication(manifest))
    if not b.actions:
        return False
    new_head = obs.record.deployed_sha != pr.head_sha
    b.record = replace(
        b.record,
        overlay_blob=blob,
        deployed_at=int(b.now.timestamp()),
        failure_sha=None,
        ready_seconds=None if new_head else b.record.ready_seconds,
    )
    return True


def _deployment(b: _Builder, state: State) -> None:
    """The GitHub deployment of the head follows the preview's state; one per head."""
    obs, settings, pr = b.obs, b.settings, b.pr
    n = names(settings, pr.repo, pr.number)
    log_url = argocd_app_url(settings, n.app)
    rec = b.record
    current = known_value(rec.deployment_id)
    if rec.deployed_sha != pr.head_sha or current is None:
        if current is not None:
            b.actions.append(
                SetDeploymentStatus(
                    current, "inactive", None, log_url, "Superseded by a newer commit"
                )
            )
        recover = obs.record.intent == f"deployment:{pr.head_sha}"
        b.actions.append(
            CreateDeployment(
                pr.head_sha,
                n.app,
                n.preview_url,
                log_url,
                deployment_description(State.DEPLOYING),
                recover,
            )
        )
        b.record = replace(
            rec, deployed_sha=pr.head_sha, deployment_id=UNKNOWN, deployment_state="in_progress"
        )
        return
    wanted = _DEPLOYMENT_STATES.get(state)
    if wanted is not None and rec.deployment_state != wanted:
        url = n.preview_url
        b.actions.append(
            SetDeploymentStatus(current, wanted, url, log_url, deployment_description(state))
        )
        b.record = replace(rec, deployment_state=wanted)


def _plan_teardown(b: _Builder, reason: str, expired: bool = False) -> Plan:
    """Undo what is left, Application first; the comment follows the Application's fate.

    The comment is written once Argo CD has pruned (in seconds; the watch then queues a sync),
    so a normal teardown edits it once, to destroyed. Pruned means gone, or (the Applications
    the bot applies) terminating with Argo CD's finalizer gone and the bot's left: then the
    GitHub steps still missing are done, the comment says destroyed, and `finish` releases the
    Application last. Only if it is still terminating after `teardown_grace_seconds` (Argo CD
    down, a stuck finalizer) does the comment say teardown pending.
    """
    obs, settings, pr = b.obs, b.settings, b.pr
    n = names(settings, pr.repo, pr.number)
    app = obs.app
    gone = app is None or app.releasable
    comment_state = obs.comment.state if obs.comment else None
    if gone and (obs.comment is None or comment_state in _FINAL):
        state = State.DESTROYED if obs.comment else State.NOT_DEPLOYED
        return b.finish(state, "nothing deployed")

    # Without any record (a restart after a crash) the comment tells: a teardown writes it only
    # after its GitHub steps, so "teardown pending" means they were done.
    overlay = obs.record.overlay_blob
    unknown = overlay is UNKNOWN and comment_state == State.TEARDOWN_PENDING.value
    if expired and settings.trigger_label in pr.labels:
        b.actions.append(SetLabel(settings.trigger_label, False))
    if app is not None and not app.terminating:
        b.actions.append(DeleteApplication(n.app))
    if overlay is not None and not unknown:
        b.actions.append(
            DeleteOverlay(
                path=n.overlay_path,
                previous_blob=known_value(overlay),
                branch=obs.branch,
                message=overlay_message(pr, settings, deleting=True),
            )
        )
    if obs.record.deployment_id is not None and not unknown:
        b.actions.append(DeactivateDeployments(n.app, known_value(obs.record.deployment_id)))
    _close_check(b)
    b.record = replace(_forget(b.record), overlay_blob=None, deployment_id=None)
    if expired:
        b.record = replace(b.record, expired_at=int(b.now.timestamp()))
    detail = f"Torn down because {reason}." if reason else ""
    if app is None or gone:
        b.comment(State.DESTROYED, detail)
        return b.finish(State.DESTROYED, "teardown finished")
    if not app.terminating:
        b.follow_up = settings.teardown_grace_seconds
        plan = b.finish(_state_of(comment_state), "teardown")
        return plan
    b.comment(State.TEARDOWN_PENDING, detail)
    return b.finish(State.TEARDOWN_PENDING, "teardown")


def _close_check(b: _Builder) -> None:
    rec = b.record
    final = {State.READY.value, State.FAILED.value, State.DESTROYED.value}
    sha = known_value(rec.check_run_sha)
    if b.settings.check_run and sha and known_value(rec.check_run_state) not in final:
        b.actions.append(ReportCheck(sha, State.DESTROYED, "Preview removed", "", None))
    elif b.settings.check_run and sha != b.pr.head_sha:
        # The record never heard of the head's check run (lost with the Application when a
        # teardown was killed half-way): close it if it exists (execution looks it up).
        b.actions.append(ReportCheck(b.pr.head_sha, State.DESTROYED, "Preview removed", "", None))


def _forget(record: Record) -> Record:
    """A record once the preview is gone: a new label starts afresh (a new approval, a new
    activity clock), while the comment and history stay known."""
    return replace(
        record,
        approver=None,
        approved_sha=None,
        activity_at=None,
        keep=None,
        kept_by_label=None,
        seen_sha=None,
        seen_at=None,
        deployed_at=None,
        ready_seconds=None,
        failure_sha=None,
        intent=None,
    )


def _state_of(value: str | None) -> State:
    """The State a comment's hidden marker names (deploying when unknown)."""
    try:
        return State(value)
    except ValueError:
        return State.DEPLOYING
