"""The PR's one comment: rendered at a glance, read back (only when the bot wrote it). Pure.

The comment opens with hidden markers: one that says it is preview-bot's comment, one with the
state it shows, a fingerprint of what it shows (so an unchanged comment is never rewritten) and
the PR's record (what the bot knows before an Application exists). A marker alone proves
nothing, since anyone who can comment can type it: `read_comment` only trusts a comment the
App itself wrote. Text from outside (Argo CD's messages, check names, logins) is escaped, so
it cannot close the table, add a link or mention anyone.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from bot.commands import HELP_ROWS
from bot.config import Settings
from bot.model import (
    UNKNOWN,
    CapSeen,
    CommentText,
    IssueComment,
    ObservedComment,
    PullRequest,
    Record,
    State,
)
from bot.render import argocd_app_url, names

COMMENT_MARKER = "<!-- preview-bot:comment -->"
_STATE_RE = re.compile(r"<!-- preview-bot:state (\{.*?\}) -->")
HISTORY_LIMIT = 10  # state changes kept in the record and shown in the comment

STATE_TITLES = {
    State.DEPLOYING: "🚧 Preview deploying",
    State.READY: "✅ Preview ready",
    State.FAILED: "❌ Preview failed",
    State.WAITING: "⏸️ Preview waiting",
    State.QUEUED: "🕒 Preview queued",
    State.TEARDOWN_PENDING: "⏳ Preview teardown pending",
    State.DESTROYED: "🧹 Preview destroyed",
    State.NOT_DEPLOYED: "⛔ No preview",
}
STATUS_CELLS = {
    State.DEPLOYING: "🚧 Deploying",
    State.READY: "✅ Ready",
    State.FAILED: "❌ Failed",
    State.WAITING: "⏸️ Waiting",
    State.QUEUED: "🕒 Queued",
    State.TEARDOWN_PENDING: "⏳ Teardown pending",
    State.DESTROYED: "🧹 Destroyed",
    State.NOT_DEPLOYED: "⛔ Not deployed",
}
STATE_TEXT = {
    State.DEPLOYING: "Argo CD is rolling out this commit.",
    State.READY: "Argo CD reports the preview synced and healthy on this commit.",
    State.FAILED: "The preview did not come up.",
    State.WAITING: "",
    State.QUEUED: "",
    State.TEARDOWN_PENDING: (
        "The Application is deleted and waits for Argo CD to prune what it deployed "
        "(its finalizer). The bot finishes the teardown once it is gone."
    ),
    State.DESTROYED: "The preview and everything it deployed are removed.",
    State.NOT_DEPLOYED: "",
}
# States in which a preview exists or is coming (the comment shows its link and commit).
_LIVE = {State.DEPLOYING, State.READY, State.FAILED, State.TEARDOWN_PENDING, State.DESTROYED}


@dataclass(frozen=True)
class Extras:
    """What the comment shows beyond the state: everything here is part of its fingerprint,
    except the record, which only rides along hidden."""

    detail: str = ""  # the bot's own sentence on why (may carry markdown; outside text escaped)
    running_sha: str | None = None  # what runs now, when another head waits
    ready_seconds: int | None = None
    expires_at: int | None = None  # epoch seconds; None: no TTL applies
    warn: bool = False  # the expiry is near: say so
    kept: bool = False  # exempt from the TTL
    queue: CapSeen | None = None
    error: str = ""  # the last error (outside text: escaped here)
    notes: tuple[str, ...] = ()  # answers to commands (trusted text)
    help_open: bool = False
    history: tuple[tuple[int, str, str], ...] = ()
    record: Record | None = field(default=None, compare=False, repr=False)


_MENTION = re.compile(r"@(?=\w)")
_MARKUP = re.compile(r"([\\`*_{}\[\]()<>#|!~])")


def escape(text: str, limit: int = 300) -> str:
    """Outside text made inert in markdown: one line, no markup, links, HTML or @mentions."""
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    flat = _MARKUP.sub(r"\\\1", flat)
    # A zero-width joiner after @ keeps the text readable but stops the mention.
    return _MENTION.sub("@\u200d", flat)


def fingerprint(*parts: object) -> str:
    """A short digest of what the comment shows, so an unchanged comment is never rewritten."""
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def _when(epoch: int | float) -> str:
    return f"{datetime.fromtimestamp(epoch, UTC):%Y-%m-%d %H:%M} UTC"


def _duration(seconds: int) -> str:
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _commit_link(pr: PullRequest, sha: str) -> str:
    return f"[`{sha[:8]}`]({pr.repo_html_url}/commit/{sha})"


def render_comment(
    settings: Settings,
    pr: PullRequest,
    state: State,
    now: datetime,
    extras: Extras | None = None,
) -> CommentText:
    """The PR's one comment. Its fingerprint leaves out the time, so equal states compare equal.

    `extras.detail` is the bot's own sentence (it may carry markdown); outside text goes through
    `escape` before it gets there, or arrives as `extras.error`. Notes (answers to commands) and
    an open help are shown but left out of the fingerprint: they are written with the command's
    own edit and need no second edit to go away.
    """
    x = extras or Extras()
    detail = x.detail
    n = names(settings, pr.repo, pr.number)
    app_url = argocd_app_url(settings, n.app)
    fp = fingerprint(
        state.value, pr.head_sha, n.preview_url, app_url, replace(x, notes=(), help_open=False)
    )
    lines = [COMMENT_MARKER, _hidden(state, fp, x.record), f"### {STATE_TITLES[state]}", ""]
    if state in _LIVE or x.running_sha:
        lines += _table(settings, pr, state, now, x)
    if STATE_TEXT[state]:
        lines += [STATE_TEXT[state], ""]
    lines += _facts(state, x)
    if detail:
        lines += [_quote(detail), ""]
    if state is State.NOT_DEPLOYED or (state not in _LIVE and not x.running_sha):
        lines += [f"_Updated {now:%Y-%m-%d %H:%M:%S} UTC._", ""]
    lines += _history(pr, x) + _help(x.help_open)
    return CommentText("\n".join(lines).rstrip() + "\n", state, fp)


def _table(
    settings: Settings, pr: PullRequest, state: State, now: datetime, x: Extras
) -> list[str]:
    n = names(settings, pr.repo, pr.number)
    app_url = argocd_app_url(settings, n.app)
    status = STATUS_CELLS[state]
    name = f"[{n.app}]({app_url})" if app_url else n.app
    if state is State.DESTROYED:
        preview = f"~~{n.preview_url}~~"
    else:
        preview = f"[Visit Preview]({n.preview_url})"
    commit = _commit_link(pr, pr.head_sha)
    if x.running_sha and x.running_sha != pr.head_sha:
        commit = f"{_commit_link(pr, x.running_sha)} runs; {commit} waits"
    return [
        "| Name | Status | Preview | Commit | Updated (UTC) |",
        "| :--- | :----- | :------ | :----- | :------------ |",
        f"| **{name}** | {status} | {preview} | {commit} | {now:%Y-%m-%d %H:%M} |",
        "",
    ]


def _facts(state: State, x: Extras) -> list[str]:
    out: list[str] = []
    if state is State.READY and x.ready_seconds is not None:
        out.append(f"⏱️ Ready in {_duration(x.ready_seconds)} from the push.")
    if x.queue is not None:
        q = x.queue
        out.append(
            f"🕒 Queued: position {q.position}, {q.in_use} of {q.limit} previews in use. It "
            "deploys when a preview of this repository is torn down."
        )
    if x.kept:
        out.append("📌 Kept: no time-to-live applies (`/preview keep` or the keep label).")
    elif x.expires_at is not None:
        mark = "⚠️ " if x.warn else "⌛ "
        out.append(
            f"{mark}Expires {_when(x.expires_at)} unless there is activity (a push, the label, "
            "a `/preview` command); `/preview keep` keeps it."
        )
    if x.error:
        out.append(f"Last error: {x.error}")
    spaced = [line for fact in out for line in (fact, "")]  # one paragraph each
    if x.notes:
        spaced += [*(f"- {note}" for note in x.notes), ""]
    return spaced


def _history(pr: PullRequest, x: Extras) -> list[str]:
    if not x.history:
        return []
    rows = [f"- {_when(at)} · {state} · {_commit_link(pr, sha)}" for at, state, sha in x.history]
    return ["<details><summary>History</summary>", "", *rows, "", "</details>", ""]


def _help(open_: bool) -> list[str]:
    rows = [f"| `{cmd}` | {what} |" for cmd, what in HELP_ROWS]
    return [
        f"<details{' open' if open_ else ''}><summary>Commands</summary>",
        "",
        "| Command | What it does |",
        "| :--- | :--- |",
        *rows,
        "",
        "Commands count on their own line in a new comment, from people with write access.",
        "",
        "</details>",
    ]


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.strip().splitlines())


def _hidden(state: State, fp: str, record: Record | None) -> str:
    data: dict[str, Any] = {"state": state.value, "fingerprint": fp}
    if record is not None:
        data["record"] = record_to_json(record)
    # `>` escaped, so no value can close the HTML comment early.
    text = json.dumps(data, separators=(",", ":")).replace(">", "\\u003e")
    return f"<!-- preview-bot:state {text} -->"


def record_to_json(record: Record) -> dict[str, Any]:
    """The known fields of a record, for the comment's hidden marker."""
    return {
        f.name: getattr(record, f.name)
        for f in fields(record)
        if getattr(record, f.name) is not UNKNOWN
    }


