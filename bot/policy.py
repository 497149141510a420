"""Who may deploy what, and when: the gates between a labeled PR and its preview. Pure.

A PR wants a preview when it is open, carries the trigger label (or a writer ran `/preview`)
and no exclude label. Whether its head may deploy *now* is decided by the gates, in order:
a well-formed head, the fork policy, the label's author, drafts, the repository's cap, the
required checks and the image. A gate that says no keeps whatever preview runs and says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot.commands import Verb
from bot.config import Settings
from bot.model import SHA_RE, UNKNOWN, Observed, PullRequest, Record, State, known_value
from bot.render import image_tag

FORK_REFUSAL = (
    "Previews are not built for pull requests from forks here (`fork_policy: deny`): their "
    "code would run with this repository's deploy rights."
)


@dataclass(frozen=True)
class Gate:
    """A gate's answer: deploy now (`go`), or what the comment says instead and why."""

    go: bool
    state: State = State.DEPLOYING
    detail: str = ""
    reason: str = ""
    retry_in: float | None = None  # check again then (the image may appear)

    @staticmethod
    def stop(state: State, detail: str, reason: str, retry_in: float | None = None) -> Gate:
        return Gate(False, state, detail, reason, retry_in)


GO = Gate(True)


def effective_labels(pr: PullRequest, settings: Settings, verbs: frozenset[Verb]) -> frozenset[str]:
    """The PR's labels as this sync leaves them: `/preview` adds the trigger label, `/preview
    destroy` removes it (the sync writes that to GitHub too)."""
    labels = set(pr.labels)
    if Verb.DEPLOY in verbs:
        labels.add(settings.trigger_label)
    if Verb.DESTROY in verbs:
        labels.discard(settings.trigger_label)
    return frozenset(labels)


def teardown_reason(pr: PullRequest, labels: frozenset[str], settings: Settings) -> str | None:
    """Why the PR must have no preview at all (None: it wants one)."""
    if pr.state != "open":
        return "the PR was merged" if pr.merged else "the PR was closed"
    excluded = sorted(labels & set(settings.exclude_labels))
    if excluded:
        return f"the PR carries the `{excluded[0]}` label"
    if settings.trigger_label not in labels:
        return f"the `{settings.trigger_label}` label was removed"
    return None


@dataclass(frozen=True)
class Ttl:
    """The preview's time-to-live as of now."""

    kept: bool
    expires_at: int | None  # epoch seconds; None: no TTL
    warn: bool
    expired: bool


def ttl_of(record: Record, pr: PullRequest, settings: Settings, now: datetime) -> Ttl:
    """When the preview expires: `ttl_seconds` after its last activity, unless kept."""
    kept = record.keep is True or settings.keep_label in pr.labels
    activity = known_value(record.activity_at)
    if keep_ended(record, pr, settings):
        activity = int(now.timestamp())  # the clock starts again now, warning included
    if kept or not settings.ttl_seconds or activity is None:
        return Ttl(kept, None, False, False)
    expires = int(activity + settings.ttl_seconds)
    at = now.timestamp()
    return Ttl(False, expires, at >= expires - settings.ttl_warning_seconds, at >= expires)


def keep_ended(record: Record, pr: PullRequest, settings: Settings) -> bool:
    """The keep label went since the last sync: that counts as activity (no teardown for the
    time the label covered, and a warning before the next one)."""
    return record.kept_by_label is True and settings.keep_label not in pr.labels


def approver_of(obs: Observed, deployer: str | None) -> str | None:
    """Whose approval stands: the record's, a writer's `/preview` now, else the label's author
    when they may write."""
    recorded = known_value(obs.record.approver)
    if recorded:
        return recorded
    if deployer:
        return deployer
    if obs.label is not None and obs.label.writer:
        return obs.label.actor
    return None


def approved_sha_of(obs: Observed, approver: str | None, verbs: frozenset[Verb]) -> str | None:
    """The fork head a writer approved: the current one when they approve now, or when their
    label is the PR's first approval; else what the record says."""
    head = obs.pr.head_sha
    if verbs & {Verb.APPROVE, Verb.DEPLOY}:
        return head
    recorded = obs.record.approved_sha
    if recorded is UNKNOWN or recorded is None:
        return head if approver else None
    return recorded


