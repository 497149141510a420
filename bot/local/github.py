"""GitHub played by files and a git repository: local mode's GitHubPort.

PRs come from the deliveries themselves (an intake observer stores each `pull_request` into
DIR/prs/pr-N.json), because there is no GitHub to ask; overlay writes are real commits with the
contents API's `sha` precondition; the comment and the deployments live in DIR/state.json and
are shown, with their whole history, in DIR/prs/pr-N.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from typing import Any

from bot.comment import STATE_TITLES, parse_comment_state
from bot.config import Settings
from bot.errors import Conflict, PermanentError, TemporaryError
from bot.local.layout import Layout, iso, now, read_json, write_atomic, write_json
from bot.local.payloads import INSTALLATION_ID
from bot.local.repo import GitError, LocalRepo
from bot.model import (
    CheckReport,
    DeploymentStatus,
    IssueComment,
    LabelEvent,
    ListedDeployment,
    PullRequest,
)
from bot.parse import pull_from_api
from bot.ports import RepoInfo
from bot.render import names

log = logging.getLogger(__name__)

BOT_LOGIN = "preview-bot[bot]"  # the author of the comments local mode writes


class LocalGitHub:
    """GitHubPort and RepoPort for local mode's one repository: PRs from deliveries, contents
    in git, comments and deployments in files."""

    def __init__(
        self,
        layout: Layout,
        repo: LocalRepo,
        repository: str,
        settings: Settings,
        clock: Callable[[], datetime] = now,
    ) -> None:
        self.layout = layout
        self.git = repo
        self.repository = repository
        self.settings = settings
        self.clock = clock
        # One writer at a time: two workers committing to one branch would only meet in
        # update-ref's compare-and-swap and retry, but the working-tree sync must not overlap.
        self._git_lock = asyncio.Lock()

    # ---- what deliveries teach us (the intake observer) -------------------------------------

    def observe_delivery(self, event: str, payload: dict[str, Any]) -> None:
        """Keep the newest `pull_request` of each PR: local mode's stand-in for GET /pulls/N."""
        pull = payload.get("pull_request")
        repo = (payload.get("repository") or {}).get("full_name")
        if event != "pull_request" or not isinstance(pull, dict):
            return
        number = pull.get("number")
        if repo != self.repository or not isinstance(number, int):
            log.warning(
                "local mode serves only %s; the pull_request of %s is not kept",
                self.repository,
                repo,
                extra={"repo": repo, "pr": number},
            )
            return
        path = self.layout.pr_json(number)
        stored = read_json(path)
        # An older delivery arriving late must not roll the PR back (GitHub's updated_at has
        # whole seconds, so equal times count as newer: simulate sends one event per command).
        if isinstance(stored, dict) and str(stored.get("updated_at", "")) > str(
            pull.get("updated_at", "")
        ):
            log.info("older pull_request delivery not kept", extra={"repo": repo, "pr": number})
            return
        write_json(path, pull)
        label = (payload.get("label") or {}).get("name")
        if payload.get("action") == "labeled" and isinstance(label, str):
            state = self._state()
            actor = str((payload.get("sender") or {}).get("login") or "")
            events = state["label_events"].setdefault(str(number), {})
            events[label] = {"actor": actor, "at": int(self.clock().timestamp())}
            write_json(self.layout.state, state)

    def repo(self, installation_id: int, repo: str) -> LocalGitHub:  # noqa: ARG002 (the port's)
        """This one repository (local mode serves one; the installation id does not matter)."""
        if repo != self.repository:
            raise PermanentError(f"local mode serves only {self.repository}, not {repo}", 404)
        return self

    # ---- pull requests --------------------------------------------------------------------

    async def get_pull(self, number: int) -> PullRequest:
        stored = read_json(self.layout.pr_json(number))
        if not isinstance(stored, dict):
            raise PermanentError(f"PR #{number} unknown: no pull_request delivery seen yet", 404)
        # A delivery's comment count is as old as the delivery, and local comments never reach
        # it: leave it unknown, so the comment is always looked up.
        return dataclasses.replace(pull_from_api(stored), comment_count=None)

    # ---- comments and deployments (DIR/state.json, shown in DIR/prs/pr-N.md) ---------------

    def _state(self) -> dict[str, Any]:
        state = read_json(self.layout.state)
        if not isinstance(state, dict):
            state = {}
        state.setdefault("next_id", {"comment": 1, "deployment": 1})
        state["next_id"].setdefault("check_run", 1)
        state.setdefault("comments", {})
        state.setdefault("deployments", {})
        state.setdefault("history", {})
        state.setdefault("label_events", {})
        state.setdefault("check_runs", {})
        return state

    def _save(self, state: dict[str, Any], repo: str, number: int | None) -> None:
        write_json(self.layout.state, state)
        if number is not None:
            write_atomic(self.layout.pr_md(number), render_pr_markdown(state, repo, number))

    def _event(
        self,
        state: dict[str, Any],
        repo: str,
        number: int | None,
        what: str,
        body: str | None = None,
    ) -> None:
        if number is None:
            return
        entry: dict[str, Any] = {"at": iso(self.clock()), "what": what}
        if body is not None:
            entry["body"] = body
        state["history"].setdefault(f"{repo}#{number}", []).append(entry)

    @staticmethod
    def _next(state: dict[str, Any], kind: str) -> int:
        value = int(state["next_id"][kind])
        state["next_id"][kind] = value + 1
        return value

    async def comments(self, number: int) -> AsyncIterator[IssueComment]:
        for cid, c in sorted(self._state()["comments"].items(), key=lambda kv: int(kv[0])):
            if c["repo"] == self.repository and c["number"] == number:
                # Every comment in DIR/state.json is the bot's own: local mode has no users.
                author = str(c.get("user") or BOT_LOGIN)
                yield IssueComment(int(cid), author, c.get("app_id"), c["body"])

    async def create_comment(self, number: int, body: str) -> int:
        state = self._state()
        cid = self._next(state, "comment")
        now = iso(self.clock())
        state["comments"][str(cid)] = {
            "repo": self.repository,
            "number": number,
            "user": BOT_LOGIN,
            "body": body,
            "created_at": now,
            "updated_at": now,
        }
        title = _comment_title(body)
        self._event(state, self.repository, number, f"comment {cid} created: {title}", body)
        self._save(state, self.repository, number)
        log.info(
            "comment %d created: %s (%s)",
            cid,
            title,
            self.layout.pr_md(number),
        )
        return cid

    async def edit_comment(self, comment_id: int, body: str) -> bool:
        state = self._state()
        found = state["comments"].get(str(comment_id))
        if found is None or found["repo"] != self.repository:
            return False  # deleted by hand: the syncer posts a new one, as on GitHub
        found.update(body=body, updated_at=iso(self.clock()))
        number = int(found["number"])
        title = _comment_title(body)
        self._event(state, self.repository, number, f"comment {comment_id} edited: {title}", body)
        self._save(state, self.repository, number)
        log.info(
            "comment %d edited: %s (%s)",
            comment_id,
            title,
            self.layout.pr_md(number),
        )
        return True

    def _pr_of_environment(self, environment: str) -> int | None:
        """The PR a deployment environment belongs to (deployments name no PR on GitHub)."""
        for path in self.layout.prs.glob("pr-*.json"):
            number = path.stem.removeprefix("pr-")
            if (
                number.isdigit()
                and names(self.settings, self.repository, int(number)).app == environment
            ):
                return int(number)
        return None

    async def create_deployment(self, sha: str, environment: str, description: str) -> int:
        state = self._state()
        did = self._next(state, "deployment")
        number = self._pr_of_environment(environment)
        state["deployments"][str(did)] = {
            "repo": self.repository,
            "pr": number,
            "sha": sha,
            "environment": environment,
            "description": description,
            "created_at": iso(self.clock()),
            "statuses": [],
        }
        self._event(
            state,
            self.repository,
            number,
            f"deployment {did} created: {sha[:8]} to environment {environment}",
        )
        self._save(state, self.repository, number)
        log.info(
            "deployment %d created: %s to %s",
            did,
            sha[:8],
            environment,
        )
        return did

    async def set_deployment_status(self, deployment_id: int, status: DeploymentStatus) -> bool:
        data = self._state()
        dep = data["deployments"].get(str(deployment_id))
        if dep is None or dep["repo"] != self.repository:
            return False
        dep["statuses"].append(
            {
                "state": status.state,
                "description": status.description,
                "environment_url": status.environment_url,
                "log_url": status.log_url,
                "created_at": iso(self.clock()),
            }
        )
        where = f" ({status.environment_url})" if status.environment_url else ""
        what = f"deployment {deployment_id} status {status.state}: {status.description}{where}"
        self._event(data, self.repository, dep["pr"], what)
        self._save(data, self.repository, dep["pr"])
        log.info("deployment %d status %s: %s", deployment_id, status.state, status.description)
        return True

    async def active_deployments(self, environment: str) -> list[int]:
        deps = self._state()["deployments"]
        active = [
            int(did)
            for did, d in deps.items()
            if d["repo"] == self.repository
            and d["environment"] == environment
            and (not d["statuses"] or d["statuses"][-1]["state"] != "inactive")
        ]
        return sorted(active, reverse=True)

    async def recent_deployments(self) -> list[ListedDeployment]:
        """The newest 100 deployments of state.json. Only the bot writes that file, so they
        are all its own, unless an entry says `"marked": false` (one played as made by hand)."""
        deps = self._state()["deployments"]
        listed = [
            ListedDeployment(int(did), d["sha"], d["environment"], bool(d.get("marked", True)))
            for did, d in deps.items()
            if d["repo"] == self.repository
        ]
        return sorted(listed, key=lambda d: d.id, reverse=True)[:100]

    async def find_deployment(self, sha: str, environment: str) -> int | None:
        deps = self._state()["deployments"]
        mine = [
            int(did)
            for did, d in deps.items()
            if d["repo"] == self.repository and d["sha"] == sha and d["environment"] == environment
        ]
        return max(mine) if mine else None

    # ---- who may do what (local mode has one user: the developer, a maintainer) -----------

    async def permission(self, user: str) -> str:  # noqa: ARG002 (the port's)
        return "admin"

    async def label_event(self, number: int, label: str) -> LabelEvent | None:
        found = self._state()["label_events"].get(str(number), {}).get(label)
        return LabelEvent(found["actor"], int(found["at"])) if found else None

    async def set_label(self, number: int, label: str, present: bool) -> None:
        """Change the PR's labels as GitHub would (the PR as deliveries told it)."""
        path = self.layout.pr_json(number)
        pull = read_json(path)
        if not isinstance(pull, dict):
            return
        names_ = [lab["name"] for lab in pull.get("labels") or []]
        if present and label not in names_:
            pull.setdefault("labels", []).append({"name": label})
        elif not present:
            pull["labels"] = [lab for lab in pull.get("labels") or [] if lab["name"] != label]
        write_json(path, pull)
        state = self._state()
        self._event(
            state, self.repository, number, f"label {label} {'added' if present else 'removed'}"
        )
        self._save(state, self.repository, number)

    async def add_reaction(self, comment_id: int, content: str) -> None:
        state = self._state()
        found = state["comments"].get(str(comment_id))
        number = int(found["number"]) if found else None
        self._event(state, self.repository, number, f"reaction {content} on comment {comment_id}")
        self._save(state, self.repository, number)

    # ---- checks (local mode has no CI: required checks never pass, so leave them unset) ---

    async def check_states(self, sha: str) -> dict[str, tuple[str, str | None]]:  # noqa: ARG002
        return {}

    async def report_check(self, report: CheckReport) -> int:
        state = self._state()
        run_id = report.check_run_id or self._next(state, "check_run")
        state["check_runs"][str(run_id)] = {
            "sha": report.sha,
            "status": report.status,
            "conclusion": report.conclusion,
            "title": report.title,
        }
        write_json(self.layout.state, state)
        log.info("check run %d: %s %s", run_id, report.status, report.conclusion or "")
        return int(run_id)

    async def find_check(self, sha: str, name: str) -> int | None:  # noqa: ARG002
        runs = self._state()["check_runs"]
        mine = [int(rid) for rid, r in runs.items() if r["sha"] == sha]
        return max(mine) if mine else None

    # ---- the repository as a whole -------------------------------------------------------

    async def open_pulls(self) -> list[PullRequest]:
        pulls = []
        for path in sorted(self.layout.prs.glob("pr-*.json")):
            data = read_json(path)
            if isinstance(data, dict) and data.get("state") == "open":
                pulls.append(dataclasses.replace(pull_from_api(data), comment_count=None))
        return pulls

    async def list_files(self, path: str, ref: str) -> list[str] | None:
        def read() -> list[str] | None:
            commit = self.git.resolve(ref)
            if commit is None:
                return None
            listing = self.git.run("ls-tree", "-r", "-z", "--name-only", commit, "--", path or ".")
            found = [p for p in listing.stdout.decode().split("\0") if p]
            return found or None

        result: list[str] | None = await self._git(read)
        return result

    async def branch_head(self, branch: str) -> str | None:
        result: str | None = await self._git(lambda: self.git.branch_sha(branch))
        return result

    async def delete_files(self, paths: list[str], branch: str, message: str) -> str | None:
        def commit() -> str | None:
            parent = self._head(branch)
            present = [p for p in paths if self._file_sha(parent, p) is not None]
            if not present:
                return None
            made = self.git.make_commit(parent, dict.fromkeys(present), message)
            if not self.git.move_branch(branch, made, parent):
                raise Conflict(f"branch {branch} moved while deleting {len(present)} files")
            self.git.sync_worktree(branch, parent, made)
            return made

        async with self._git_lock:
            result: str | None = await self._git(commit)
        return result

    # ---- the App (local mode: one installation, one repository) ---------------------------

    async def installations(self) -> list[int]:
        return [INSTALLATION_ID]

    async def installation_repos(self, installation_id: int) -> list[RepoInfo]:
        branch = self.git.current_branch() or "main"
        return [RepoInfo(self.repository, installation_id, branch)]

    async def bot_login(self) -> str | None:
        return BOT_LOGIN

    def rate_remaining(self, installation_id: int) -> float | None:  # noqa: ARG002
        return None  # no GitHub, no limit

    # ---- contents (real commits in the local repository) ---------------------------------

    async def _git(self, call: Callable[[], Any]) -> Any:
        try:
            return await asyncio.to_thread(call)
        except GitError as exc:
            # A lock held by a user's git command, a full disk: worth another try later.
            raise TemporaryError(str(exc), 5.0) from exc

    def _file_sha(self, commit: str, path: str) -> str | None:
        found = self.git.entry(commit, path)
        if found is None:
            return None
        if found[0] != "blob":
            raise PermanentError(f"{path} is a directory, expected a file")
        return found[1]

    def _head(self, branch: str) -> str:
        head = self.git.branch_sha(branch)
        if head is None:
            raise PermanentError(f"branch {branch} not found in {self.git.path}", 404)
        return head

    async def get_file_sha(self, path: str, ref: str) -> str | None:

        def read() -> str | None:
            commit = self.git.resolve(ref)
            return None if commit is None else self._file_sha(commit, path)

        result: str | None = await self._git(read)
        return result

    def _commit_file(
        self, path: str, branch: str, content: bytes | None, message: str, sha: str | None
    ) -> tuple[str | None, str | None]:
        """One commit writing (or deleting) `path` on `branch`, if `sha` still names the file.

        Mirrors the contents API: a stale or missing `sha` is a Conflict (GitHub's 409/422);
        a branch moved by someone else in between is retried on its new head, as GitHub does.
        Returns (blob sha, commit sha); commit None when deleting a file already gone.
        """
        for _ in range(5):
            parent = self._head(branch)
            current = self._file_sha(parent, path)
            if content is None:
                if current is None:
                    return None, None
                if sha != current:
                    raise Conflict(f"{path}: sha {sha} is not the file's blob {current}")
            elif sha is None and current is not None:
                raise Conflict(f"{path} exists on {branch}: its sha is required to replace it")
            elif sha is not None and sha != current:
                raise Conflict(f"{path}: sha {sha} is not the file's blob {current}")
            commit = self.git.make_commit(parent, {path: content}, message)
            if self.git.move_branch(branch, commit, parent):
                self.git.sync_worktree(branch, parent, commit)
                blob = None if content is None else self.git.write_blob(content)
                return blob, commit
        raise Conflict(f"branch {branch} kept moving while committing {path}")

    async def put_file(
        self,
        path: str,
        branch: str,
        content: str,
        message: str,
        sha: str | None,
    ) -> tuple[str, str]:
        async with self._git_lock:
            blob, commit = await self._git(
                lambda: self._commit_file(path, branch, content.encode(), message, sha)
            )
        log.info("committed %s on %s: %s", path, branch, (commit or "")[:12])
        return str(blob), str(commit)

    async def delete_file(self, path: str, branch: str, message: str, sha: str) -> bool:
        """Delete the file in one commit; False when it was already gone."""
        async with self._git_lock:
            _, commit = await self._git(lambda: self._commit_file(path, branch, None, message, sha))
        if commit is None:
            return False
        log.info("committed removal of %s on %s: %s", path, branch, commit[:12])
        return True