def record_from_json(data: Any) -> Record | None:
    """A record read back from a hidden marker; fields of the wrong type are left unknown."""
    if not isinstance(data, dict):
        return None
    values: dict[str, Any] = {}
    for f in fields(Record):
        value = data.get(f.name, UNKNOWN)
        if value is None or isinstance(value, str | int) or value is UNKNOWN:
            values[f.name] = value
    return Record(**values)


def parse_comment_state(body: str) -> tuple[str | None, str | None]:
    """(state, fingerprint) hidden in a comment the bot wrote; (None, None) if unreadable."""
    hidden = _read_hidden(body)
    state, fp = hidden.get("state"), hidden.get("fingerprint")
    return (state if isinstance(state, str) else None, fp if isinstance(fp, str) else None)


def _read_hidden(body: str) -> dict[str, Any]:
    found = _STATE_RE.search(body)
    if not found:
        return {}
    try:
        hidden = json.loads(found.group(1))
    except ValueError:
        return {}
    return hidden if isinstance(hidden, dict) else {}


@dataclass(frozen=True)
class Author:
    """How the bot recognises its own comments: the App's id, else its bot login."""

    app_id: int
    login: str | None = None  # `<app-slug>[bot]`, when known

    def wrote(self, comment: IssueComment) -> bool:
        if comment.app_id is not None:
            return comment.app_id == self.app_id
        return self.login is not None and comment.author == self.login


