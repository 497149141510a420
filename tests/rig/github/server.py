"""An HTTP fake of GitHub's REST API (aiohttp, in the test's event loop), driven by test methods."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
import random
import re
import secrets
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from gidgethub.aiohttp import GitHubAPI

from tests.rig.github.contract import ContractChecker, ContractStats, Violation
from tests.rig.github.gitstore import SHA_RE, GitStore, Person, TreeEntry
from tests.rig.github.routes import ROUTES, Call, GitHubError, Reply, Route, match
from tests.rig.github.shapes import Shapes
from tests.rig.github.state import (
    CI_APP,
    REACTIONS,
    CheckRun,
    Comment,
    CommitStatus,
    Delay,
    Deployment,
    DeploymentStatus,
    Fault,
    Installation,
    IssueEvent,
    Label,
    Pull,
    RandomFaults,
    RateBucket,
    Reaction,
    Recorded,
    Repo,
    Token,
    User,
)

JSON = dict[str, Any]
DEFAULT_PERMISSIONS = {
    "metadata": "read",
    "contents": "write",
    "pull_requests": "write",
    "issues": "write",
    "deployments": "write",
    "checks": "write",
    "statuses": "write",
}
RATE_DOCS = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
_LEVELS = {"read": 1, "write": 2, "admin": 3}
_BEFORE_APPLY = ("fail_next", "cut_next")  # fault kinds that answer instead of serving
_WRITES = frozenset({"POST", "PATCH", "PUT", "DELETE"})
_FAULT_MESSAGES = {
    400: "Problems parsing JSON",
    401: "Bad credentials",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    422: "Validation Failed",
    429: "You have exceeded a secondary rate limit. Please wait a few minutes before you try "
    "again.",
    500: "Server Error",
    502: "Server Error",
    503: "Service Unavailable",
    504: "We couldn't respond to your request in time. Sorry about that.",
}


class FakeGitHub:
    """GitHub's REST API for one test App, with real git objects and contract checks.

    State changes through test methods (create_repo, create_pull, push, ...) or through the
    HTTP API the bot calls; both paths share the same internals so they cannot drift apart.
    """

    def __init__(
        self,
        *,
        app_slug: str = "preview-bot",
        token_lifetime: float = 3600.0,
        contract: ContractChecker | bool = True,
        workdir: Path | None = None,
    ) -> None:
        self.app_slug = app_slug
        self.app_id = 100000 + secrets.randbelow(900000)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_key_pem: str = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode()
        self.public_key_pem: str = (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        self._public_key = key.public_key()
        self.token_lifetime = token_lifetime
        self._default_token_lifetime = token_lifetime
        # Rate-limit windows, token expiry, JWT checks and the request log's `at` read this
        # clock: a test shares one fake clock with the bot to cross an hour in no time.
        self.clock: Callable[[], float] = time.time
        self.rate_limit_per_hour = 5000
        if contract is True:
            self.contract: ContractChecker | None = ContractChecker.shared(
                (r.method, r.template) for r in ROUTES
            )
        else:
            self.contract = contract or None
        self._own_workdir = workdir is None
        self._workdir = workdir or Path(tempfile.mkdtemp(prefix="github-fake-"))
        self._ids = itertools.count(1000)
        self._runner: web.AppRunner | None = None
        self.url = ""
        self._generation = 0
        self._state_init()

    # -- lifecycle ----------------------------------------------------------------------------
    def _state_init(self) -> None:
        self.users: dict[str, User] = {}
        self.repos: dict[str, Repo] = {}
        self.installations: dict[int, Installation] = {}
        self.tokens: dict[str, Token] = {}
        self._buckets: dict[int | str, RateBucket] = {}
        self._faults: list[Fault] = []
        self._random_faults: RandomFaults | None = None
        self._asked: dict[tuple[str, str], int] = {}  # (method, path) -> times, for fail_randomly
        self._delays: list[Delay] = []
        self._check_suites: dict[tuple[int, str], int] = {}
        self.requests: list[Recorded] = []
        self.app_jwts: set[str] = set()  # distinct App JWTs accepted
        self.contract_violations: list[Violation] = []
        self.server_errors: list[str] = []
        self.unimplemented: list[str] = []
        self.app_owner = self.user("preview-bot-owner")
        self.bot = self._add_user(f"{self.app_slug}[bot]", "Bot")
        self._generation += 1
        self._git_root = self._workdir / f"state-{self._generation}"
        self._git_root.mkdir(parents=True, exist_ok=True)
        self.shapes = Shapes(
            self.url or "http://127.0.0.1",
            self.app_id,
            self.app_slug,
            self.app_owner,
            DEFAULT_PERMISSIONS,
            datetime(2024, 1, 1, tzinfo=UTC),
        )
        # Check suites of other Apps (a CI's), by (repo id, head sha, App slug).
        self._other_check_suites: dict[tuple[int, str, str], int] = {}

    def reset(self) -> None:
        """Forget every repo, token, fault and recorded request (the App key and id stay)."""
        old = self._git_root
        self.token_lifetime = self._default_token_lifetime
        self.rate_limit_per_hour = 5000
        self.clock = time.time
        self._state_init()
        shutil.rmtree(old, ignore_errors=True)

    async def start(self) -> None:
        app = web.Application(client_max_size=100 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self.shapes.api = self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._own_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)

    # -- small helpers shared with the route handlers -------------------------------------------
    def next_id(self, kind: str = "") -> int:
        """A fresh id; one counter for every kind (`kind` only documents the call site), so
        ids never repeat across kinds or resets, as a test mixing them up would not notice."""
        return next(self._ids)

    def now(self) -> datetime:
        # GitHub's timestamps have whole seconds; on the fake's clock, so a test that moves
        # the clock moves the times of labels, comments and commits with it.
        return datetime.fromtimestamp(int(self.clock()), UTC)

    @staticmethod
    def iso_epoch(epoch: float) -> str:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    @staticmethod
    def parse_time(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)

    def _add_user(self, login: str, kind: str = "User") -> User:
        user = User(login, self.next_id("user"), kind)
        self.users[login.lower()] = user
        return user

    def user(self, login: str, kind: str = "User") -> User:
        """The account called `login`, created on first use."""
        return self.users.get(login.lower()) or self._add_user(login, kind)

    def person(self, name: str, email: str, date: str | None = None) -> Person:
        return Person(name, email, self.parse_time(date) if date else self.now())

    def person_of(self, user: User) -> Person:
        return Person(user.login, f"{user.id}+{user.login}@users.noreply.github.com", self.now())

    def actor(self, call: Call) -> User:
        """Who GitHub says did it: installation tokens act as the App's bot user."""
        return self.bot

    def actor_person(self, call: Call) -> Person:
        return self.person_of(self.actor(call))

    def repo(self, owner: str, name: str) -> Repo:
        try:
            return self.repos[f"{owner}/{name}".lower()]
        except KeyError:
            raise KeyError(f"no repository {owner}/{name} in the fake") from None

    def pull(self, owner: str, name: str, number: int) -> Pull:
        return self.repo(owner, name).pulls[number]

    def permission_of(self, repo: Repo, user: User) -> str:
        if user.login.lower() in {k.lower() for k in repo.collaborators}:
            return next(v for k, v in repo.collaborators.items() if k.lower() == user.login.lower())
        if user.login.lower() == repo.owner.login.lower():
            return "admin"
        return "none" if repo.private else "read"

    def check_suite_id(self, repo: Repo, sha: str, app: str | None = None) -> int:
        """The check suite of `sha` for the test App, or for another App's `app` slug."""
        if app is not None:
            other = (repo.id, sha, app)
            if other not in self._other_check_suites:
                self._other_check_suites[other] = self.next_id("check_suite")
            return self._other_check_suites[other]
        key = (repo.id, sha)
        if key not in self._check_suites:
            self._check_suites[key] = self.next_id("check_suite")
        return self._check_suites[key]

    def commit_contexts(self, repo: Repo, sha: str) -> dict[str, str | None]:
        """Latest state per status context and check run name (what deployments verify):
        statuses as they are, check runs as their conclusion, or `pending` until completed."""
        contexts: dict[str, str | None] = {}
        for s in repo.statuses:
            if s.sha == sha:
                contexts[s.context] = s.state
        for run in sorted(repo.check_runs.values(), key=lambda r: r.id):
            if run.head_sha == sha:
                contexts[run.name] = run.conclusion if run.status == "completed" else "pending"
        return contexts

    # -- installations, tokens, rate limits ------------------------------------------------------
    def add_installation(
        self,
        account: str,
        *,
        installation_id: int | None = None,
        permissions: Mapping[str, str] | None = None,
        repositories: Iterable[str] | None = None,
        account_type: str = "User",
    ) -> Installation:
        """Install the App on `account` (all repos, or only `repositories` by name)."""
        names = None if repositories is None else {f"{account}/{n}" for n in repositories}
        inst = Installation(
            id=installation_id or self.next_id("installation"),
            account=self.user(account, account_type),
            permissions=dict(permissions or DEFAULT_PERMISSIONS),
            repository_selection="all" if names is None else "selected",
            repositories=names or set(),
            created_at=self.now(),
        )
        self.installations[inst.id] = inst
        return inst

    def installation_for(self, owner: str, name: str | None = None) -> Installation:
        for inst in self.installations.values():
            if inst.account.login.lower() == owner.lower() and (
                name is None or inst.covers(f"{owner}/{name}")
            ):
                return inst
        raise KeyError(f"the App is not installed on {owner}")

    def issue_token(
        self,
        inst: Installation,
        permissions: Mapping[str, str] | None = None,
        repositories: frozenset[str] | None = None,
    ) -> Token:
        token = Token(
            token="ghs_" + secrets.token_hex(18),
            installation_id=inst.id,
            # Whole seconds, like GitHub's expires_at.
            expires_at=float(int(self.clock() + self.token_lifetime)),
            permissions=dict(permissions or inst.permissions),
            repositories=repositories,
        )
        self.tokens[token.token] = token
        return token

    def mint_token(self, installation_id: int | None = None) -> str:
        """A valid installation token without an HTTP request (for tests that are not the bot)."""
        inst = (
            self.installations[installation_id]
            if installation_id is not None
            else next(iter(self.installations.values()))
        )
        return self.issue_token(inst).token

    def client(
        self,
        session: aiohttp.ClientSession,
        *,
        token: str | None = None,
        installation_id: int | None = None,
        cache: MutableMapping[str, Any] | None = None,
    ) -> GitHubAPI:
        """A gidgethub client for the fake, with a fresh installation token unless given one."""
        return GitHubAPI(
            session,
            "preview-bot-tests",
            oauth_token=token or self.mint_token(installation_id),
            base_url=self.url,
            cache=cache,
        )

    def expire_tokens(self, installation_id: int | None = None) -> None:
        """Make every token (of one installation) expired, as after an hour."""
        past = self.clock() - 1
        for token in self.tokens.values():
            if installation_id is None or token.installation_id == installation_id:
                token.expires_at = past

    def rate_limit(self, key: int | str, limit: int | None = None) -> RateBucket:
        """The primary rate-limit window of an installation id ("app" for JWT calls)."""
        now = int(self.clock())
        bucket = self._buckets.get(key)
        if bucket is None or now >= bucket.reset:
            bucket = RateBucket(limit or self.rate_limit_per_hour, now + 3600)
            self._buckets[key] = bucket
        return bucket

    def set_rate_limit(self, key: int | str, remaining: int, reset_in: float = 3600) -> None:
        bucket = self.rate_limit(key)
        bucket.used = bucket.limit - remaining
        bucket.reset = int(self.clock() + reset_in)

    # -- repositories and git ------------------------------------------------------------------
    def create_repo(
        self,
        owner: str,
        name: str,
        default_branch: str = "main",
        files: Mapping[str, str | bytes] | None = None,
        *,
        private: bool = False,
        install: bool = True,
        description: str | None = None,
        owner_type: str = "User",
    ) -> Repo:
        """A repository with one initial commit of `files` on `default_branch`.

        With `install` (default) the App gets installed on `owner` if it is not already.
        `owner_type` "Organization" makes webhooks carry `organization`.
        """
        full = f"{owner}/{name}"
        if full.lower() in self.repos:
            raise ValueError(f"{full} exists")
        now = self.now()
        store = GitStore(self._git_root / f"{owner}__{name}.git", default_branch)
        repo = Repo(
            id=self.next_id("repo"),
            owner=self.user(owner, owner_type),
            name=name,
            default_branch=default_branch,
            private=private,
            git=store,
            created_at=now,
            updated_at=now,
            pushed_at=now,
            description=description,
        )
        self.repos[full.lower()] = repo
        human = self.person_of(repo.owner)
        self._commit(repo, default_branch, _encode(files or {}), "Initial commit", human, human)
        if install and not any(
            i.account.login.lower() == owner.lower() for i in self.installations.values()
        ):
            self.add_installation(owner)
        return repo

    def resolve_commit(self, repo: Repo, ref: str) -> str | None:
        """A commit sha for a branch, tag, full ref, sha or abbreviated sha (None if unknown)."""
        store = repo.store
        candidates = [ref] if ref.startswith("refs/") else []
        candidates += [f"refs/heads/{ref}", f"refs/tags/{ref}", f"refs/{ref}"]
        for candidate in candidates:
            if candidate in store.refs:
                sha = store.refs[candidate]
                if store.object_type(sha) == "commit":
                    return sha
                return store.rev_parse(sha)
        if SHA_RE.match(ref):
            return ref if store.object_type(ref) == "commit" else None
        if re.fullmatch(r"[0-9a-f]{7,39}", ref):
            return store.rev_parse(ref)
        return None

    def move_ref(self, repo: Repo, ref: str, sha: str | None) -> None:
        """Set or delete a ref; open pull requests follow their head branch, as on GitHub."""
        store = repo.store
        if sha is None:
            store.delete_ref(ref)
            return
        store.set_ref(ref, sha)
        if not ref.startswith("refs/heads/"):
            return
        branch = ref.removeprefix("refs/heads/")
        now = self.now()
        repo.pushed_at = now
        for pr in repo.pulls.values():
            if pr.state == "open" and not pr.fork and pr.head_ref == branch and pr.head_sha != sha:
                pr.head_sha = sha
                pr.head_history.append(sha)
                pr.updated_at = now
                store.set_ref(f"refs/pull/{pr.number}/head", sha)

    def _commit(
        self,
        repo: Repo,
        branch: str,
        files: Mapping[str, bytes | None],
        message: str,
        author: Person,
        committer: Person,
        parent: str | None = None,
        move: bool = True,
    ) -> tuple[str, dict[str, str | None]]:
        store = repo.store
        if parent is None:
            parent = store.refs.get(f"refs/heads/{branch}")
        base = store.read_commit(parent).tree if parent else None
        changes: dict[str, TreeEntry | None] = {}
        blobs: dict[str, str | None] = {}
        for path, data in files.items():
            path = path.strip("/")
            if data is None:
                changes[path] = blobs[path] = None
            else:
                sha = store.write_blob(data)
                changes[path] = TreeEntry("100644", "blob", sha, path)
                blobs[path] = sha
        tree = store.edit_tree(base, changes)
        commit = store.commit_tree(tree, [parent] if parent else [], message, author, committer)
        if move:
            self.move_ref(repo, f"refs/heads/{branch}", commit)
        return commit, blobs

    def commit_change(
        self,
        repo: Repo,
        branch: str,
        files: Mapping[str, bytes | None],
        message: str,
        *,
        author: Person | None,
        committer: Person | None,
        parent: str,
    ) -> tuple[str, dict[str, str | None]]:
        """One commit on `branch` (the contents API): committer defaults to the App's bot."""
        committer = committer or self.person_of(self.bot)
        return self._commit(repo, branch, files, message, author or committer, committer, parent)

    def commit_as_other_actor(
        self,
        owner: str,
        name: str,
        branch: str,
        files: Mapping[str, str | bytes | None],
        message: str = "Change by someone else",
        *,
        author: str = "octocat",
    ) -> str:
        """A human pushes one commit to `branch` (created from the default branch if new)."""
        repo = self.repo(owner, name)
        person = self.person_of(self.user(author))
        parent = (
            repo.store.refs.get(f"refs/heads/{branch}")
            or repo.store.refs[f"refs/heads/{repo.default_branch}"]
        )
        sha, _ = self._commit(repo, branch, _encode(files), message, person, person, parent)
        return sha

    def branch_sha(self, owner: str, name: str, branch: str) -> str | None:
        return self.repo(owner, name).store.refs.get(f"refs/heads/{branch}")

    def checkout(self, owner: str, name: str, ref: str, dest: Path) -> Path:
        """Write the tree of `ref` (branch, tag or sha) into `dest`."""
        repo = self.repo(owner, name)
        sha = self.resolve_commit(repo, ref)
        if sha is None:
            raise KeyError(f"{ref} is not a commit in {owner}/{name}")
        return repo.store.checkout(sha, dest)

    def read_file(self, owner: str, name: str, ref: str, path: str) -> str | None:
        """The text of `path` at `ref`, or None when it does not exist."""
        repo = self.repo(owner, name)
        sha = self.resolve_commit(repo, ref)
        if sha is None:
            return None
        entry = repo.store.lookup(repo.store.read_commit(sha).tree, path)
        if entry is None or entry.type != "blob":
            return None
        return repo.store.read_blob(entry.sha).decode()

    def files(self, owner: str, name: str, ref: str) -> dict[str, str]:
        """Every file at `ref`: path -> text."""
        repo = self.repo(owner, name)
        sha = self.resolve_commit(repo, ref)
        if sha is None:
            raise KeyError(ref)
        return {
            p: d.decode() for p, d in repo.store.files(repo.store.read_commit(sha).tree).items()
        }

    def log(self, owner: str, name: str, branch: str) -> list[JSON]:
        """Commits reachable from `branch`, newest first, with the paths each one changed."""
        repo = self.repo(owner, name)
        head = self.resolve_commit(repo, branch)
        if head is None:
            return []
        result = []
        for sha in repo.store.rev_list(head):
            c = repo.store.read_commit(sha)
            result.append(
                {
                    "sha": sha,
                    "message": c.message,
                    "tree": c.tree,
                    "parents": list(c.parents),
                    "author": Shapes.person(c.author),
                    "committer": Shapes.person(c.committer),
                    "files": repo.store.changed_paths(sha),
                }
            )
        return result

    # -- pull requests -----------------------------------------------------------------------
    def create_pull(
        self,
        owner: str,
        name: str,
        number: int | None = None,
        *,
        head_branch: str | None = None,
        head_sha: str | None = None,
        base_branch: str | None = None,
        title: str | None = None,
        body: str | None = "",
        labels: Iterable[str] = (),
        draft: bool = False,
        fork: bool = False,
        user: str = "octocat",
        files: Mapping[str, str | bytes | None] | None = None,
    ) -> Pull:
        """An open pull request from `head_branch` (default `feature-<n>`).

        Without `head_sha`, a new commit (with `files`, if given) goes on the head branch,
        which starts from the base branch. With `fork`, the head lives in `<user>/<name>`
        (a metadata-only fork; its commits are stored in the base repository).
        """
        repo = self.repo(owner, name)
        if number is None:
            number = repo.next_number
        if number in repo.pulls:
            raise ValueError(f"#{number} exists")
        repo.next_number = max(repo.next_number, number + 1)
        base_branch = base_branch or repo.default_branch
        head_branch = head_branch or f"feature-{number}"
        author = self.user(user)
        person = self.person_of(author)
        store = repo.store
        base_sha = store.refs[f"refs/heads/{base_branch}"]
        head_repo = repo
        if fork:
            head_repo = self._fork(repo, author)
        if head_sha is None:
            start = base_sha if fork else store.refs.get(f"refs/heads/{head_branch}", base_sha)
            head_sha, _ = self._commit(
                repo,
                head_branch,
                _encode(files or {}),
                f"Changes for #{number}",
                person,
                person,
                start,
                move=False,
            )
        elif store.object_type(head_sha) != "commit":
            raise ValueError(f"{head_sha} is not a commit in {repo.full_name}")
        if not fork:
            self.move_ref(repo, f"refs/heads/{head_branch}", head_sha)
        store.set_ref(f"refs/pull/{number}/head", head_sha)
        now = self.now()
        pr = Pull(
            repo=repo,
            number=number,
            id=self.next_id("pull"),
            title=title or f"Pull request {number}",
            body=body,
            user=author,
            head_ref=head_branch,
            head_sha=head_sha,
            head_repo=head_repo,
            base_ref=base_branch,
            created_at=now,
            updated_at=now,
            draft=draft,
            head_history=[head_sha],
        )
        repo.pulls[number] = pr
        for label in labels:
            self.add_label(owner, name, number, label)
        return pr

    def _fork(self, repo: Repo, owner: User) -> Repo:
        full = f"{owner.login}/{repo.name}".lower()
        if full in self.repos:
            return self.repos[full]
        now = self.now()
        fork = Repo(
            id=self.next_id("repo"),
            owner=owner,
            name=repo.name,
            default_branch=repo.default_branch,
            private=repo.private,
            git=None,
            created_at=now,
            updated_at=now,
            pushed_at=now,
            parent=repo,
        )
        self.repos[full] = fork
        return fork

    def push(
        self,
        owner: str,
        name: str,
        number: int,
        files: Mapping[str, str | bytes | None] | None = None,
        message: str | None = None,
    ) -> str:
        """The PR author pushes one commit to the PR's head; returns the new head sha."""
        pr = self.pull(owner, name, number)
        repo = pr.repo
        person = self.person_of(pr.user)
        message = message or f"Update #{number}"
        if pr.fork:
            sha, _ = self._commit(
                repo,
                pr.head_ref,
                _encode(files or {}),
                message,
                person,
                person,
                pr.head_sha,
                move=False,
            )
            pr.head_sha = sha
            pr.head_history.append(sha)
            pr.updated_at = self.now()
            repo.store.set_ref(f"refs/pull/{number}/head", sha)
            return sha
        sha, _ = self._commit(
            repo, pr.head_ref, _encode(files or {}), message, person, person, pr.head_sha
        )
        return sha

    def add_label(
        self,
        owner: str,
        name: str,
        number: int,
        label: str,
        *,
        color: str = "ededed",
        description: str | None = None,
        by: str | None = None,
    ) -> None:
        """Label a PR (creating the repository label on first use, as GitHub does).

        `by` (default: the PR author) is the `labeled` event's actor and the webhook's sender.
        """
        repo = self.repo(owner, name)
        existing = next(
            (lb for lb in repo.labels.values() if lb.name.lower() == label.lower()), None
        )
        if existing is None:
            existing = Label(self.next_id("label"), label, color, description)
            repo.labels[label] = existing
        pr = repo.pulls[number]
        if existing.name not in pr.labels:
            pr.labels.append(existing.name)
            pr.updated_at = self.now()
            self.record_event(repo, number, "labeled", by or pr.user.login, label=existing)
        pr.last_label = existing.name

    def remove_label(
        self, owner: str, name: str, number: int, label: str, *, by: str | None = None
    ) -> None:
        """Unlabel a PR; `by` (default: the PR author) is the `unlabeled` event's actor."""
        pr = self.pull(owner, name, number)
        for existing in list(pr.labels):
            if existing.lower() == label.lower():
                pr.labels.remove(existing)
                pr.updated_at = self.now()
                pr.last_label = existing
                self.record_event(
                    pr.repo,
                    number,
                    "unlabeled",
                    by or pr.user.login,
                    label=pr.repo.labels[existing],
                )

    def close(
        self,
        owner: str,
        name: str,
        number: int,
        merged: bool = False,
        *,
        merged_by: str = "octocat",
        by: str | None = None,
    ) -> Pull:
        """Close a PR; `merged` also merges its head into the base branch (a merge commit).

        The `closed` event's actor is `by`, else `merged_by` for a merge, else the PR author.
        """
        pr = self.pull(owner, name, number)
        now = self.now()
        if merged:
            repo = pr.repo
            store = repo.store
            base = store.refs[f"refs/heads/{pr.base_ref}"]
            tree = store.merge_tree(base, pr.head_sha)
            if tree is None:
                raise ValueError(f"#{number} does not merge cleanly into {pr.base_ref}")
            person = self.person_of(self.user(merged_by))
            label = f"{pr.head_repo.owner.login}/{pr.head_ref}"
            merge = store.commit_tree(
                tree,
                [base, pr.head_sha],
                f"Merge pull request #{number} from {label}\n\n{pr.title}",
                person,
                person,
            )
            self.move_ref(repo, f"refs/heads/{pr.base_ref}", merge)
            pr.merged = True
            pr.merged_at = now
            pr.merged_by = self.user(merged_by)
            pr.merge_commit_sha = merge
            self.record_event(repo, number, "merged", by or merged_by, commit_id=merge)
        pr.state = "closed"
        pr.closed_at = now
        pr.updated_at = now
        closer = by or (merged_by if merged else pr.user.login)
        self.record_event(pr.repo, number, "closed", closer)
        return pr

    def reopen(self, owner: str, name: str, number: int, *, by: str | None = None) -> Pull:
        """Reopen a closed PR; `by` (default: the PR author) is the `reopened` event's actor."""
        pr = self.pull(owner, name, number)
        if pr.merged:
            raise ValueError("a merged pull request cannot be reopened")
        pr.state = "open"
        pr.closed_at = None
        pr.updated_at = self.now()
        if not pr.fork:
            branch_sha = pr.repo.store.refs.get(f"refs/heads/{pr.head_ref}")
            if branch_sha and branch_sha != pr.head_sha:
                pr.head_sha = branch_sha
                pr.head_history.append(branch_sha)
        self.record_event(pr.repo, number, "reopened", by or pr.user.login)
        return pr

    def edit_pull(
        self,
        owner: str,
        name: str,
        number: int,
        *,
        title: str | None = None,
        body: str | None = None,
        base_branch: str | None = None,
        draft: bool | None = None,
    ) -> Pull:
        """Edit a PR; what changed is kept for an `edited` webhook (`changes`)."""
        pr = self.pull(owner, name, number)
        changes: dict[str, Any] = {}
        if title is not None and title != pr.title:
            changes["title"] = {"from": pr.title}
            pr.title = title
        if body is not None and body != pr.body:
            changes["body"] = {"from": pr.body or ""}
            pr.body = body
        if base_branch is not None and base_branch != pr.base_ref:
            old_sha = pr.repo.store.refs.get(f"refs/heads/{pr.base_ref}", "")
            changes["base"] = {"ref": {"from": pr.base_ref}, "sha": {"from": old_sha}}
            pr.base_ref = base_branch
        if draft is not None:
            pr.draft = draft
        pr.changes = changes
        pr.updated_at = self.now()
        return pr

    # -- comments, permissions, deployments ------------------------------------------------------
    def add_comment(
        self,
        owner: str,
        name: str,
        number: int,
        body: str,
        *,
        user: str = "octocat",
        via_app: bool | None = None,
    ) -> Comment:
        """A comment by `user`; `via_app` (default: when `user` is the App's bot) makes it
        carry `performed_via_github_app`."""
        repo = self.repo(owner, name)
        if number not in repo.pulls:
            raise KeyError(f"#{number} is not a pull request of {repo.full_name}")
        now = self.now()
        author = self.user(user)
        app = author is self.bot if via_app is None else via_app
        comment = Comment(self.next_id("comment"), number, body, author, now, now, app)
        repo.comments[comment.id] = comment
        return comment

    def comments(self, owner: str, name: str, number: int) -> list[Comment]:
        repo = self.repo(owner, name)
        return sorted((c for c in repo.comments.values() if c.number == number), key=lambda c: c.id)

    def set_permission(self, owner: str, name: str, user: str, permission: str) -> None:
        """Make `user` a collaborator: admin, maintain, write, triage, read or none."""
        self.user(user)
        self.repo(owner, name).collaborators[user] = permission

    # -- issue events, drafts, comment edits and reactions ----------------------------------------
    def record_event(
        self,
        repo: Repo,
        number: int,
        event: str,
        actor: str,
        *,
        label: Label | None = None,
        commit_id: str | None = None,
    ) -> IssueEvent:
        """Add an entry to the issue's events (GET .../issues/{n}/events), done by `actor`
        (the App's bot means an installation token did it: performed_via_github_app)."""
        who = self.user(actor)
        entry = IssueEvent(
            id=self.next_id("issue_event"),
            number=number,
            event=event,
            actor=who,
            created_at=self.now(),
            # A copy: the event keeps the label's name and color as they were.
            label=(
                Label(label.id, label.name, label.color, label.description, label.default)
                if label is not None
                else None
            ),
            commit_id=commit_id,
            via_app=who is self.bot,
        )
        repo.issue_events.append(entry)
        return entry

    def issue_events(
        self, owner: str, name: str, number: int, event: str | None = None
    ) -> list[IssueEvent]:
        """The recorded events of issue/PR `number`, oldest first (only `event`s if given)."""
        return [
            e
            for e in self.repo(owner, name).issue_events
            if e.number == number and (event is None or e.event == event)
        ]

    def ready_for_review(
        self, owner: str, name: str, number: int, *, by: str | None = None
    ) -> Pull:
        """Mark a draft PR ready (event `ready_for_review`; `by` defaults to the PR author)."""
        pr = self.pull(owner, name, number)
        if pr.draft:
            pr.draft = False
            pr.updated_at = self.now()
            self.record_event(pr.repo, number, "ready_for_review", by or pr.user.login)
        return pr

    def convert_to_draft(
        self, owner: str, name: str, number: int, *, by: str | None = None
    ) -> Pull:
        """Make a PR a draft again (event `convert_to_draft`; `by` defaults to the PR author)."""
        pr = self.pull(owner, name, number)
        if not pr.draft:
            pr.draft = True
            pr.updated_at = self.now()
            self.record_event(pr.repo, number, "convert_to_draft", by or pr.user.login)
        return pr

    def edit_comment(self, owner: str, name: str, comment_id: int, body: str) -> Comment:
        """Its author edits a comment (kept for an `edited` webhook's changes.body.from)."""
        comment = self.repo(owner, name).comments[comment_id]
        comment.previous_body = comment.body
        comment.body = body
        comment.updated_at = self.now()
        return comment

    def react(
        self, owner: str, name: str, comment_id: int, content: str, *, user: str = "octocat"
    ) -> tuple[Reaction, bool]:
        """`user` reacts to a comment; (the reaction, True) when new, (the existing one, False)
        when that user already reacted with that content (GitHub answers 200 then, not 201)."""
        if content not in REACTIONS:
            raise ValueError(f"{content!r} is not a reaction ({', '.join(REACTIONS)})")
        comment = self.repo(owner, name).comments[comment_id]
        who = self.user(user)
        for existing in comment.reactions:
            if existing.user is who and existing.content == content:
                return existing, False
        reaction = Reaction(self.next_id("reaction"), who, content, self.now())
        comment.reactions.append(reaction)
        return reaction, True

    def reactions(self, owner: str, name: str, comment_id: int) -> list[tuple[str, str]]:
        """(login, content) of every reaction to a comment, oldest first."""
        comment = self.repo(owner, name).comments[comment_id]
        return [(r.user.login, r.content) for r in comment.reactions]

    # -- a CI: check runs and commit statuses of other Apps and users ----------------------------
    def start_check(
        self,
        owner: str,
        name: str,
        sha: str,
        check_name: str,
        *,
        app: str = CI_APP,
        status: str = "in_progress",
    ) -> CheckRun:
        """Another App (a CI, GitHub Actions by default) starts a check run on `sha`."""
        repo = self.repo(owner, name)
        if repo.store.object_type(sha) != "commit":
            raise KeyError(f"{sha} is not a commit of {repo.full_name}")
        now = self.now()
        run = CheckRun(
            id=self.next_id("check_run"),
            head_sha=sha,
            name=check_name,
            status=status,
            conclusion=None,
            started_at=now,
            completed_at=None,
            details_url=None,
            external_id=None,
            output={},
            check_suite_id=self.check_suite_id(repo, sha, app),
            created_at=now,
            app=app,
        )
        repo.check_runs[run.id] = run
        return run

    def complete_check(
        self,
        owner: str,
        name: str,
        sha: str,
        check_name: str,
        conclusion: str,
        *,
        app: str = CI_APP,
        output: Mapping[str, Any] | None = None,
    ) -> CheckRun:
        """A CI completes its check run `check_name` on `sha` (started first if it was not)."""
        repo = self.repo(owner, name)
        run = next(
            (
                r
                for r in sorted(repo.check_runs.values(), key=lambda r: r.id, reverse=True)
                if r.head_sha == sha
                and r.name == check_name
                and r.app == app
                and r.status != "completed"
            ),
            None,
        ) or self.start_check(owner, name, sha, check_name, app=app)
        run.status = "completed"
        run.conclusion = conclusion
        run.completed_at = self.now()
        if output is not None:
            run.output = dict(output)
        return run

    def set_status(
        self,
        owner: str,
        name: str,
        sha: str,
        context: str,
        state: str,
        *,
        user: str = "ci-bot",
        target_url: str | None = None,
        description: str | None = None,
    ) -> CommitStatus:
        """`user` (a CI) sets the commit status `context` of `sha` to `state`
        (error, failure, pending or success)."""
        repo = self.repo(owner, name)
        if repo.store.object_type(sha) != "commit":
            raise KeyError(f"{sha} is not a commit of {repo.full_name}")
        if state not in ("error", "failure", "pending", "success"):
            raise ValueError(f"{state!r} is not a commit status state")
        now = self.now()
        status = CommitStatus(
            id=self.next_id("status"),
            sha=sha,
            state=state,
            target_url=target_url,
            description=description,
            context=context,
            creator=self.user(user),
            created_at=now,
            updated_at=now,
        )
        repo.statuses.append(status)
        return status

    # -- installations: what they cover, uninstalling -------------------------------------------
    def installation_repos(self, inst: Installation) -> list[Repo]:
        """The repositories `inst` covers (its selection), oldest first."""
        return [r for r in self.repos.values() if inst.covers(r.full_name)]

    def uninstall(self, installation_id: int) -> Installation:
        """Remove an installation (its tokens stop working); returns it for a `deleted` hook."""
        inst = self.installations.pop(installation_id)
        for key, token in list(self.tokens.items()):
            if token.installation_id == installation_id:
                del self.tokens[key]
        return inst

    def add_installation_repos(self, installation_id: int, names: Iterable[str]) -> list[Repo]:
        """Add repositories (by name) to a `selected` installation; returns those newly added."""
        inst = self.installations[installation_id]
        added = []
        for n in names:
            repo = self.repo(inst.account.login, n)
            if not inst.covers(repo.full_name):
                inst.repositories.add(repo.full_name)
                added.append(repo)
        return added

    def remove_installation_repos(self, installation_id: int, names: Iterable[str]) -> list[Repo]:
        """Take repositories (by name) from an installation; one that covered `all` becomes
        `selected` with the rest, as on GitHub. Returns those actually removed."""
        inst = self.installations[installation_id]
        wanted = {self.repo(inst.account.login, n).full_name.lower() for n in names}
        covered = self.installation_repos(inst)
        removed = [r for r in covered if r.full_name.lower() in wanted]
        if removed:
            gone = {r.id for r in removed}
            inst.repository_selection = "selected"
            inst.repositories = {r.full_name for r in covered if r.id not in gone}
        return removed

    def deployments(
        self, owner: str, name: str, environment: str | None = None
    ) -> list[Deployment]:
        repo = self.repo(owner, name)
        return [
            d
            for d in sorted(repo.deployments.values(), key=lambda d: d.id)
            if environment is None or d.environment == environment
        ]

    def add_deployment(
        self,
        owner: str,
        name: str,
        ref: str,
        environment: str,
        *,
        user: str = "octocat",
        state: str | None = None,
    ) -> Deployment:
        """Someone other than the App (a person, another tool) deploys `ref` to `environment`:
        no bot marker in the payload; with `state`, its first status too."""
        repo = self.repo(owner, name)
        sha = self.resolve_commit(repo, ref)
        if sha is None:
            raise KeyError(f"{ref} is not a commit in {owner}/{name}")
        creator = self.user(user)
        deployment = self.store_deployment(
            repo, sha, ref, environment, creator, description="deployed by hand"
        )
        if state is not None:
            self.add_deployment_status(repo, deployment, state, creator=creator)
        return deployment

    def store_deployment(
        self,
        repo: Repo,
        sha: str,
        ref: str,
        environment: str,
        creator: User,
        *,
        task: str = "deploy",
        payload: Any = None,
        description: str = "",
        transient: bool = False,
        production: bool = False,
        via_app: bool = False,
    ) -> Deployment:
        """A new deployment in `repo`, created now: what POST /deployments and a hand-made
        one (add_deployment) both store."""
        now = self.now()
        deployment = Deployment(
            id=self.next_id("deployment"),
            sha=sha,
            ref=ref,
            task=task,
            payload={} if payload is None else payload,
            environment=environment,
            original_environment=environment,
            description=description,
            creator=creator,
            created_at=now,
            updated_at=now,
            transient_environment=transient,
            production_environment=production,
            via_app=via_app,
        )
        repo.deployments[deployment.id] = deployment
        return deployment

    def add_deployment_status(
        self,
        repo: Repo,
        d: Deployment,
        state: str,
        *,
        creator: User,
        via_app: bool = False,
        description: str = "",
        environment: str | None = None,
        target_url: str | None = None,
        log_url: str | None = None,
        environment_url: str | None = None,
        auto_inactive: bool = True,
    ) -> DeploymentStatus:
        """A deployment status with GitHub's side effects.

        `log_url` replaces `target_url` (setting one sets both); `environment` moves the
        deployment; a `success` with `auto_inactive` (the default) adds an `inactive` status to
        every earlier deployment of the same environment whose latest state is `success`,
        unless that deployment is transient or production.
        """
        now = self.now()
        if environment:
            d.environment = environment
        url = log_url or target_url or ""
        status = DeploymentStatus(
            id=self.next_id("deployment_status"),
            state=state,
            description=description,
            environment=d.environment,
            target_url=url,
            log_url=url,
            environment_url=environment_url or "",
            creator=creator,
            created_at=now,
            updated_at=now,
            via_app=via_app,
        )
        d.statuses.append(status)
        d.updated_at = now
        if state == "success" and auto_inactive:
            for other in repo.deployments.values():
                if (
                    other.id < d.id
                    and other.environment == d.environment
                    and not other.transient_environment
                    and not other.production_environment
                    and other.latest_state == "success"
                ):
                    other.statuses.append(
                        DeploymentStatus(
                            id=self.next_id("deployment_status"),
                            state="inactive",
                            description="",
                            environment=other.environment,
                            target_url="",
                            log_url="",
                            environment_url="",
                            creator=creator,
                            created_at=now,
                            updated_at=now,
                            via_app=via_app,
                        )
                    )
                    other.updated_at = now
        return status

    # -- faults, delays, the request log --------------------------------------------------------
    def fail_next(
        self,
        method: str | None,
        path_regex: str,
        status: int,
        count: int = 1,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> None:
        """Answer the next `count` matching requests with `status` instead of serving them.

        `method` None or "*" matches any method; `path_regex` is searched in the path
        (canonical `/repos/{owner}/{repo}/...` form or as sent). `body` defaults to GitHub's
        error shape; bytes/str bodies are sent as they are (e.g. an HTML 502).
        """
        if body is None:
            body = {
                "message": _FAULT_MESSAGES.get(status, "Error"),
                "documentation_url": "https://docs.github.com/rest",
                "status": str(status),
            }
        self._faults.append(
            Fault(
                _method(method),
                re.compile(path_regex),
                status,
                count,
                {k.lower(): v for k, v in (headers or {}).items()},
                body,
            )
        )

    def fail_rate_limited(
        self, method: str | None, path_regex: str, count: int = 1, reset_in: float = 60
    ) -> None:
        """Primary rate limit: 403 with x-ratelimit-remaining 0 (gidgethub: RateLimitExceeded)."""
        reset = int(self.clock() + reset_in)
        self.fail_next(
            method,
            path_regex,
            403,
            count,
            headers={
                "x-ratelimit-limit": str(self.rate_limit_per_hour),
                "x-ratelimit-remaining": "0",
                "x-ratelimit-used": str(self.rate_limit_per_hour),
                "x-ratelimit-reset": str(reset),
                "x-ratelimit-resource": "core",
            },
            body={
                "message": "API rate limit exceeded for installation.",
                "documentation_url": RATE_DOCS,
                "status": "403",
            },
        )

    def fail_secondary_rate_limit(
        self,
        method: str | None,
        path_regex: str,
        count: int = 1,
        retry_after: int = 60,
        status: int = 403,
    ) -> None:
        """Secondary rate limit: 403 or 429 with retry-after and requests still remaining."""
        self.fail_next(
            method,
            path_regex,
            status,
            count,
            headers={"retry-after": str(retry_after)},
            body={
                "message": "You have exceeded a secondary rate limit. Please wait a "
                "few minutes before you try again.",
                "documentation_url": RATE_DOCS + "#about-secondary-rate-limits",
                "status": str(status),
            },
        )

    def fail_randomly(
        self,
        rate: float,
        seed: int,
        *,
        statuses: Iterable[int] = (500, 502, 503, 504),
        after_apply: float = 0.0,
        method: str | None = None,
        path_regex: str = ".",
    ) -> None:
        """From now on answer about `rate` of the matching requests with one of `statuses`,
        until `stop_failing_randomly()`.

        Which requests fail is decided by the seed, the method, the path and how many times
        that method and path were asked before, not by the order requests arrive in: a seed
        fails the same requests whatever the interleaving of the client's tasks. Of the failed
        writes (POST, PATCH, PUT, DELETE), a share `after_apply` is served first and only its
        answer replaced (GitHub applied it, the client never learns); the rest are not served.
        Recorded with injected `fail_randomly` or `fail_randomly_after_apply`.
        """
        if not 0.0 <= rate <= 1.0 or not 0.0 <= after_apply <= 1.0:
            raise ValueError(
                f"rate and after_apply are shares in [0, 1], not {rate}, {after_apply}"
            )
        chosen = tuple(statuses)
        if not chosen or any(not 500 <= s <= 599 for s in chosen):
            raise ValueError(f"statuses must be 5xx, not {chosen}")
        self._random_faults = RandomFaults(
            rate, seed, chosen, after_apply, _method(method), re.compile(path_regex)
        )

    def stop_failing_randomly(self) -> None:
        """End fail_randomly: every request is served again."""
        self._random_faults = None

    def _random_fault(self, call: Call) -> tuple[int, bool] | None:
        """(status, after apply) when fail_randomly fails this request, else None."""
        chaos = self._random_faults
        if chaos is None or not _matches(
            chaos.method, chaos.pattern, call.method, call.path, call.raw_path
        ):
            return None
        key = (call.method, call.raw_path)
        nth = self._asked.get(key, 0)
        self._asked[key] = nth + 1
        # A string seed is hashed with SHA-512: the same draw in every process and run.
        draw = random.Random(f"{chaos.seed}:{call.method}:{call.raw_path}:{nth}")
        if draw.random() >= chaos.rate:
            return None
        status = draw.choice(chaos.statuses)
        return status, call.method in _WRITES and draw.random() < chaos.after_apply

    def delay_next(
        self, method: str | None, path_regex: str, seconds: float, count: int = 1
    ) -> None:
        """Hold the next `count` matching requests for `seconds` before serving them."""
        self._delays.append(Delay(_method(method), re.compile(path_regex), seconds, count))

    def fail_after_apply(
        self,
        method: str | None,
        path_regex: str,
        status: int = 502,
        count: int = 1,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> None:
        """Serve the next `count` matching requests (state changes), then answer `status`
        instead of the real answer: a write GitHub applied whose response was lost.

        Only requests the fake serves successfully use it up (an error answer stays as it
        is). The real answer is still contract-checked and costs its rate limit.
        """
        self._faults.append(
            Fault(
                _method(method),
                re.compile(path_regex),
                status,
                count,
                {k.lower(): v for k, v in (headers or {}).items()},
                _error_body(status) if body is None else body,
                kind="fail_after_apply",
            )
        )

    def cut_after_apply(self, method: str | None, path_regex: str, count: int = 1) -> None:
        """Serve the next `count` matching requests (state changes), then close the connection
        without an answer (aiohttp clients raise ServerDisconnectedError). Like
        fail_after_apply, only successful requests use it up."""
        self._faults.append(
            Fault(
                _method(method), re.compile(path_regex), 0, count, {}, None, kind="cut_after_apply"
            )
        )

    def cut_next(self, method: str | None, path_regex: str, count: int = 1) -> None:
        """Close the connection of the next `count` matching requests without serving them."""
        self._faults.append(
            Fault(_method(method), re.compile(path_regex), 0, count, {}, None, kind="cut_next")
        )

    def count(
        self,
        method: str | None = None,
        path_regex: str | None = None,
        *,
        include_tokens: bool | None = None,
        status: int | None = None,
        injected: bool | None = None,
    ) -> int:
        """How many requests matched; token requests count only when asked for (or when
        `path_regex` is given, since it then selects them explicitly). `injected` True counts
        only requests a fault answered (or cut), False only the others."""
        with_tokens = include_tokens if include_tokens is not None else path_regex is not None
        pattern = re.compile(path_regex) if path_regex else None
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method.upper())
            and (pattern is None or pattern.search(r.path) or pattern.search(r.raw_path))
            and (with_tokens or not r.token_request)
            and (status is None or r.status == status)
            and (injected is None or (r.injected is not None) == injected)
        )

    @property
    def token_requests(self) -> int:
        return sum(1 for r in self.requests if r.token_request)

    def reset_counts(self) -> None:
        self.requests.clear()

    @property
    def contract_stats(self) -> ContractStats | None:
        return self.contract.stats if self.contract else None

    def take_violations(self) -> list[Violation]:
        """Return and forget the contract violations so far (for tests that expect some)."""
        found = list(self.contract_violations)
        self.contract_violations.clear()
        return found

    def problems(self) -> list[str]:
        """Everything that should fail the test: violations, fake crashes, unknown endpoints."""
        found = [str(v) for v in self.contract_violations]
        found += [f"[fake crashed] {e}" for e in self.server_errors]
        found += [f"[not implemented by the fake] {u}" for u in self.unimplemented]
        return found

    # -- webhooks ------------------------------------------------------------------------------
    def event_payload(
        self, event: str, action: str, owner: str, name: str, number: int, **extra: Any
    ) -> JSON:
        """A webhook payload from the current state, checked against GitHub's schema.

        See tests.rig.github.webhooks.event_payload for the `extra` keywords.
        """
        from tests.rig.github.webhooks import event_payload

        return event_payload(self, event, action, owner, name, number, **extra)

    def check_run_payload(
        self, owner: str, name: str, check_run_id: int, action: str = "completed", **extra: Any
    ) -> JSON:
        """A `check_run` webhook payload (see tests.rig.github.webhooks.check_run_payload)."""
        from tests.rig.github.webhooks import check_run_payload

        return check_run_payload(self, owner, name, check_run_id, action, **extra)

    def check_suite_payload(
        self,
        owner: str,
        name: str,
        sha: str,
        action: str = "completed",
        *,
        app: str | None = CI_APP,
        **extra: Any,
    ) -> JSON:
        """A `check_suite` webhook payload for `app`'s runs on `sha` (None: the test App)."""
        from tests.rig.github.webhooks import check_suite_payload

        return check_suite_payload(self, owner, name, sha, action, app=app, **extra)

    def status_payload(self, owner: str, name: str, status_id: int, **extra: Any) -> JSON:
        """A `status` webhook payload for a commit status (see set_status)."""
        from tests.rig.github.webhooks import status_payload

        return status_payload(self, owner, name, status_id, **extra)

    def installation_payload(
        self, action: str, installation: Installation | int, **extra: Any
    ) -> JSON:
        """An `installation` webhook payload (created, deleted, ...); a deleted installation
        is given as the object uninstall() returned."""
        from tests.rig.github.webhooks import installation_payload

        inst = self.installations[installation] if isinstance(installation, int) else installation
        return installation_payload(self, action, inst, **extra)

    def installation_repositories_payload(
        self,
        action: str,
        installation: Installation | int,
        repositories: Iterable[Repo | str],
        **extra: Any,
    ) -> JSON:
        """An `installation_repositories` payload: `repositories` (Repo objects or names of
        the account's repositories) were `added` or `removed`."""
        from tests.rig.github.webhooks import installation_repositories_payload

        inst = self.installations[installation] if isinstance(installation, int) else installation
        repos = [
            r if isinstance(r, Repo) else self.repo(inst.account.login, r) for r in repositories
        ]
        return installation_repositories_payload(self, action, inst, repos, **extra)

    # -- HTTP ----------------------------------------------------------------------------------
    def paginate(
        self, call: Call, items: list[Any], *, key: str | None = None, extra: JSON | None = None
    ) -> Reply:
        q = call.query
        try:
            per_page = min(max(int(q.get("per_page", "30")), 1), 100)
            page = max(int(q.get("page", "1")), 1)
        except ValueError:
            per_page, page = 30, 1
        chunk = items[(page - 1) * per_page : page * per_page]
        last = max(1, math.ceil(len(items) / per_page))
        path = call.path
        if call.repo_ is not None and call.route.startswith("/repos/{owner}/{repo}"):
            # GitHub's Link URLs address repositories by id, not by name.
            rest = path.split("/", 4)[4] if path.count("/") >= 4 else ""
            path = f"/repositories/{call.repo_.id}" + (f"/{rest}" if rest else "")
        base = f"{self.url}{quote(path)}"
        params = [(k, v) for k, v in q.items() if k != "page"]

        def link(p: int, rel: str) -> str:
            return f'<{base}?{urlencode([*params, ("page", str(p))])}>; rel="{rel}"'

        links = []
        if page > 1:
            links.append(link(page - 1, "prev"))
        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        if page > 1:
            links.append(link(1, "first"))
        body: Any = chunk if key is None else {**(extra or {}), key: chunk}
        reply = Reply(body=body)
        if links:
            reply.headers["Link"] = ", ".join(links)
        return reply

    def _canonical(self, path: str) -> str:
        m = re.match(r"^/repositories/(\d+)(/.*)?$", path)
        if m:
            repo_id = int(m.group(1))
            for repo in self.repos.values():
                if repo.id == repo_id:
                    return f"/repos/{repo.full_name}{m.group(2) or ''}"
        return path

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        arrived = self.clock()
        method = request.method.upper()
        raw_path = request.path
        path = self._canonical(raw_path)
        body = await request.read()
        for delay in self._delays:
            if delay.count > 0 and _matches(delay.method, delay.pattern, method, path, raw_path):
                delay.count -= 1
                await asyncio.sleep(delay.seconds)
                break
        headers = {k.lower(): v for k, v in request.headers.items()}
        found = match(method, path)
        call: Call | None = None
        route: Route | None = None
        injected = False
        if not isinstance(found, tuple):
            self.unimplemented.append(f"{method} {raw_path}")
            reply = self._error_reply(GitHubError(404, "Not Found"), None)
        else:
            route, params = found
            call = Call(
                self,
                method,
                route.template,
                path,
                params,
                request.query,
                headers,
                body,
                raw_path=raw_path,
            )
            try:
                reply, injected = self._serve(call, route)
            except GitHubError as exc:
                reply = self._error_reply(exc, route)
            except Exception:  # a bug in the fake must fail the test, not hang the bot
                self.server_errors.append(f"{method} {raw_path}: {traceback.format_exc()}")
                reply = self._error_reply(GitHubError(500, "Server Error"), route)
        status, out_headers, payload = self._finish(call, route, reply, injected)
        if call is not None and route is not None:
            self._check_response(call, route, status, out_headers, payload, reply, injected)
        cut = call is not None and call.injected in ("cut_next", "cut_after_apply")
        if cut:
            status = 0  # the client gets no answer at all
        now = self.clock()
        pause = None if cut else _announced_pause(status, out_headers, now)
        self.requests.append(
            Recorded(
                method=method,
                path=path,
                status=status,
                installation=call.installation.id if call and call.installation else None,
                route=route.template if route else None,
                query=request.query_string,
                raw_path=raw_path,
                token_request=bool(route and route.token_request),
                injected=call.injected if call is not None else None,
                duration=time.perf_counter() - started,
                at=now,
                arrived=arrived,
                pause_until=pause[0] if pause else None,
                pause_scope=pause[1] if pause else None,
            )
        )
        if cut:
            # Close the TCP connection with no response: the client sees a disconnect.
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=502)  # never written to the closed transport
        if status in (204, 304):
            out_headers.pop("Content-Type", None)
            return web.Response(status=status, headers=out_headers)
        return web.Response(status=status, body=payload, headers=out_headers)

    def _serve(self, call: Call, route: Route) -> tuple[Reply, bool]:
        auth_error: GitHubError | None = None
        try:
            self._authenticate(call, route)
        except GitHubError as exc:
            auth_error = exc
        for fault in self._faults:
            if (
                fault.count > 0
                and fault.kind in _BEFORE_APPLY
                and _matches(fault.method, fault.pattern, call.method, call.path, call.raw_path)
            ):
                fault.count -= 1
                call.injected = fault.kind
                # An injected answer: serve nothing, but the request itself is still checked.
                self._check_request(call, route)
                if fault.kind == "cut_next":
                    return Reply(502), True  # never sent: _handle closes the connection
                if isinstance(fault.body, bytes | str):
                    raw = fault.body.encode() if isinstance(fault.body, str) else fault.body
                    kind = (
                        "text/html; charset=utf-8"
                        if raw.lstrip().startswith(b"<")
                        else "text/plain; charset=utf-8"
                    )
                    return Reply(fault.status, None, dict(fault.headers), kind, raw), True
                return Reply(fault.status, fault.body, dict(fault.headers)), True
        if auth_error is not None:
            raise auth_error
        random_fault = self._random_fault(call)
        if random_fault is not None and not random_fault[1]:
            call.injected = "fail_randomly"
            self._check_request(call, route)
            return Reply(random_fault[0], _error_body(random_fault[0])), True
        problems = self._check_request(call, route)
        bucket = call.bucket
        if bucket is not None and bucket.remaining == 0 and self.clock() < bucket.reset:
            who = f"installation ID {call.installation.id}" if call.installation else "this App"
            call.rate_limited = True
            raise GitHubError(403, f"API rate limit exceeded for {who}.")
        if problems:
            # GitHub rejects bodies that break its schema with 422 "Invalid request".
            raise GitHubError(422, "Invalid request.\n\n" + problems[0])
        self._authorize(call, route)
        reply = route.handler(call)
        if random_fault is not None and reply.status < 400:
            # Applied, then the answer is lost (the real one is still contract-checked).
            call.injected = "fail_randomly_after_apply"
            status, headers, payload = self._finish(call, route, reply, False)
            self._check_response(call, route, status, headers, payload, reply, False)
            return Reply(random_fault[0], _error_body(random_fault[0])), True
        return self._lose_answer(call, route, reply)

    def _lose_answer(self, call: Call, route: Route, reply: Reply) -> tuple[Reply, bool]:
        """After a request was served: a fail_after_apply / cut_after_apply fault replaces
        its answer (the real one is still contract-checked and costs its rate limit)."""
        for fault in self._faults:
            if (
                fault.count > 0
                and fault.kind not in _BEFORE_APPLY
                and _matches(fault.method, fault.pattern, call.method, call.path, call.raw_path)
            ):
                fault.count -= 1
                call.injected = fault.kind
                status, headers, payload = self._finish(call, route, reply, False)
                self._check_response(call, route, status, headers, payload, reply, False)
                if fault.kind == "cut_after_apply":
                    return reply, True  # never sent: _handle closes the connection
                if isinstance(fault.body, bytes | str):
                    raw = fault.body.encode() if isinstance(fault.body, str) else fault.body
                    kind = (
                        "text/html; charset=utf-8"
                        if raw.lstrip().startswith(b"<")
                        else "text/plain; charset=utf-8"
                    )
                    return Reply(fault.status, None, dict(fault.headers), kind, raw), True
                return Reply(fault.status, fault.body, dict(fault.headers)), True
        return reply, False

    def _authenticate(self, call: Call, route: Route) -> None:
        # Failed and anonymous calls count against GitHub's unauthenticated limit (60/h).
        call.bucket = self.rate_limit("anonymous", limit=60)
        scheme, _, credential = call.headers.get("authorization", "").partition(" ")
        scheme = scheme.lower()
        credential = credential.strip()
        if route.auth == "jwt":
            if scheme != "bearer" or not credential:
                raise GitHubError(401, "A JSON web token could not be decoded")
            self._verify_jwt(credential)
            call.bucket = self.rate_limit("app")
            if route.template.startswith("/repos/{owner}/{repo}"):
                call.repo_ = self.repos.get(f"{call.params['owner']}/{call.params['repo']}".lower())
            return
        if scheme not in ("token", "bearer") or not credential:
            raise GitHubError(401, "Requires authentication")
        token = self.tokens.get(credential)
        if token is None or token.expires_at <= self.clock():
            raise GitHubError(401, "Bad credentials")
        inst = self.installations.get(token.installation_id)
        if inst is None:
            raise GitHubError(401, "Bad credentials")
        call.token = token
        call.installation = inst
        call.bucket = self.rate_limit(inst.id)

    def _authorize(self, call: Call, route: Route) -> None:
        """Installation tokens see only covered repositories and need the right permission."""
        if route.auth == "jwt" or call.token is None:
            return
        if route.template.startswith("/repos/{owner}/{repo}"):
            full = f"{call.params['owner']}/{call.params['repo']}".lower()
            repo = self.repos.get(full)
            assert call.installation is not None
            if (
                repo is None
                or not call.installation.covers(repo.full_name)
                or (call.token.repositories is not None and full not in call.token.repositories)
            ):
                raise GitHubError(404, "Not Found")
            call.repo_ = repo
        if route.permission and route.permission != ("metadata",):
            needed = 1 if call.method == "GET" else 2
            if not any(
                _LEVELS.get(call.token.permissions.get(p, ""), 0) >= needed
                for p in route.permission
            ):
                raise GitHubError(403, "Resource not accessible by integration")

    def _verify_jwt(self, token: str) -> None:
        try:
            # Times are checked below against the fake's clock, which a test may move.
            claims = jwt.decode(
                token,
                self._public_key,
                algorithms=["RS256"],
                options={
                    "require": ["iat", "exp", "iss"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidTokenError:
            raise GitHubError(401, "A JSON web token could not be decoded") from None
        now = self.clock()
        if int(claims["exp"]) <= now:
            raise GitHubError(
                401,
                "'Expiration time' claim ('exp') must be a numeric value "
                "representing the future time at which the assertion "
                "expires",
            )
        if int(claims["iat"]) > now:
            raise GitHubError(
                401,
                "'Issued at' claim ('iat') must be an Integer representing "
                "the time that the assertion was issued",
            )
        if str(claims["iss"]) != str(self.app_id):
            raise GitHubError(
                401, "'Issuer' claim ('iss') must be an Integer or a String representing this App"
            )
        if int(claims["exp"]) - int(claims["iat"]) > 600 or int(claims["exp"]) > now + 600:
            raise GitHubError(401, "'Expiration time' claim ('exp') is too far in the future")
        self.app_jwts.add(token)

    def _error_reply(self, exc: GitHubError, route: Route | None) -> Reply:
        doc = "https://docs.github.com/rest"
        if route is not None and self.contract is not None:
            doc = self.contract.doc_url(route.method, route.template)
        body: JSON = {"message": exc.message, "documentation_url": doc, "status": str(exc.status)}
        if exc.errors is not None:
            body["errors"] = exc.errors
        return Reply(exc.status, body, dict(exc.headers))

    def _finish(
        self, call: Call | None, route: Route | None, reply: Reply, injected: bool
    ) -> tuple[int, dict[str, str], bytes]:
        status = reply.status
        if reply.raw is not None:
            payload = reply.raw
        elif reply.body is None:
            payload = b""
        else:
            payload = json.dumps(reply.body, separators=(",", ":")).encode()
        headers: dict[str, str] = {
            "Content-Type": reply.content_type,
            "X-GitHub-Media-Type": "github.v3; format=json",
            "X-GitHub-Request-Id": f"FAKE:{secrets.token_hex(4).upper()}",
            "X-GitHub-Api-Version-Selected": "2022-11-28",
            "Cache-Control": "private, max-age=60, s-maxage=60",
            "Vary": "Accept, Authorization, Cookie, X-GitHub-OTP",
        }
        rate_limited = call is not None and call.rate_limited
        bucket = call.bucket if call is not None else None
        if bucket is not None and status < 500 and not injected:
            if call is not None and status == 200 and call.method == "GET" and payload:
                etag = '"' + hashlib.sha256(payload).hexdigest()[:40] + '"'
                headers["ETag"] = etag
                wanted = [t.strip() for t in call.headers.get("if-none-match", "").split(",")]
                if etag in wanted or "*" in wanted:
                    # A conditional hit: 304, no body, and (as on GitHub) no rate-limit cost.
                    status, payload = 304, b""
            if status != 304 and not rate_limited:
                bucket.used += 1
        if bucket is not None:
            headers.update(
                {
                    "X-RateLimit-Limit": str(bucket.limit),
                    "X-RateLimit-Remaining": str(bucket.remaining),
                    "X-RateLimit-Reset": str(bucket.reset),
                    "X-RateLimit-Used": str(bucket.used),
                    "X-RateLimit-Resource": "core",
                }
            )
        # Fault headers (and handler headers such as Location/Link) win over the defaults.
        lowered = {k.lower(): k for k in headers}
        for key, value in reply.headers.items():
            headers.pop(lowered.get(key.lower(), key), None)
            headers[key] = value
        return status, headers, payload

    # -- contract ------------------------------------------------------------------------------
    def _check_request(self, call: Call, route: Route) -> list[str]:
        if self.contract is None:
            return []
        problems = self.contract.check_request(
            call.method,
            route.template,
            call.params,
            call.query,
            call.headers,
            call.body,
            call.headers.get("content-type", ""),
        )
        for problem in problems:
            self.contract_violations.append(
                Violation("request", call.method, call.raw_path, route.template, None, problem)
            )
        return problems

    def _check_response(
        self,
        call: Call,
        route: Route,
        status: int,
        headers: Mapping[str, str],
        payload: bytes,
        reply: Reply,
        injected: bool,
    ) -> None:
        if self.contract is None:
            return
        if injected:
            self.contract.skip("injected fault")
            return
        if status == 304:
            self.contract.skip("304 not modified")
            return
        if reply.raw is not None:
            self.contract.skip("raw media type")
            return
        content_type = headers.get("Content-Type", "") if payload else ""
        problems = self.contract.check_response(
            call.method, route.template, call.params, status, headers, payload, content_type
        )
        for problem in problems or []:
            self.contract_violations.append(
                Violation("response", call.method, call.raw_path, route.template, status, problem)
            )


def _announced_pause(
    status: int, headers: Mapping[str, str], now: float
) -> tuple[float, str] | None:
    """The rate-limit window an answer announces: (until, Recorded.pause_scope), or None."""
    lowered = {k.lower(): v for k, v in headers.items()}
    if status in (403, 429) and "retry-after" in lowered:
        return now + float(lowered["retry-after"]), "app"
    if lowered.get("x-ratelimit-remaining") == "0" and "x-ratelimit-reset" in lowered:
        return float(lowered["x-ratelimit-reset"]), "installation"
    return None


def _error_body(status: int) -> JSON:
    return {
        "message": _FAULT_MESSAGES.get(status, "Error"),
        "documentation_url": "https://docs.github.com/rest",
        "status": str(status),
    }


def _method(method: str | None) -> str | None:
    return None if method in (None, "*") else str(method).upper()


def _matches(
    method: str | None, pattern: re.Pattern[str], actual_method: str, path: str, raw_path: str
) -> bool:
    return (method is None or method == actual_method) and bool(
        pattern.search(path) or pattern.search(raw_path)
    )


def _encode(files: Mapping[str, str | bytes | None]) -> dict[str, bytes | None]:
    return {p: (d.encode() if isinstance(d, str) else d) for p, d in files.items()}