def _comment_title(body: str) -> str:
    state, _ = parse_comment_state(body)
    for title in STATE_TITLES.values():
        if f"### {title}" in body:
            return title
    return state or "comment"


def render_pr_markdown(state: Mapping[str, Any], repo: str, number: int) -> str:
    """DIR/prs/pr-N.md: the bot's comment as GitHub would show it now, then its whole history."""
    comments = [
        c for c in state.get("comments", {}).values() if c["repo"] == repo and c["number"] == number
    ]
    lines = [f"# {repo}#{number}: what preview-bot wrote on GitHub (local mode)", ""]
    if comments:
        current = comments[-1]
        lines += [
            f"The bot's comment, as of {current['updated_at']}:",
            "",
            "---",
            "",
            current["body"].rstrip(),
            "",
            "---",
            "",
        ]
    else:
        lines += ["No comment yet.", ""]
    history = state.get("history", {}).get(f"{repo}#{number}", [])
    lines += ["## History (oldest first)", ""]
    lines += [f"- {_when(entry['at'])} · {entry['what']}" for entry in history]
    lines += ["", "## Every version of the comment", ""]
    for entry in history:
        if "body" in entry:
            # Four backticks: the comment itself contains inline code.
            lines += [
                f"### {entry['what']} ({_when(entry['at'])})",
                "",
                "````markdown",
                entry["body"].rstrip(),
                "````",
                "",
            ]
    return "\n".join(lines).rstrip() + "\n"


def _when(iso: str) -> str:
    return iso.replace("T", " ").replace("Z", " UTC")
