"""`preview-bot simulate ACTION --pr N`: play GitHub's other half in local mode.

A command is a pure state transition of the simulated PR (`check`, then `transition`) inside a
thin I/O shell (`simulate`): read DIR, make a commit if the command needs one, deliver the
signed webhook, and only once the server accepted it move the branch and save the new state.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

from bot.local.layout import (
    DeliveryError,
    Layout,
    LocalConfig,
    LocalError,
    iso,
    now,
    read_json,
    write_json,
)
from bot.local.payloads import ACTIONS, PullState, SimulatedRepo, build_payload
from bot.local.repo import DEVELOPER_IDENTITY, LocalRepo
from bot.local.serve import UNUSED_APP_ID, shown
from bot.model import SHA_RE
from bot.webhooks import delivery_headers

DELIVERY_TIMEOUT = 10.0  # GitHub gives a webhook 10 s to answer


@dataclass(frozen=True)
class Command:
    """One `simulate` command line."""

    action: str  # label | push | unlabel | close | reopen
    number: int
    label: str  # the trigger label
    sha: str | None = None  # --sha: an existing commit to use as the new head


# ---- the pure part -----------------------------------------------------------------------------


def check_arguments(cmd: Command) -> None:
    """Refuse a command line that is wrong whatever the PR; LocalError says why."""
    if cmd.action not in ACTIONS:
        raise LocalError(f"unknown action {cmd.action!r}; expected one of {', '.join(ACTIONS)}")
    if cmd.number < 1:
        raise LocalError(f"--pr: expected a positive PR number, got {cmd.number}")
    if cmd.sha is not None and cmd.action not in ("label", "push"):
        raise LocalError(f"--sha goes with push (or label of a new PR), not {cmd.action}")
    if cmd.sha is not None and not SHA_RE.match(cmd.sha):
        raise LocalError(f"--sha: expected a 40-hex-digit commit SHA (lowercase), got {cmd.sha!r}")


def check(cmd: Command, pr: PullState | None) -> None:
    """Refuse a command that cannot apply to the PR as it is; LocalError says why."""
    if pr is None:
        if cmd.action != "label":
            raise LocalError(
                f"PR #{cmd.number} does not exist yet: create it with "
                f"`simulate label --pr {cmd.number}`"
            )
        return
    _check_existing(cmd, pr)


def _check_existing(cmd: Command, pr: PullState) -> None:
    n, label = cmd.number, cmd.label
    refusals = {
        "label": (
            "--sha with label only applies to a new PR; use push to move the head"
            if cmd.sha is not None
            else f"PR #{n} already carries the label `{label}`"
            if label in pr.labels
            else None
        ),
        "push": (
            f"PR #{n} is closed: GitHub sends no synchronize for a closed PR; "
            f"`simulate reopen --pr {n}` first"
            if pr.state != "open"
            else f"--sha: {cmd.sha} already is the head of PR #{n}"
            if cmd.sha == pr.head_sha
            else None
        ),
        "unlabel": (None if label in pr.labels else f"PR #{n} does not carry the label `{label}`"),
        "close": None if pr.state == "open" else f"PR #{n} is already closed",
        "reopen": (
            None if pr.state == "closed" else f"PR #{n} is open; only a closed PR can be reopened"
        ),
    }
    refusal = refusals[cmd.action]
    if refusal is not None:
        raise LocalError(refusal)


def moves_head(cmd: Command, pr: PullState | None) -> bool:
    """A new PR and a push move the head: to --sha, or else to a commit `simulate` makes."""
    return pr is None or cmd.action == "push"


def transition(
    cmd: Command, pr: PullState | None, head: str | None, base: tuple[str, str], when: str
) -> PullState:
    """The PR after the (checked) command; `head` is the new head for a new PR or a push,
    `base` the base branch and its current commit, `when` the time in GitHub's format."""
    base_ref, base_sha = base
    if pr is None:  # label of a new PR: open it, on branch pr-N
        return PullState(
            number=cmd.number,
            title=f"Simulated change #{cmd.number}",
            head_ref=f"pr-{cmd.number}",
            head_sha=str(head),
            base_ref=base_ref,
            base_sha=base_sha,
            created_at=when,
            updated_at=when,
            labels=[cmd.label],
        )
    changes: dict[str, object] = {"updated_at": when, "base_sha": base_sha or pr.base_sha}
    if cmd.action == "label":
        changes["labels"] = [*pr.labels, cmd.label]
    elif cmd.action == "unlabel":
        changes["labels"] = [name for name in pr.labels if name != cmd.label]
    elif cmd.action == "push":
        changes.update(head_sha=str(head), commits=pr.commits + 1)
    elif cmd.action == "close":
        changes.update(state="closed", closed_at=when)
    elif cmd.action == "reopen":
        changes.update(state="open", closed_at=None)
    return dataclasses.replace(pr, **changes)  # type: ignore[arg-type]


# ---- the I/O shell -----------------------------------------------------------------------------


def _app_change(repo: LocalRepo, parent: str, number: int, when: datetime) -> dict[str, bytes]:
    """An application change for PR `number` (never under infra/, which the bot owns)."""
    path = f"app/pr-{number}.txt"
    old = repo.read(parent, path) or b""
    line = f"change made by preview-bot simulate at {iso(when)}\n".encode()
    return {path: old + line}