def gate(obs: Observed, settings: Settings, now: datetime, verbs: frozenset[Verb]) -> Gate:
    """May the PR's head deploy now? The first gate that says no decides."""
    for check in (_head, _fork, _label, _draft, _cap, _checks, _image):
        answer = check(obs, settings, now, verbs)
        if not answer.go:
            return answer
    return GO


def _head(obs: Observed, _s: Settings, _n: datetime, _v: frozenset[Verb]) -> Gate:
    if SHA_RE.match(obs.pr.head_sha):
        return GO
    detail = f"The head commit `{obs.pr.head_sha[:60]}` is not a 40-hex SHA; nothing deployed."
    return Gate.stop(State.NOT_DEPLOYED, detail, "bad head sha")


def _fork(obs: Observed, settings: Settings, _n: datetime, verbs: frozenset[Verb]) -> Gate:
    pr = obs.pr
    if not pr.is_fork or settings.fork_policy == "allow":
        return GO
    if settings.fork_policy == "deny":
        return Gate.stop(State.NOT_DEPLOYED, FORK_REFUSAL, "fork PR")
    approved = approved_sha_of(obs, approver_of(obs, None), verbs)
    if approved == pr.head_sha:
        return GO
    detail = (
        f"This PR comes from a fork: commit `{pr.head_sha[:8]}` deploys once someone with write "
        "access has looked at it and runs `/preview approve`."
    )
    return Gate.stop(State.WAITING, detail, "fork commit waits for approval")


def _label(obs: Observed, settings: Settings, _n: datetime, verbs: frozenset[Verb]) -> Gate:
    # A writer's `/preview` or `/preview approve` is a writer asking, whoever added the label.
    if verbs & {Verb.DEPLOY, Verb.APPROVE} or approver_of(obs, None):
        return GO
    label = settings.trigger_label
    if obs.label is None:
        detail = (
            f"preview-bot could not tell who added the `{label}` label: someone with write "
            "access can run `/preview` to deploy."
        )
    else:
        detail = (
            f"The `{label}` label was added by `@{obs.label.actor}`, who cannot write to this "
            f"repository: a maintainer must add the label, or run `/preview`."
        )
    return Gate.stop(State.NOT_DEPLOYED, detail, "label not from a writer")


def _draft(obs: Observed, settings: Settings, _n: datetime, _v: frozenset[Verb]) -> Gate:
    if not obs.pr.draft or settings.drafts or obs.app is not None:
        return GO  # a PR turned back into a draft keeps its running preview
    detail = "This PR is a draft: its preview deploys when it is marked ready for review."
    return Gate.stop(State.WAITING, detail, "draft")


def _cap(obs: Observed, settings: Settings, _n: datetime, _v: frozenset[Verb]) -> Gate:
    cap = obs.cap
    if obs.app is not None or not settings.max_previews or cap is None:
        return GO
    if cap.position <= cap.limit - cap.in_use:
        return GO
    return Gate.stop(State.QUEUED, "", "cap reached")


def _checks(obs: Observed, settings: Settings, _n: datetime, _v: frozenset[Verb]) -> Gate:
    checks = obs.checks
    if not settings.required_checks or checks is None or checks.state == "success":
        return GO
    sha = obs.pr.head_sha[:8]
    name = f"[{checks.name}]({checks.url})" if checks.url else f"`{checks.name}`"
    if checks.state == "failure":
        detail = f"{name} failed on `{sha}`, so it was not deployed. A new push tries again."
        return Gate.stop(State.FAILED, detail, "required check failed")
    return Gate.stop(State.WAITING, f"Waiting for {name} on `{sha}`.", "waiting for checks")


def _image(obs: Observed, settings: Settings, now: datetime, _v: frozenset[Verb]) -> Gate:
    if not settings.image_check or obs.image is not False:
        return GO
    image = f"{settings.image_name}:{image_tag(settings, obs.pr)}"
    seen = known_value(obs.record.seen_at) if obs.record.seen_sha == obs.pr.head_sha else None
    waited = now.timestamp() - seen if seen is not None else 0.0
    if waited >= settings.image_wait_seconds:
        detail = f"The image `{image}` did not appear in the registry in time; nothing deployed."
        return Gate.stop(State.FAILED, detail, "image never appeared")
    # Check again with backoff: soon after the push, then less often (CI takes minutes).
    retry = min(max(15.0, waited / 2), 300.0)
    return Gate.stop(State.WAITING, f"Waiting for the image `{image}`.", "waiting for image", retry)
