"""Local mode: the production bot against a local git repository, files and maybe a cluster.

`preview-bot serve --local DIR` runs the same intake, queue, syncer and planner as production
(the `Bot` of bot/service.py); only the adapters behind `GitHubPort` and `ClusterPort` differ:

- GitHub is played by files. The PR comes from the deliveries themselves (an intake observer
  stores each `pull_request` into DIR/prs/pr-N.json), because there is no GitHub to ask; overlay
  writes are real commits in the git repository DIR/repo (or `--repo PATH`), with the contents
  API's `sha` precondition; the comment and the deployments live in DIR/state.json and are shown,
  with their whole history, in DIR/prs/pr-N.md.
- The cluster is the current kubeconfig context when it answers and serves Argo CD's
  Application CRD; otherwise DIR/cluster/<name>.yaml holds each Application as the cluster would.

`preview-bot simulate ...` plays GitHub's other half: it keeps each simulated PR in
DIR/github/pr-N.json, commits to the PR branch, and delivers signed webhooks to the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any, TextIO

import uvicorn
import yaml
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio.client.exceptions import ApiException
from starlette.applications import Starlette

from bot.app import create_app
from bot.config import Settings, load_settings
from bot.github import (
    KUSTOMIZATION_NAMES,
    Conflict,
    PermanentError,
    TemporaryError,
    pull_from_api,
)
from bot.kube import ArgoCD
from bot.local_payloads import ACTIONS, PullState, build_payload
from bot.logs import setup_logging
from bot.model import SHA_RE, ObservedComment, PullRequest
from bot.render import COMMENT_MARKER, STATE_TITLES, names, parse_comment_state
from bot.service import Bot, WatchSource, load_kube_client
from bot.sync import ClusterPort
from bot.webhooks import sign

log = logging.getLogger("bot.local")

DEFAULT_DIR = ".preview-bot-local"
DEFAULT_REPOSITORY = "data-literate/dex"  # the owner/name deliveries carry; any name works
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# Local mode never talks to GitHub, so the App's id and key are placeholders no code reads.
UNUSED_APP_ID = 0
UNUSED_PRIVATE_KEY = "(unused in local mode: no GitHub App is involved)"
# Settings local mode ignores from the environment: it has no App, and its secret is its own.
_GITHUB_ENV = (
    "GITHUB_APP_ID",
    "GITHUB_PRIVATE_KEY",
    "GITHUB_PRIVATE_KEY_FILE",
    "GITHUB_WEBHOOK_SECRET",
    "GITHUB_WEBHOOK_SECRET_FILE",
)
BOT_IDENTITY = ("preview-bot", "preview-bot@users.noreply.localhost")
DEVELOPER_IDENTITY = ("developer", "developer@users.noreply.localhost")
CLUSTER_PROBE_SECONDS = 5.0
WATCH_POLL_SECONDS = 0.5
DELIVERY_TIMEOUT = 10.0  # GitHub gives a webhook 10 s to answer

NO_ARGOCD_NOTE = (
    "no Argo CD runs in local mode, so no finalizer prunes what the Application deployed "
    "(nothing was deployed); the file is removed at once"
)
REPO_README = """\
# A throwaway repository for preview-bot's local mode

`preview-bot serve --local` created this repository with a DEX-style infra tree
(`infra/argocd/base`, `infra/argocd/overlays/preview`) and commits each PR's overlay
under `infra/argocd/previews/` on `main`, as it would on GitHub.
"""


class LocalError(Exception):
    """Bad input or an unusable local directory; the message tells the user what to do."""


class DeliveryError(LocalError):
    """`simulate` could not reach the server; nothing was changed."""


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_atomic(path: Path, text: str) -> None:
    """Replace `path` in one step, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LocalError(f"{path}: cannot read it ({exc}); delete it to start afresh") from exc


def _write_json(path: Path, data: Any) -> None:
    _write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


# ---- the local directory ---------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where local mode keeps each thing under DIR."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "local.json"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def default_repo(self) -> Path:
        return self.root / "repo"

    @property
    def prs(self) -> Path:
        return self.root / "prs"

    @property
    def cluster(self) -> Path:
        return self.root / "cluster"

    @property
    def github(self) -> Path:
        return self.root / "github"

    def pr_json(self, number: int) -> Path:
        return self.prs / f"pr-{number}.json"

    def pr_md(self, number: int) -> Path:
        return self.prs / f"pr-{number}.md"

    def simulated(self, number: int) -> Path:
        return self.github / f"pr-{number}.json"


@dataclass
class LocalConfig:
    """DIR/local.json: what `serve` and `simulate` share (the secret above all)."""

    secret: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    repository: str = DEFAULT_REPOSITORY
    repo_path: str | None = None  # an existing repository (--repo); None: DIR/repo
    branch: str = "main"
    trigger_label: str = "preview"

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host  # noqa: S104
        return f"http://{host}:{self.port}/webhook"

    def repo_dir(self, layout: Layout) -> Path:
        return Path(self.repo_path) if self.repo_path else layout.default_repo.resolve()

    @classmethod
    def load(cls, layout: Layout) -> LocalConfig | None:
        data = _read_json(layout.config)
        if data is None:
            return None
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if not isinstance(known.get("secret"), str) or not known["secret"]:
            raise LocalError(f"{layout.config}: no secret in it; delete it to make a new one")
        return cls(**known)

    def save(self, layout: Layout) -> None:
        _write_json(layout.config, {**asdict(self), "url": self.url})


# ---- git ---------------------------------------------------------------------------------------


class GitError(Exception):
    """A git command failed."""