def read_comment(comment: IssueComment, author: Author) -> ObservedComment | None:
    """The bot's comment with the state and record its hidden marker holds; None for a comment
    anyone else wrote, whatever it contains."""
    if not author.wrote(comment) or COMMENT_MARKER not in comment.body:
        return None
    state, fp = parse_comment_state(comment.body)
    record = record_from_json(_read_hidden(comment.body).get("record"))
    return ObservedComment(comment.id, state, fp, record)


def history_with(
    record: Record, now: datetime, state: State, sha: str
) -> tuple[tuple[int, str, str], ...]:
    """The record's history plus this state change (when it is one), newest last, bounded."""
    old = history_of(record)
    if old and old[-1][1:] == (state.value, sha):
        return old
    return (*old, (int(now.timestamp()), state.value, sha))[-HISTORY_LIMIT:]


def history_of(record: Record) -> tuple[tuple[int, str, str], ...]:
    raw = record.history
    if not isinstance(raw, str):
        return ()
    try:
        rows = json.loads(raw)
    except ValueError:
        return ()
    if not isinstance(rows, list):
        return ()
    return tuple(
        (int(r[0]), str(r[1]), str(r[2]))
        for r in rows
        if isinstance(r, list) and len(r) == 3 and isinstance(r[0], int)
    )[-HISTORY_LIMIT:]


def history_json(history: tuple[tuple[int, str, str], ...]) -> str:
    return json.dumps([list(row) for row in history], separators=(",", ":"))


def examples(settings: Settings, pr: PullRequest, now: datetime) -> dict[State, CommentText]:
    """The comment in each state, as `preview-bot render --state` shows it (and the docs)."""
    at = int(now.timestamp())
    ttl = int(settings.ttl_seconds) or None
    expires = at + ttl if ttl else None
    history = ((at - 300, State.DEPLOYING.value, pr.head_sha), (at, State.READY.value, pr.head_sha))
    sha8 = pr.head_sha[:8]
    cases: dict[State, Extras] = {
        State.WAITING: Extras(detail=f"Waiting for `build` on `{sha8}`."),
        State.QUEUED: Extras(queue=CapSeen(10, 10, 2)),
        State.DEPLOYING: Extras(expires_at=expires),
        State.READY: Extras(ready_seconds=133, expires_at=expires, history=history),
        State.FAILED: Extras(
            error=escape("Deployment dex-api: ImagePullBackOff"), expires_at=expires
        ),
        State.TEARDOWN_PENDING: Extras(),
        State.DESTROYED: Extras(detail="Torn down because the PR was merged."),
        State.NOT_DEPLOYED: Extras(
            detail="The `preview` label was added by `@someone`, who cannot write to this "
            "repository: a maintainer must add the label, or run `/preview`."
        ),
    }
    return {state: render_comment(settings, pr, state, now, x) for state, x in cases.items()}