def _open(directory: Path | str) -> tuple[Layout, LocalConfig, LocalRepo]:
    layout = Layout(Path(directory))
    config = LocalConfig.load(layout)
    if config is None:
        raise LocalError(
            f"{layout.config} not found: start the local server first with "
            f"`preview-bot serve --local {shown(layout.root)}`"
        )
    repo = LocalRepo(config.repo_dir(layout))
    if not repo.is_repo():
        raise LocalError(
            f"{repo.path} is not a git repository: run `preview-bot serve --local "
            f"{shown(layout.root)}` once to make it"
        )
    return layout, config, repo


def _new_head(
    repo: LocalRepo, cmd: Command, pr: PullState | None, base: str, when: datetime
) -> tuple[str, tuple[str, str | None]] | None:
    """(new head, (branch, its current commit)) for a command that moves the head, else None."""
    if not moves_head(cmd, pr):
        return None
    branch = pr.head_ref if pr is not None else f"pr-{cmd.number}"
    old = repo.branch_sha(branch)
    if cmd.sha is not None:
        if repo.resolve(cmd.sha) != cmd.sha:
            raise LocalError(f"--sha: {cmd.sha} is not a commit in {repo.path}")
        return cmd.sha, (branch, old)
    parent = pr.head_sha if pr is not None else old or base
    message = (
        f"Another change for PR #{cmd.number}" if pr is not None else f"Change for PR #{cmd.number}"
    )
    change = _app_change(repo, parent, cmd.number, when)
    return repo.make_commit(parent, change, message, DEVELOPER_IDENTITY), (branch, old)


@dataclass(frozen=True)
class Request:
    """What `preview-bot simulate` was asked: the command line, minus DIR."""

    action: str  # label | push | unlabel | close | reopen
    number: int
    sha: str | None = None
    url: str | None = None  # the webhook URL; default: the local server's
    print_only: bool = False  # print the payload instead of sending it


def simulate(directory: Path | str, request: Request, out: TextIO | None = None) -> int:
    """`preview-bot simulate COMMAND --pr N`: change the simulated PR and deliver the webhook.

    Nothing changes (no branch move, no saved state) unless the server accepts the delivery
    with a 2xx, so a failed command can simply be run again. With `print_only` the payload is
    printed instead of sent. Raises LocalError for bad input; returns 0 on a 2xx, else 1.
    """
    stream = out or sys.stdout
    command, number, sha = request.action, request.number, request.sha
    check_arguments(Command(command, number, "", sha))
    layout, config, repo = _open(directory)
    cmd = Command(command, number, config.trigger_label, sha)
    stored = read_json(layout.simulated(number))
    pr = PullState.from_json(stored) if isinstance(stored, dict) else None
    check(cmd, pr)
    when = now()
    base_sha = repo.branch_sha(config.branch)
    if pr is None and base_sha is None:
        raise LocalError(f"{repo.path}: branch {config.branch} not found")
    moved = _new_head(repo, cmd, pr, str(base_sha), when)
    new = transition(
        cmd, pr, moved[0] if moved else None, (config.branch, base_sha or ""), iso(when)
    )
    site = SimulatedRepo(config.repository, config.branch, cmd.label)
    before = pr.head_sha if pr is not None and command == "push" else None
    payload = build_payload(ACTIONS[command], new, site, before)
    body = json.dumps(payload, separators=(",", ":")).encode()
    if request.print_only:
        print(json.dumps(payload, indent=2), file=stream)
        return 0
    target = request.url or config.url
    print(
        f"PR #{number}: {ACTIONS[command]} (head {new.head_sha[:8]} on {new.head_ref}, "
        f"{new.state}, labels {new.labels or 'none'}) -> POST {target}",
        file=stream,
    )
    status, answer = deliver(target, config.secret, "pull_request", body)
    print(f"HTTP {status}: {answer}", file=stream)
    if not 200 <= status < 300:
        print("nothing was changed; fix the cause and run the same command again", file=stream)
        return 1
    if moved is not None:
        head, (branch, old) = moved
        if not repo.move_branch(branch, head, old):
            repo.run("update-ref", f"refs/heads/{branch}", head)  # simulate owns pr-N branches
    write_json(layout.simulated(number), new.to_json())
    print(f"then see {shown(layout.pr_md(number))} and the server's log", file=stream)
    return 0


def deliver(url: str, secret: str, event: str, body: bytes) -> tuple[int, str]:
    """POST a webhook as GitHub does (its headers and signature)."""
    if not url.startswith(("http://", "https://")):
        raise LocalError(f"--url: expected an http(s) URL, got {url!r}")
    headers = {
        **delivery_headers(secret, event, body),
        "X-GitHub-Hook-ID": "1",
        "X-GitHub-Hook-Installation-Target-Type": "integration",
        "X-GitHub-Hook-Installation-Target-ID": str(UNUSED_APP_ID),
    }
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=DELIVERY_TIMEOUT) as resp:  # noqa: S310
            return int(resp.status), resp.read().decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace").strip()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(
            f"cannot deliver to {url}: {reason}. Is `preview-bot serve --local` "
            "running? Nothing was changed."
        ) from exc