def _git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    # GIT_DIR and friends leak in when run from a git hook or an IDE; they would point our
    # commands at another repository.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update({"LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"})
    env.update(extra or {})
    return env


class LocalRepo:
    """A git repository driven through the `git` CLI, with plumbing so no checkout is needed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.created = False  # made by this process (create), for the start-up text

    def run(
        self,
        *args: str,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        identity: tuple[str, str] = BOT_IDENTITY,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        name, email = identity
        cmd = [
            "git",
            "-C",
            str(self.path),
            "-c",
            f"user.name={name}",
            "-c",
            f"user.email={email}",
            "-c",
            "commit.gpgsign=false",
            *args,
        ]
        try:
            done = subprocess.run(
                cmd, input=stdin, capture_output=True, env=_git_env(env), timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise GitError(f"git {' '.join(args)}: {exc}") from exc
        if check and done.returncode != 0:
            why = done.stderr.decode(errors="replace").strip()
            raise GitError(f"git {' '.join(args)} in {self.path} failed: {why}")
        return done

    def out(self, *args: str, **kw: Any) -> str:
        return self.run(*args, **kw).stdout.decode().strip()

    @classmethod
    def create(cls, path: Path, skeleton: Traversable, branch: str = "main") -> LocalRepo:
        """A new repository at `path` holding the infra tree, in one commit on `branch`."""
        path.mkdir(parents=True, exist_ok=True)
        repo = cls(path)
        repo.run("init", "-q", "-b", branch)
        _copy_tree(skeleton, path / "infra")
        (path / "README.md").write_text(REPO_README)
        repo.run("add", "-A")
        repo.run(
            "commit", "-q", "-m", "Initial commit: DEX-style infra tree (base + overlays/preview)"
        )
        repo.created = True
        return repo

    def toplevel(self) -> Path | None:
        """The repository `path` is in (its work tree, or the git dir of a bare one)."""
        if not self.path.is_dir():
            return None
        done = self.run("rev-parse", "--show-toplevel", check=False)
        if done.returncode == 0 and done.stdout.strip():
            return Path(done.stdout.decode().strip()).resolve()
        if self.run("rev-parse", "--is-bare-repository", check=False).stdout.strip() == b"true":
            return Path(self.out("rev-parse", "--absolute-git-dir")).resolve()
        return None

    def is_repo(self) -> bool:
        """`path` is a repository's root, not just somewhere inside one: DIR/repo must never
        resolve to a repository around DIR (say, the project local mode is run from)."""
        return self.toplevel() == self.path.resolve()

    def current_branch(self) -> str | None:
        done = self.run("symbolic-ref", "-q", "--short", "HEAD", check=False)
        name = done.stdout.decode().strip()
        return name if done.returncode == 0 and name else None

    def is_bare(self) -> bool:
        return self.out("rev-parse", "--is-bare-repository") == "true"

    def resolve(self, ref: str) -> str | None:
        """The commit sha `ref` names, or None."""
        done = self.run("rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False)
        sha = done.stdout.decode().strip()
        return sha if done.returncode == 0 and sha else None

    def branch_sha(self, branch: str) -> str | None:
        return self.resolve(f"refs/heads/{branch}")

    def entry(self, commit: str, path: str) -> tuple[str, str] | None:
        """(type, sha) of `path` in `commit`'s tree (blob or tree), or None."""
        listing = self.run("ls-tree", "-z", commit, "--", path.strip("/")).stdout.decode()
        for line in filter(None, listing.split("\0")):
            meta, _, name = line.partition("\t")
            if name == path.strip("/"):
                _, kind, sha = meta.split()
                return kind, sha
        return None

    def children(self, commit: str, directory: str) -> list[str]:
        """Names of the entries of `directory` in `commit` (empty when it is no directory)."""
        listing = self.run(
            "ls-tree", "-z", "--name-only", commit, "--", directory.strip("/") + "/"
        ).stdout.decode()
        return [p.rsplit("/", 1)[-1] for p in filter(None, listing.split("\0"))]

    def read(self, commit: str, path: str) -> bytes | None:
        found = self.entry(commit, path)
        if found is None or found[0] != "blob":
            return None
        return self.run("cat-file", "blob", found[1]).stdout

    def write_blob(self, data: bytes) -> str:
        return self.out("hash-object", "-w", "--stdin", stdin=data)

    def make_commit(
        self,
        parent: str,
        changes: Mapping[str, bytes | None],
        message: str,
        identity: tuple[str, str] = BOT_IDENTITY,
    ) -> str:
        """A commit on top of `parent` with `changes` (path -> content, None deletes).

        A throwaway index keeps the repository's own index and working tree untouched, so this
        works on any branch, checked out or not, and never races a user's `git add`.
        """
        lines = []
        for path, data in changes.items():
            clean = path.strip("/")
            if data is None:
                lines.append(f"0 {'0' * 40}\t{clean}")
            else:
                lines.append(f"100644 {self.write_blob(data)}\t{clean}")
        with tempfile.TemporaryDirectory(prefix="preview-bot-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self.run("read-tree", parent, env=env)
            self.run(
                "update-index", "--index-info", stdin=("\n".join(lines) + "\n").encode(), env=env
            )
            tree = self.out("write-tree", env=env)
        return self.out("commit-tree", tree, "-p", parent, "-m", message, identity=identity)

    def move_branch(self, branch: str, new: str, old: str | None) -> bool:
        """Point `branch` at `new` if it still is at `old` (None: must not exist); False if not."""
        done = self.run(
            "update-ref",
            "-m",
            "preview-bot",
            f"refs/heads/{branch}",
            new,
            old or "0" * 40,
            check=False,
        )
        if done.returncode == 0:
            return True
        if self.branch_sha(branch) != old:
            return False
        raise GitError(f"git update-ref {branch} failed: {done.stderr.decode().strip()}")

    def sync_worktree(self, branch: str, old: str, new: str) -> None:
        """Bring a checked-out `branch`'s index and files from `old` to `new`, as a pull would.

        Without this the user would look at files one commit behind, and `git status` would
        show our commit reversed.
        """
        if self.is_bare() or self.current_branch() != branch:
            return
        done = self.run("read-tree", "-m", "-u", old, new, check=False)
        if done.returncode != 0:
            log.warning(
                "the working tree of %s was not updated (%s); the commit is on %s: "
                "run `git reset --keep %s` there",
                self.path,
                done.stderr.decode(errors="replace").strip(),
                branch,
                branch,
            )


def _copy_tree(src: Traversable, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.is_dir():
            _copy_tree(item, dest / item.name)
        elif not item.name.endswith((".py", ".pyc")):
            (dest / item.name).write_bytes(item.read_bytes())


def skeleton_infra() -> Traversable:
    """The DEX-style infra tree shipped in bot/skeleton/infra."""
    return resources.files("bot.skeleton").joinpath("infra")


# ---- GitHub, played by files and the git repository ------------------------------------------


class LocalGitHub:
    """`GitHubPort` for local mode: PRs from deliveries, contents in git, the rest in files."""

    def __init__(
        self,
        layout: Layout,
        repo: LocalRepo,
        repository: str,
        settings: Settings,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.layout = layout
        self.repo = repo
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
        stored = _read_json(path)
        # An older delivery arriving late must not roll the PR back (GitHub's updated_at has
        # whole seconds, so equal times count as newer: simulate sends one event per command).
        if isinstance(stored, dict) and str(stored.get("updated_at", "")) > str(
            pull.get("updated_at", "")
        ):
            log.info("older pull_request delivery not kept", extra={"repo": repo, "pr": number})
            return
        _write_json(path, pull)

    def _check_repo(self, repo: str) -> None:
        if repo != self.repository:
            raise PermanentError(f"local mode serves only {self.repository}, not {repo}", 404)

    # ---- pull requests --------------------------------------------------------------------

    async def get_pull(self, installation_id: int, repo: str, number: int) -> PullRequest:
        self._check_repo(repo)
        stored = _read_json(self.layout.pr_json(number))
        if not isinstance(stored, dict):
            raise PermanentError(f"PR #{number} unknown: no pull_request delivery seen yet", 404)
        # A delivery's comment count is as old as the delivery, and local comments never reach
        # it: leave it unknown, so the comment is always looked up.
        return dataclasses.replace(pull_from_api(stored), comment_count=None)

    # ---- comments and deployments (DIR/state.json, shown in DIR/prs/pr-N.md) ---------------

    def _state(self) -> dict[str, Any]:
        state = _read_json(self.layout.state)
        if not isinstance(state, dict):
            state = {}
        state.setdefault("next_id", {"comment": 1, "deployment": 1})
        state.setdefault("comments", {})
        state.setdefault("deployments", {})
        state.setdefault("history", {})
        return state

    def _save(self, state: dict[str, Any], repo: str, number: int | None) -> None:
        _write_json(self.layout.state, state)
        if number is not None:
            _write_atomic(self.layout.pr_md(number), render_pr_markdown(state, repo, number))

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
        entry: dict[str, Any] = {"at": _iso(self.clock()), "what": what}
        if body is not None:
            entry["body"] = body
        state["history"].setdefault(f"{repo}#{number}", []).append(entry)

    @staticmethod
    def _next(state: dict[str, Any], kind: str) -> int:
        value = int(state["next_id"][kind])
        state["next_id"][kind] = value + 1
        return value

    async def find_comment(
        self, installation_id: int, repo: str, number: int
    ) -> ObservedComment | None:
        self._check_repo(repo)
        for cid, c in sorted(self._state()["comments"].items(), key=lambda kv: int(kv[0])):
            if c["repo"] == repo and c["number"] == number and COMMENT_MARKER in c["body"]:
                return ObservedComment(int(cid), *parse_comment_state(c["body"]))
        return None

    async def create_comment(self, installation_id: int, repo: str, number: int, body: str) -> int:
        self._check_repo(repo)
        state = self._state()
        cid = self._next(state, "comment")
        now = _iso(self.clock())
        state["comments"][str(cid)] = {
            "repo": repo,
            "number": number,
            "body": body,
            "created_at": now,
            "updated_at": now,
        }
        title = _comment_title(body)
        self._event(state, repo, number, f"comment {cid} created: {title}", body)
        self._save(state, repo, number)
        log.info(
            "comment %d created: %s (%s)",
            cid,
            title,
            self.layout.pr_md(number),
            extra={"repo": repo, "pr": number},
        )
        return cid

    async def edit_comment(
        self, installation_id: int, repo: str, comment_id: int, body: str
    ) -> bool:
        self._check_repo(repo)
        state = self._state()
        found = state["comments"].get(str(comment_id))
        if found is None or found["repo"] != repo:
            return False  # deleted by hand: the syncer posts a new one, as on GitHub
        found.update(body=body, updated_at=_iso(self.clock()))
        number = int(found["number"])
        title = _comment_title(body)
        self._event(state, repo, number, f"comment {comment_id} edited: {title}", body)
        self._save(state, repo, number)
        log.info(
            "comment %d edited: %s (%s)",
            comment_id,
            title,
            self.layout.pr_md(number),
            extra={"repo": repo, "pr": number},
        )
        return True

    def _pr_of_environment(self, repo: str, environment: str) -> int | None:
        """The PR a deployment environment belongs to (deployments name no PR on GitHub)."""
        for path in self.layout.prs.glob("pr-*.json"):
            number = path.stem.removeprefix("pr-")
            if number.isdigit() and names(self.settings, repo, int(number)).app == environment:
                return int(number)
        return None

    async def create_deployment(
        self, installation_id: int, repo: str, sha: str, environment: str, description: str
    ) -> int:
        self._check_repo(repo)
        state = self._state()
        did = self._next(state, "deployment")
        number = self._pr_of_environment(repo, environment)
        state["deployments"][str(did)] = {
            "repo": repo,
            "pr": number,
            "sha": sha,
            "environment": environment,
            "description": description,
            "created_at": _iso(self.clock()),
            "statuses": [],
        }
        self._event(
            state, repo, number, f"deployment {did} created: {sha[:8]} to environment {environment}"
        )
        self._save(state, repo, number)
        log.info(
            "deployment %d created: %s to %s",
            did,
            sha[:8],
            environment,
            extra={"repo": repo, "pr": number},
        )
        return did

    async def set_deployment_status(
        self,
        installation_id: int,
        repo: str,
        deployment_id: int,
        state: str,
        environment_url: str | None,
        log_url: str | None,
        description: str,
    ) -> bool:
        self._check_repo(repo)
        data = self._state()
        dep = data["deployments"].get(str(deployment_id))
        if dep is None or dep["repo"] != repo:
            return False
        dep["statuses"].append(
            {
                "state": state,
                "description": description,
                "environment_url": environment_url,
                "log_url": log_url,
                "created_at": _iso(self.clock()),
            }
        )
        where = f" ({environment_url})" if environment_url else ""
        self._event(
            data,
            repo,
            dep["pr"],
            f"deployment {deployment_id} status {state}: {description}{where}",
        )
        self._save(data, repo, dep["pr"])
        log.info(
            "deployment %d status %s: %s",
            deployment_id,
            state,
            description,
            extra={"repo": repo, "pr": dep["pr"]},
        )
        return True

    async def active_deployments(
        self, installation_id: int, repo: str, environment: str
    ) -> list[int]:
        self._check_repo(repo)
        deps = self._state()["deployments"]
        active = [
            int(did)
            for did, d in deps.items()
            if d["repo"] == repo
            and d["environment"] == environment
            and (not d["statuses"] or d["statuses"][-1]["state"] != "inactive")
        ]
        return sorted(active, reverse=True)

    # ---- contents (real commits in the local repository) ---------------------------------

    async def _git(self, call: Callable[[], Any]) -> Any:
        try:
            return await asyncio.to_thread(call)
        except GitError as exc:
            # A lock held by a user's git command, a full disk: worth another try later.
            raise TemporaryError(str(exc), 5.0) from exc

    def _file_sha(self, commit: str, path: str) -> str | None:
        found = self.repo.entry(commit, path)
        if found is None:
            return None
        if found[0] != "blob":
            raise PermanentError(f"{path} is a directory, expected a file")
        return found[1]

    def _head(self, branch: str) -> str:
        head = self.repo.branch_sha(branch)
        if head is None:
            raise PermanentError(f"branch {branch} not found in {self.repo.path}", 404)
        return head

    async def get_file_sha(
        self, installation_id: int, repo: str, path: str, ref: str
    ) -> str | None:
        self._check_repo(repo)

        def read() -> str | None:
            commit = self.repo.resolve(ref)
            return None if commit is None else self._file_sha(commit, path)

        result: str | None = await self._git(read)
        return result

    async def has_kustomization(self, installation_id: int, repo: str, path: str, ref: str) -> bool:
        self._check_repo(repo)

        def read() -> bool:
            commit = self.repo.resolve(ref)
            if commit is None:
                return False
            return any(n in KUSTOMIZATION_NAMES for n in self.repo.children(commit, path))

        result: bool = await self._git(read)
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
            commit = self.repo.make_commit(parent, {path: content}, message)
            if self.repo.move_branch(branch, commit, parent):
                self.repo.sync_worktree(branch, parent, commit)
                blob = None if content is None else self.repo.write_blob(content)
                return blob, commit
        raise Conflict(f"branch {branch} kept moving while committing {path}")

    async def put_file(
        self,
        installation_id: int,
        repo: str,
        path: str,
        branch: str,
        content: str,
        message: str,
        sha: str | None,
    ) -> tuple[str, str]:
        self._check_repo(repo)
        async with self._git_lock:
            blob, commit = await self._git(
                lambda: self._commit_file(path, branch, content.encode(), message, sha)
            )
        log.info("committed %s on %s: %s", path, branch, (commit or "")[:12], extra={"repo": repo})
        return str(blob), str(commit)

    async def delete_file(
        self, installation_id: int, repo: str, path: str, branch: str, message: str, sha: str
    ) -> bool:
        """Delete the file in one commit; False when it was already gone."""
        self._check_repo(repo)
        async with self._git_lock:
            _, commit = await self._git(lambda: self._commit_file(path, branch, None, message, sha))
        if commit is None:
            return False
        log.info(
            "committed removal of %s on %s: %s", path, branch, commit[:12], extra={"repo": repo}
        )
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


# ---- the cluster, played by files ------------------------------------------------------------


class FileCluster:
    """`ClusterPort` on DIR/cluster/<name>.yaml: each Application as the cluster would hold it.

    `apply` merges like a forced server-side apply by the bot: the manifest replaces what the
    bot applied before, while annotations merged by `annotate` (another field manager) and any
    `.status` (Argo CD's) survive. Simplification: annotation keys the bot stops applying are not
    removed; the bot's manifest always sets the same keys.
    """

    HEADER = (
        "# An Argo CD Application as preview-bot's local mode wrote it (no cluster in use).\n"
        "# To play Argo CD, add `status: {sync: {status: Synced}, health: {status: Healthy}}`\n"
        "# and save: the bot's watch sees it and the PR comment turns to ready.\n"
    )

    def __init__(self, directory: Path, namespace: str) -> None:
        self.directory = directory
        self.namespace = namespace
        self._lock = asyncio.Lock()

    def _path(self, name: str) -> Path:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name):
            raise ValueError(f"{name!r} is not a valid Kubernetes object name")
        return self.directory / f"{name}.yaml"

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            obj = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            return None
        return obj if isinstance(obj, dict) else None

    def _write(self, obj: dict[str, Any]) -> None:
        text = yaml.safe_dump(obj, sort_keys=False, allow_unicode=True)
        _write_atomic(self._path(obj["metadata"]["name"]), self.HEADER + text)

    @staticmethod
    def _bump(meta: dict[str, Any], old: dict[str, Any] | None) -> None:
        """Server-set fields, so the file reads like `kubectl get -o yaml`."""
        old_meta = (old or {}).get("metadata") or {}
        meta["uid"] = old_meta.get("uid") or str(uuid.uuid4())
        meta["creationTimestamp"] = old_meta.get("creationTimestamp") or _iso(_now())
        meta["resourceVersion"] = str(int(old_meta.get("resourceVersion") or 0) + 1)

    async def get(self, name: str) -> dict[str, Any] | None:
        return self._read(self._path(name))

    async def apply(self, manifest: dict[str, Any]) -> None:
        async with self._lock:
            meta = manifest["metadata"]
            if meta.get("namespace", self.namespace) != self.namespace:
                raise ValueError(
                    f"Application namespace {meta['namespace']} is not {self.namespace}"
                )
            old = self._read(self._path(meta["name"]))
            obj = copy.deepcopy(manifest)
            new_meta = obj["metadata"]
            new_meta["namespace"] = self.namespace
            generation = 1
            if old is not None:
                kept = dict((old.get("metadata") or {}).get("annotations") or {})
                new_meta["annotations"] = {**kept, **(new_meta.get("annotations") or {})}
                generation = int(old["metadata"].get("generation") or 1)
                if old.get("spec") != obj.get("spec"):
                    generation += 1
                if "status" in old:
                    obj["status"] = old["status"]
            new_meta["generation"] = generation
            self._bump(new_meta, old)
            self._write(obj)
        log.info(
            "Application %s %s in %s",
            meta["name"],
            "created" if old is None else "updated",
            self._path(meta["name"]),
            extra={"app": meta["name"]},
        )

    async def annotate(self, name: str, annotations: dict[str, str]) -> bool:
        async with self._lock:
            obj = self._read(self._path(name))
            if obj is None:
                return False
            meta = obj["metadata"]
            meta["annotations"] = {**(meta.get("annotations") or {}), **annotations}
            self._bump(meta, obj)
            self._write(obj)
        return True

    async def delete(self, name: str) -> bool:
        async with self._lock:
            path = self._path(name)
            existed = path.exists()
            path.unlink(missing_ok=True)
        if existed:
            log.info("Application %s deleted: %s", name, NO_ARGOCD_NOTE, extra={"app": name})
        return True

    def _scan(self) -> dict[str, tuple[str, dict[str, Any] | None]]:
        found: dict[str, tuple[str, dict[str, Any] | None]] = {}
        for path in sorted(self.directory.glob("*.yaml")):
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue  # deleted between glob and read
            try:
                obj = yaml.safe_load(text)
            except yaml.YAMLError:
                obj = None
            found[path.stem] = (
                hashlib.sha256(text.encode()).hexdigest(),
                obj if isinstance(obj, dict) else None,
            )
        return found

    async def list_managed(self) -> list[dict[str, Any]]:
        """Like ArgoCD.list_managed: every Application file that parses."""
        return [obj for _, obj in self._scan().values() if obj is not None]

    async def watch(
        self,
        on_event: Callable[[str, dict[str, Any]], Awaitable[None]],
        poll: float = WATCH_POLL_SECONDS,
    ) -> None:
        """Like ArgoCD.watch: every change of a file (the bot's or a hand edit) is an event."""
        seen: dict[str, tuple[str, dict[str, Any] | None]] = {}
        first = True
        while True:
            now = self._scan()
            for name, (digest, obj) in now.items():
                if name in seen and seen[name][0] == digest:
                    continue
                if obj is None:
                    log.warning("%s is not a YAML mapping; ignored until fixed", self._path(name))
                else:
                    await on_event(
                        "SYNCED" if first else ("MODIFIED" if name in seen else "ADDED"), obj
                    )
            for name, (_, obj) in seen.items():
                if name not in now and obj is not None:
                    await on_event("DELETED", obj)
            seen, first = now, False
            await asyncio.sleep(poll)


# ---- choosing the cluster ----------------------------------------------------------------------


@dataclass
class ClusterChoice:
    """The cluster local mode uses, its watch, and what to tell the user about it."""

    port: ClusterPort
    watch: WatchSource
    description: str
    api_client: kclient.ApiClient | None = None

    async def close(self) -> None:
        if self.api_client is not None:
            await self.api_client.close()


def _no_kubeconfig(kubeconfig: str | None) -> str | None:
    """Why there is no cluster configuration to try, if that is plain before trying.

    The client's own error for a missing file ("Expected key current-context") misleads.
    """
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return None  # in a pod: the service account is the configuration
    paths = [p for p in (kubeconfig or "").split(os.pathsep) if p]
    if any(Path(p).exists() for p in paths):
        return None
    if paths:
        return f"KUBECONFIG {kubeconfig} does not exist"
    default = Path("~/.kube/config").expanduser()
    return None if default.exists() else f"KUBECONFIG unset and no {default}"


async def connect_cluster(settings: Settings, cluster_dir: Path) -> ClusterChoice:
    """The kubeconfig's cluster when it answers and serves Application objects, else files."""
    files = FileCluster(cluster_dir, settings.argocd_namespace)
    where = f"files under {cluster_dir}/"
    why = _no_kubeconfig(settings.kubeconfig)
    if why is not None:
        return ClusterChoice(files, files.watch, f"{where} ({why})")
    try:
        api = await load_kube_client(settings)
    except Exception as exc:  # no kubeconfig, a broken one: any reason means "use files"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return ClusterChoice(files, files.watch, f"{where} (no Kubernetes configuration: {reason})")
    argocd = ArgoCD(api, settings.argocd_namespace)
    host = api.configuration.host
    try:
        await asyncio.wait_for(argocd.list_managed(), CLUSTER_PROBE_SECONDS)
    except ApiException as exc:
        await api.close()
        why = (
            "it has no Argo CD Application CRD"
            if exc.status == 404
            else f"listing Applications answered {exc.status} {exc.reason}"
        )
        return ClusterChoice(files, files.watch, f"{where} (the cluster at {host}: {why})")
    except Exception as exc:  # unreachable, timed out, TLS: the user sees why
        await api.close()
        return ClusterChoice(
            files,
            files.watch,
            f"{where} (the cluster at {host} did not answer: {type(exc).__name__}: {exc})",
        )
    return ClusterChoice(
        argocd,
        argocd.watch,
        f"Argo CD Applications in namespace {settings.argocd_namespace} of the cluster at {host}",
        api,
    )


# ---- serve --local ---------------------------------------------------------------------------


def local_settings(
    secret: str, config_file: str | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Production's settings (file and environment), minus the App, plus the local secret.

    Raises SettingsError like load_settings.
    """
    env = {
        k: v
        for k, v in (os.environ if environ is None else environ).items()
        if k not in _GITHUB_ENV
    }
    settings = load_settings(env, config_file, require_github=False)
    return dataclasses.replace(
        settings,
        github_app_id=UNUSED_APP_ID,
        github_private_key=UNUSED_PRIVATE_KEY,
        github_webhook_secret=secret,
    )


def prepare(
    root: Path, repo_path: Path | None = None, host: str | None = None, port: int | None = None
) -> tuple[Layout, LocalConfig, LocalRepo]:
    """Create DIR on the first run (secret, repository), or check and reuse it."""
    layout = Layout(root)
    if root.exists() and not root.is_dir():
        raise LocalError(f"{root} is not a directory")
    for sub in (layout.prs, layout.cluster, layout.github):
        sub.mkdir(parents=True, exist_ok=True)
    config = LocalConfig.load(layout) or LocalConfig(secret=secrets.token_hex(20))
    if repo_path is not None:
        top = LocalRepo(repo_path.resolve()).toplevel()
        if top is None:
            raise LocalError(f"--repo {repo_path}: not a git repository")
        repo = LocalRepo(top)
        config.repository = _github_name(repo) or config.repository
        config.repo_path = str(repo.path)
    elif config.repo_path:
        repo = LocalRepo(Path(config.repo_path))  # the --repo of an earlier run
        if not repo.is_repo():
            raise LocalError(
                f"{config.repo_path} (from {layout.config}) is no longer a git "
                "repository: pass --repo, or remove repo_path from that file"
            )
    else:
        repo = LocalRepo(layout.default_repo.resolve())
        if not repo.is_repo():
            if repo.path.exists() and any(repo.path.iterdir()):
                raise LocalError(f"{repo.path} exists but is not a git repository")
            repo = LocalRepo.create(repo.path, skeleton_infra())
    config.branch = repo.current_branch() or config.branch
    if repo.branch_sha(config.branch) is None:
        raise LocalError(f"{repo.path}: branch {config.branch} has no commit yet")
    if host is not None:
        config.host = host
    if port is not None:
        config.port = port
    return layout, config, repo


def _github_name(repo: LocalRepo) -> str | None:
    """owner/name of the repository's GitHub origin, so Applications name the real repository."""
    done = repo.run("remote", "get-url", "origin", check=False)
    found = re.search(
        r"github\.com[:/]([^/\s]+)/([^/\s]+?)(?:\.git)?/?$", done.stdout.decode().strip()
    )
    return f"{found.group(1)}/{found.group(2)}" if done.returncode == 0 and found else None


def build_local_app(
    settings: Settings,
    layout: Layout,
    config: LocalConfig,
    repo: LocalRepo,
    banner: Callable[[str], None] | None = None,
) -> tuple[Starlette, Bot]:
    """The production app and Bot on local adapters; `banner` gets the start-up text."""
    bot = Bot(settings)
    github = LocalGitHub(layout, repo, config.repository, settings)
    bot.intake.observers.append(github.observe_delivery)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        cluster = await connect_cluster(settings, layout.cluster)
        bot.start(github, cluster.port, cluster.watch)
        log.info("local mode ready; Applications go to %s", cluster.description)
        if banner is not None:
            banner(start_text(settings, layout, config, repo, cluster.description))
        try:
            yield
        finally:
            await bot.stop()
            await cluster.close()

    return create_app(bot.intake, lifespan), bot


def _prog() -> str:
    """How the user runs preview-bot here, for the commands we suggest."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "preview-bot":
        found = shutil.which("preview-bot")
        return (
            "preview-bot" if found and Path(found).resolve() == argv0.resolve() else (_shown(argv0))
        )
    return "preview-bot" if shutil.which("preview-bot") else f"{Path(sys.executable).name} -m bot"


def _kubectl() -> str:
    """The venv's kubectl (kustomize v5) when there is one: an old kubectl on PATH fails."""
    venv = Path(sys.executable).parent / "kubectl"
    return _shown(venv) if venv.exists() else "kubectl"


def _shown(path: Path) -> str:
    """A path as short as it can be said from the current directory (symlinks kept)."""
    relative = os.path.relpath(os.path.abspath(path))
    return shlex.quote(str(path) if relative.startswith("..") else relative)


def start_text(
    settings: Settings, layout: Layout, config: LocalConfig, repo: LocalRepo, cluster: str
) -> str:
    """What `serve --local` prints at start: where things are, and what to try next."""
    d = _shown(layout.root)
    prog = _prog()
    n = names(settings, config.repository, 7)
    sim = f"{prog} simulate"
    dir_arg = "" if layout.root.resolve() == Path(DEFAULT_DIR).resolve() else f" --dir {d}"
    app_file = f"{_shown(layout.cluster)}/{n.app}.yaml"
    head = repo.branch_sha(config.branch)
    warning = []
    if head is None or not any(
        name in KUSTOMIZATION_NAMES for name in repo.children(head, n.base_dir)
    ):
        warning = [
            f"  WARNING     {config.branch} has no kustomization in {n.base_dir}/: every "
            "preview will fail until it does (bot/skeleton/infra shows one)"
        ]
    return "\n".join(
        [
            "",
            "preview-bot local mode: the production bot, with GitHub played by files.",
            f"  webhook     POST {config.url}",
            f"  secret      {config.secret}   (kept in {_shown(layout.config)})",
            f"  repository  {_shown(repo.path)}{' (created now)' if repo.created else ''}: "
            f"{config.repository}, overlays committed on {config.branch}",
            f"  cluster     {cluster}",
            f"  PR state    {_shown(layout.prs)}/pr-N.json (from deliveries), pr-N.md "
            "(the comment, its history, deployments)",
            *warning,
            "",
            "Next, in another terminal:",
            f"  {sim} label --pr 7{dir_arg}   # open PR 7 with the `{settings.trigger_label}` "
            "label: deploy",
            f"  {sim} push  --pr 7{dir_arg}   # a new commit on pr-7: redeploy with the new tag",
            f"  {sim} close --pr 7{dir_arg}   # close it: everything is removed",
            "and look at:",
            f"  git -C {_shown(repo.path)} log --stat {config.branch}",
            f"  {_kubectl()} kustomize {_shown(repo.path)}/{n.overlay_dir}",
            f"  cat {app_file}",
            f"  cat {_shown(layout.pr_md(7))}",
            "",
        ]
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise LocalError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; pass another --port"
        ) from exc
    return sock


def run_local(
    directory: Path | str = DEFAULT_DIR,
    repo: Path | str | None = None,
    host: str | None = None,
    port: int | None = None,
    config_file: str | None = None,
    out: TextIO | None = None,
) -> int:
    """`preview-bot serve --local DIR`: prepare DIR, print where things are, serve until ^C.

    Raises LocalError (bad DIR/--repo/port) and SettingsError (bad settings) for the CLI.
    """
    stream = out or sys.stdout
    layout, config, local_repo = prepare(Path(directory), Path(repo) if repo else None, host, port)
    settings = local_settings(config.secret, config_file)
    setup_logging(settings.log_level)
    sock = _bind(config.host, config.port)
    config.port = int(sock.getsockname()[1])  # --port 0 picks a free port
    config.trigger_label = settings.trigger_label
    config.save(layout)

    def banner(text: str) -> None:
        print(text, file=stream, flush=True)

    app, _ = build_local_app(settings, layout, config, local_repo, banner)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
    return 0


# ---- simulate ----------------------------------------------------------------------------------


def _app_change(repo: LocalRepo, parent: str, number: int, when: datetime) -> dict[str, bytes]:
    """An application change for PR `number` (never under infra/, which the bot owns)."""
    path = f"app/pr-{number}.txt"
    old = repo.read(parent, path) or b""
    line = f"change made by preview-bot simulate at {_iso(when)}\n".encode()
    return {path: old + line}


def _check_sha(repo: LocalRepo, sha: str) -> str:
    if not SHA_RE.match(sha):
        raise LocalError(f"--sha: expected a 40-hex-digit commit SHA (lowercase), got {sha!r}")
    if repo.resolve(sha) != sha:
        raise LocalError(f"--sha: {sha} is not a commit in {repo.path}")
    return sha


def simulate(
    directory: Path | str,
    command: str,
    number: int,
    *,
    sha: str | None = None,
    url: str | None = None,
    print_only: bool = False,
    out: TextIO | None = None,
) -> int:
    """`preview-bot simulate COMMAND --pr N`: change the simulated PR and deliver the webhook.

    Nothing changes (no branch move, no saved state) unless the server accepts the delivery
    with a 2xx, so a failed command can simply be run again. With `print_only` the payload is
    printed instead of sent. Raises LocalError for bad input; returns 0 on a 2xx, else 1.
    """
    stream = out or sys.stdout
    if command not in ACTIONS:
        raise LocalError(f"unknown action {command!r}; expected one of {', '.join(ACTIONS)}")
    if number < 1:
        raise LocalError(f"--pr: expected a positive PR number, got {number}")
    layout = Layout(Path(directory))
    config = LocalConfig.load(layout)
    if config is None:
        raise LocalError(
            f"{layout.config} not found: start the local server first with "
            f"`preview-bot serve --local {_shown(layout.root)}`"
        )
    repo = LocalRepo(config.repo_dir(layout))
    if not repo.is_repo():
        raise LocalError(
            f"{repo.path} is not a git repository: run `preview-bot serve --local "
            f"{_shown(layout.root)}` once to make it"
        )
    stored = _read_json(layout.simulated(number))
    pr = PullState.from_json(stored) if isinstance(stored, dict) else None
    now = _now()
    label = config.trigger_label
    before: str | None = None
    move: tuple[str, str, str | None] | None = None  # (branch, new head, old head)

    if sha is not None and command not in ("label", "push"):
        raise LocalError(f"--sha goes with push (or label of a new PR), not {command}")
    if sha is not None and not SHA_RE.match(sha):
        raise LocalError(f"--sha: expected a 40-hex-digit commit SHA (lowercase), got {sha!r}")
    if pr is None and command != "label":
        raise LocalError(
            f"PR #{number} does not exist yet: create it with `simulate label --pr {number}`"
        )
    if pr is None:  # label of a new PR: open it, on branch pr-N with one commit
        base = repo.branch_sha(config.branch)
        if base is None:
            raise LocalError(f"{repo.path}: branch {config.branch} not found")
        branch = f"pr-{number}"
        old = repo.branch_sha(branch)
        head = (
            _check_sha(repo, sha)
            if sha
            else repo.make_commit(
                old or base,
                _app_change(repo, old or base, number, now),
                f"Change for PR #{number}",
                DEVELOPER_IDENTITY,
            )
        )
        move = (branch, head, old)
        pr = PullState(
            number=number,
            title=f"Simulated change #{number}",
            head_ref=branch,
            head_sha=head,
            base_ref=config.branch,
            base_sha=base,
            created_at=_iso(now),
            updated_at=_iso(now),
            labels=[label],
        )
    elif command == "label":
        if sha is not None:
            raise LocalError("--sha with label only applies to a new PR; use push to move the head")
        if label in pr.labels:
            raise LocalError(f"PR #{number} already carries the label `{label}`")
        pr.labels.append(label)
    elif command == "push":
        if pr.state != "open":
            raise LocalError(
                f"PR #{number} is closed: GitHub sends no synchronize for a closed "
                f"PR; `simulate reopen --pr {number}` first"
            )
        before = pr.head_sha
        if sha is not None:
            head = _check_sha(repo, sha)
            if head == pr.head_sha:
                raise LocalError(f"--sha: {sha} already is the head of PR #{number}")
        else:
            head = repo.make_commit(
                pr.head_sha,
                _app_change(repo, pr.head_sha, number, now),
                f"Another change for PR #{number}",
                DEVELOPER_IDENTITY,
            )
        move = (pr.head_ref, head, repo.branch_sha(pr.head_ref))
        pr.head_sha = head
        pr.commits += 1
    elif command == "unlabel":
        if label not in pr.labels:
            raise LocalError(f"PR #{number} does not carry the label `{label}`")
        pr.labels.remove(label)
    elif command == "close":
        if pr.state != "open":
            raise LocalError(f"PR #{number} is already closed")
        pr.state, pr.closed_at = "closed", _iso(now)
    elif command == "reopen":
        if pr.state != "closed":
            raise LocalError(f"PR #{number} is open; only a closed PR can be reopened")
        pr.state, pr.closed_at = "open", None
    pr.updated_at = _iso(now)
    pr.base_sha = repo.branch_sha(config.branch) or pr.base_sha

    action = ACTIONS[command]
    payload = build_payload(
        action,
        pr,
        full_name=config.repository,
        default_branch=config.branch,
        trigger_label=label,
        before=before,
    )
    body = json.dumps(payload, separators=(",", ":")).encode()
    if print_only:
        print(json.dumps(payload, indent=2), file=stream)
        return 0

    target = url or config.url
    print(
        f"PR #{number}: {action} (head {pr.head_sha[:8]} on {pr.head_ref}, {pr.state}, labels "
        f"{pr.labels or 'none'}) -> POST {target}",
        file=stream,
    )
    status, answer = deliver(target, config.secret, "pull_request", body)
    print(f"HTTP {status}: {answer}", file=stream)
    if not 200 <= status < 300:
        print("nothing was changed; fix the cause and run the same command again", file=stream)
        return 1
    if move is not None:
        branch, new, old = move
        if not repo.move_branch(branch, new, old):
            repo.run("update-ref", f"refs/heads/{branch}", new)  # simulate owns pr-N branches
    _write_json(layout.simulated(number), pr.to_json())
    print(f"then see {_shown(layout.pr_md(number))} and the server's log", file=stream)
    return 0


def deliver(url: str, secret: str, event: str, body: bytes) -> tuple[int, str]:
    """POST a webhook as GitHub does (headers, sha256 and legacy sha1 signatures)."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/local",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-GitHub-Hook-ID": "1",
        "X-GitHub-Hook-Installation-Target-Type": "integration",
        "X-GitHub-Hook-Installation-Target-ID": str(UNUSED_APP_ID),
        "X-Hub-Signature-256": sign(secret, body),
        "X-Hub-Signature": "sha1=" + hmac.new(secret.encode(), body, "sha1").hexdigest(),
    }
    if not url.startswith(("http://", "https://")):
        raise LocalError(f"--url: expected an http(s) URL, got {url!r}")
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
