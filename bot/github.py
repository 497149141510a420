"""The GitHub adapter: App auth with cached installation tokens, and the few calls a sync makes.

gidgethub does the HTTP (pagination, ETag caching, error types); this module adds what it leaves
to its users: one installation token per installation until shortly before it expires, one ETag
cache per installation (a 304 costs no rate limit; sharing a cache across installations would
leak one installation's data to another), request counting, and the split of GitHub's errors into
temporary (retry later) and permanent ones.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Mapping, MutableMapping
from datetime import datetime
from typing import Any

import aiohttp
from cachetools import LRUCache
from gidgethub import BadRequest, GitHubBroken, RateLimitExceeded
from gidgethub import apps as gh_apps
from gidgethub.aiohttp import GitHubAPI

from bot.config import Settings
from bot.errors import Conflict, PermanentError, TemporaryError
from bot.metrics import Metrics
from bot.model import CheckReport, DeploymentStatus, IssueComment, LabelEvent, PullRequest
from bot.parse import comment_from_api, pull_from_api
from bot.ports import RepoInfo

log = logging.getLogger(__name__)

USER_AGENT = "preview-bot"
TOKEN_MARGIN = 300  # seconds before expires_at at which a token is renewed

# The REST calls the bot makes, (method, route): the App manifest's permissions are checked
# against this table by a test, so app.yaml asks for exactly what the code needs.
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("POST", "/app/installations/{installation_id}/access_tokens", "app"),
    ("GET", "/repos/{owner}/{repo}/pulls/{pull_number}", "pull_requests:read"),
    ("GET", "/repos/{owner}/{repo}/issues/{issue_number}/comments", "pull_requests:read"),
    ("POST", "/repos/{owner}/{repo}/issues/{issue_number}/comments", "pull_requests:write"),
    ("PATCH", "/repos/{owner}/{repo}/issues/comments/{comment_id}", "pull_requests:write"),
    ("GET", "/repos/{owner}/{repo}/contents/{path}", "contents:read"),
    ("PUT", "/repos/{owner}/{repo}/contents/{path}", "contents:write"),
    ("DELETE", "/repos/{owner}/{repo}/contents/{path}", "contents:write"),
    ("GET", "/repos/{owner}/{repo}/deployments", "deployments:read"),
    ("POST", "/repos/{owner}/{repo}/deployments", "deployments:write"),
    ("GET", "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses", "deployments:read"),
    ("POST", "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses", "deployments:write"),
    ("GET", "/app", "app"),
    ("GET", "/app/installations", "app"),
    ("GET", "/installation/repositories", "metadata:read"),
    ("GET", "/repos/{owner}/{repo}/pulls", "pull_requests:read"),
    ("GET", "/repos/{owner}/{repo}/collaborators/{username}/permission", "metadata:read"),
    ("GET", "/repos/{owner}/{repo}/issues/{issue_number}/events", "pull_requests:read"),
    ("POST", "/repos/{owner}/{repo}/issues/{issue_number}/labels", "pull_requests:write"),
    ("DELETE", "/repos/{owner}/{repo}/issues/{issue_number}/labels/{name}", "pull_requests:write"),
    ("POST", "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions", "pull_requests:write"),
    ("GET", "/repos/{owner}/{repo}/commits/{ref}/check-runs", "checks:read"),
    ("GET", "/repos/{owner}/{repo}/commits/{ref}/status", "statuses:read"),
    ("POST", "/repos/{owner}/{repo}/check-runs", "checks:write"),
    ("PATCH", "/repos/{owner}/{repo}/check-runs/{check_run_id}", "checks:write"),
    ("GET", "/repos/{owner}/{repo}/git/trees/{tree_sha}", "contents:read"),
    ("GET", "/repos/{owner}/{repo}/git/ref/{ref}", "contents:read"),
    ("GET", "/repos/{owner}/{repo}/git/commits/{commit_sha}", "contents:read"),
    ("POST", "/repos/{owner}/{repo}/git/trees", "contents:write"),
    ("POST", "/repos/{owner}/{repo}/git/commits", "contents:write"),
    ("PATCH", "/repos/{owner}/{repo}/git/refs/{ref}", "contents:write"),
)
# The marker on the bot's deployments: a retry finds the one an earlier attempt made.
DEPLOYMENT_MARKER = "preview-bot"
CHECK_RUN_NAME = "preview"  # what branch protection can require
# How a check run's or commit status's result reads for a gate.
_CONCLUSIONS = {"success": "success", "neutral": "success", "skipped": "success"}
_STATUSES = {"success": "success", "failure": "failure", "error": "failure"}


class CountingGitHubAPI(GitHubAPI):
    """gidgethub's aiohttp client, counting every request in the metrics."""

    def __init__(self, *args: Any, metrics: Metrics | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metrics = metrics

    async def _request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes = b""
    ) -> tuple[int, Mapping[str, str], bytes]:
        status, resp_headers, data = await super()._request(method, url, headers, body)
        if self._metrics is not None:
            self._metrics.github_requests.labels(method=method, status=str(status)).inc()
        return status, resp_headers, data


def _retry_after(exc: BadRequest) -> float | None:
    headers = getattr(exc, "headers", None) or {}
    value = headers.get("retry-after") or headers.get("Retry-After")
    if value and str(value).isdigit():
        return float(value)
    return None


def _classify_bad_request(exc: BadRequest) -> BaseException:
    status = int(exc.status_code)
    after = _retry_after(exc)
    if status == 429 or (status == 403 and after is not None):
        return TemporaryError("GitHub secondary rate limit", after or 60.0)
    if status == 409:
        return Conflict(str(exc))
    return PermanentError(f"GitHub answered {status}: {exc}", status)


# What GitHub says when a branch's protection, a ruleset or push protection refuses a commit.
_BRANCH_REFUSALS = (
    "rule violation",
    "protected branch",
    "push protection",
    "secret scanning",
    "push declined",
)


def _raise_branch_refusal(exc: PermanentError, branch: str) -> None:
    """A commit the branch itself refuses is no conflict to retry: say which rule, and what to
    change (the App's bypass, or another `deploy_branch`)."""
    text = str(exc)
    if exc.status in (403, 409, 422) and any(word in text.lower() for word in _BRANCH_REFUSALS):
        raise PermanentError(
            f"branch `{branch}` refused the overlay commit ({text.splitlines()[0]}): let the "
            "App push to it (a bypass in the branch protection or ruleset), or set "
            "`deploy_branch` to a branch Argo CD reads that allows it",
            exc.status,
        ) from exc


def classify_error(exc: BaseException) -> BaseException:
    """Map gidgethub and network errors onto TemporaryError / Conflict / PermanentError."""
    if isinstance(exc, RateLimitExceeded):
        # RateLimit is falsy while exhausted (its __bool__), so test for None explicitly.
        reset = exc.rate_limit.reset_datetime if exc.rate_limit is not None else None
        wait = max(1.0, (reset - datetime.now(reset.tzinfo)).total_seconds()) if reset else 60.0
        return TemporaryError(f"GitHub rate limit exhausted; resets in {wait:.0f}s", wait + 1)
    if isinstance(exc, GitHubBroken):
        return TemporaryError(f"GitHub answered {exc.status_code}")
    if isinstance(exc, BadRequest):
        return _classify_bad_request(exc)
    if isinstance(exc, aiohttp.ClientError | asyncio.TimeoutError | OSError):
        return TemporaryError(f"cannot reach GitHub: {type(exc).__name__}: {exc}")
    return exc


class GitHub:
    """The calls a sync makes, for any installation of the App."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: Settings,
        metrics: Metrics | None = None,
        cache_size: int = 500,
    ) -> None:
        self._session = session
        self._settings = settings
        self._metrics = metrics
        self._cache_size = cache_size
        self._tokens: dict[int, tuple[str, float]] = {}
        self._caches: dict[int, MutableMapping[Any, Any]] = {}
        self._clients: dict[int, tuple[str, GitHubAPI]] = {}
        self._token_locks: dict[int, asyncio.Lock] = {}
        self._bot_login: str | None = None
        self.token_requests = 0

    def _client(self, token: str | None, cache: MutableMapping[Any, Any] | None) -> GitHubAPI:
        return CountingGitHubAPI(
            self._session,
            USER_AGENT,
            oauth_token=token,
            cache=cache,
            base_url=self._settings.github_api_url,
            metrics=self._metrics,
        )

    async def _token(self, installation_id: int) -> str:
        now = time.time()
        cached = self._tokens.get(installation_id)
        if cached and cached[1] - TOKEN_MARGIN > now:
            return cached[0]
        lock = self._token_locks.setdefault(installation_id, asyncio.Lock())
        async with lock:  # many syncs of one installation share one token request
            cached = self._tokens.get(installation_id)
            if cached and cached[1] - TOKEN_MARGIN > time.time():
                return cached[0]
            try:
                data = await gh_apps.get_installation_access_token(
                    self._client(None, None),
                    installation_id=str(installation_id),
                    app_id=str(self._settings.github_app_id),
                    private_key=self._settings.github_private_key,
                )
            except Exception as exc:
                raise classify_error(exc) from exc
            self.token_requests += 1
            expires = datetime.fromisoformat(data["expires_at"].replace("Z", "+00:00"))
            self._tokens[installation_id] = (data["token"], expires.timestamp())
            return str(data["token"])

    async def api(self, installation_id: int) -> GitHubAPI:
        """A client for the installation, with a valid token and the installation's ETag cache."""
        token = await self._token(installation_id)
        held = self._clients.get(installation_id)
        if held and held[0] == token:
            return held[1]
        cache = self._caches.setdefault(installation_id, LRUCache(maxsize=self._cache_size))
        client = self._client(token, cache)
        self._clients[installation_id] = (token, client)
        return client

    async def request(
        self, installation_id: int, method: str, url: str, url_vars: Mapping[str, Any], data: Any
    ) -> Any:
        """One REST call for the installation, its errors mapped onto bot.errors."""
        gh = await self.api(installation_id)
        try:
            if method == "GET":
                return await gh.getitem(url, url_vars)
            if method == "POST":
                return await gh.post(url, url_vars, data=data)
            if method == "PATCH":
                return await gh.patch(url, url_vars, data=data)
            if method == "PUT":
                return await gh.put(url, url_vars, data=data)
            return await gh.delete(url, url_vars, data=data)
        except Exception as exc:
            mapped = self.map_error(installation_id, exc)
            if mapped is exc:
                raise
            raise mapped from exc

    def map_error(self, installation_id: int, exc: BaseException) -> BaseException:
        if isinstance(exc, BadRequest) and int(exc.status_code) == 401:
            # The token was revoked or expired early (the App was reinstalled, its key
            # rotated): forget it, so that the retry asks for a new one.
            self._tokens.pop(installation_id, None)
            return TemporaryError("GitHub refused the installation token (401)")
        return classify_error(exc)

    def repo(self, installation_id: int, repo: str) -> RepoClient:
        """The calls a sync makes on one repository, through one installation."""
        return RepoClient(self, installation_id, repo)

    async def _call(self, method: str, url: str, iterable_key: str | None = None) -> Any:
        """A GET as the App itself (its JWT), for the App's own resources."""
        if method != "GET":
            raise ValueError("the App itself only reads")
        jwt = gh_apps.get_jwt(
            app_id=str(self._settings.github_app_id),
            private_key=self._settings.github_private_key,
        )
        gh = self._client(None, None)
        try:
            if iterable_key is None:
                return await gh.getitem(url, {"per_page": 100}, jwt=jwt)
            return [item async for item in gh.getiter(url, {"per_page": 100}, jwt=jwt)]
        except Exception as exc:
            raise classify_error(exc) from exc

    async def installations(self) -> list[int]:
        """The App's installations."""
        found = await self._call("GET", "/app/installations{?per_page}", "items")
        return [int(i["id"]) for i in found if not i.get("suspended_at")]

    async def installation_repos(self, installation_id: int) -> list[RepoInfo]:
        """Every repository the installation covers."""
        gh = await self.api(installation_id)
        try:
            return [
                RepoInfo(
                    str(r["full_name"]), installation_id, str(r.get("default_branch") or "main")
                )
                async for r in gh.getiter(
                    "/installation/repositories{?per_page}",
                    {"per_page": 100},
                    iterable_key="repositories",
                )
            ]
        except Exception as exc:
            raise self.map_error(installation_id, exc) from exc

    async def bot_login(self) -> str | None:
        """`<slug>[bot]`, the login the App's comments carry: read once from GET /app."""
        if self._bot_login is None:
            app = await self._call("GET", "/app")
            self._bot_login = f"{app['slug']}[bot]"
        return self._bot_login

    def rate_remaining(self, installation_id: int) -> float | None:
        """The fraction of the installation's hourly requests left, from its last answer."""
        held = self._clients.get(installation_id)
        limit = held[1].rate_limit if held else None
        if limit is None or not limit.limit:
            return None
        return float(limit.remaining) / float(limit.limit)


class RepoClient:
    """One repository of one installation of the App: bot.ports.RepoPort over GitHub's API."""

    def __init__(self, github: GitHub, installation_id: int, repo: str) -> None:
        self._github = github
        self.installation_id = installation_id
        self.repo = repo

    async def _call(self, method: str, url: str, data: Any = None, **url_vars: Any) -> Any:
        return await self._github.request(
            self.installation_id, method, url, {"repo": self.repo, **url_vars}, data or {}
        )

    # ---- pull requests and comments --------------------------------------------------------

    async def get_pull(self, number: int) -> PullRequest:
        data = await self._call("GET", "/repos/{+repo}/pulls/{number}", number=number)
        return pull_from_api(data)

    async def comments(self, number: int) -> AsyncIterator[IssueComment]:
        gh = await self._github.api(self.installation_id)
        pages = gh.getiter(
            "/repos/{+repo}/issues/{number}/comments{?per_page}",
            {"repo": self.repo, "number": number, "per_page": 100},
        )
        while True:
            try:
                data = await anext(pages)
            except StopAsyncIteration:
                return
            except Exception as exc:
                raise self._github.map_error(self.installation_id, exc) from exc
            yield comment_from_api(data)

    async def create_comment(self, number: int, body: str) -> int:
        data = await self._call(
            "POST", "/repos/{+repo}/issues/{number}/comments", {"body": body}, number=number
        )
        return int(data["id"])

    async def edit_comment(self, comment_id: int, body: str) -> bool:
        """Edit the comment; False when it no longer exists (someone deleted it)."""
        try:
            await self._call(
                "PATCH", "/repos/{+repo}/issues/comments/{id}", {"body": body}, id=comment_id
            )
        except PermanentError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # ---- contents --------------------------------------------------------------------------

    async def _contents(self, path: str, ref: str) -> Any:
        """The contents API's answer for `path` on `ref` (file or listing); None on 404."""
        try:
            return await self._call(
                "GET", "/repos/{+repo}/contents/{+path}{?ref}", path=path, ref=ref
            )
        except PermanentError as exc:
            if exc.status == 404:
                return None
            raise

    async def get_file_sha(self, path: str, ref: str) -> str | None:
        data = await self._contents(path, ref)
        if data is None:
            return None
        if isinstance(data, list):
            raise PermanentError(f"{path} is a directory on {ref}, expected a file")
        return str(data["sha"])

    async def put_file(
        self, path: str, branch: str, content: str, message: str, sha: str | None
    ) -> tuple[str, str]:
        """Create or update a file in one commit: (blob sha, commit sha). Conflict if stale."""
        data: dict[str, Any] = {
            "message": message,
            "content": base64.b64encode(content.encode()).decode(),
            "branch": branch,
        }
        if sha:
            data["sha"] = sha
        try:
            result = await self._call("PUT", "/repos/{+repo}/contents/{+path}", data, path=path)
        except PermanentError as exc:
            _raise_branch_refusal(exc, branch)
            # 422 when the file exists and no sha was given, or the sha is not the file's.
            if exc.status in (409, 422):
                raise Conflict(str(exc)) from exc
            raise
        return str(result["content"]["sha"]), str(result["commit"]["sha"])

    async def delete_file(self, path: str, branch: str, message: str, sha: str) -> bool:
        """Delete a file in one commit; False when it was already gone. Conflict if stale."""
        data = {"message": message, "sha": sha, "branch": branch}
        try:
            await self._call("DELETE", "/repos/{+repo}/contents/{+path}", data, path=path)
        except PermanentError as exc:
            _raise_branch_refusal(exc, branch)
            if exc.status == 404:
                return False
            if exc.status in (409, 422):
                raise Conflict(str(exc)) from exc
            raise
        # gidgethub returns nothing for a DELETE, so the commit's sha is not known here.
        return True

    # ---- deployments -----------------------------------------------------------------------

    async def create_deployment(self, sha: str, environment: str, description: str) -> int:
        data = {
            "ref": sha,
            "environment": environment,
            "description": description,
            "auto_merge": False,
            "required_contexts": [],
            "transient_environment": True,
            "production_environment": False,
        }
        data["payload"] = {DEPLOYMENT_MARKER: {"environment": environment, "sha": sha}}
        result = await self._call("POST", "/repos/{+repo}/deployments", data)
        return int(result["id"])

    async def find_deployment(self, sha: str, environment: str) -> int | None:
        """The bot's deployment of `sha` to `environment`, by its payload marker."""
        found = await self._call(
            "GET",
            "/repos/{+repo}/deployments{?sha,environment,per_page}",
            sha=sha,
            environment=environment,
            per_page=20,
        )
        for d in found:
            payload = d.get("payload")
            if isinstance(payload, dict) and DEPLOYMENT_MARKER in payload:
                return int(d["id"])
        return None

    async def set_deployment_status(self, deployment_id: int, status: DeploymentStatus) -> bool:
        """Add a status; False when the deployment no longer exists."""
        data: dict[str, Any] = {"state": status.state, "description": status.description[:140]}
        if status.environment_url:
            data["environment_url"] = status.environment_url
        if status.log_url:
            data["log_url"] = status.log_url
        try:
            await self._call(
                "POST", "/repos/{+repo}/deployments/{id}/statuses", data, id=deployment_id
            )
        except PermanentError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def active_deployments(self, environment: str) -> list[int]:
        """Deployments of `environment` whose latest status is not inactive (newest first)."""
        deployments = await self._call(
            "GET",
            "/repos/{+repo}/deployments{?environment,per_page}",
            environment=environment,
            per_page=20,
        )
        active = []
        for d in deployments:
            statuses = await self._call(
                "GET", "/repos/{+repo}/deployments/{id}/statuses{?per_page}", id=d["id"], per_page=1
            )
            if not statuses or statuses[0].get("state") != "inactive":
                active.append(int(d["id"]))
        return active

    # ---- who may do what ------------------------------------------------------------------

    async def permission(self, user: str) -> str:
        """admin, write, read or none (GitHub maps maintain to write and triage to read)."""
        try:
            data = await self._call(
                "GET", "/repos/{+repo}/collaborators/{user}/permission", user=user
            )
        except PermanentError as exc:
            if exc.status == 404:
                return "none"  # not a collaborator (or no such user)
            raise
        return str(data.get("permission") or "none")

    async def label_event(self, number: int, label: str) -> LabelEvent | None:
        """The latest `labeled` event of `label` on the PR (its actor and time)."""
        gh = await self._github.api(self.installation_id)
        last: LabelEvent | None = None
        try:
            async for event in gh.getiter(
                "/repos/{+repo}/issues/{number}/events{?per_page}",
                {"repo": self.repo, "number": number, "per_page": 100},
            ):
                if (
                    event.get("event") == "labeled"
                    and (event.get("label") or {}).get("name") == label
                ):
                    actor = (event.get("actor") or {}).get("login") or ""
                    at = datetime.fromisoformat(str(event["created_at"]).replace("Z", "+00:00"))
                    last = LabelEvent(str(actor), int(at.timestamp()))
        except Exception as exc:
            raise self._github.map_error(self.installation_id, exc) from exc
        return last

    async def set_label(self, number: int, label: str, present: bool) -> None:
        if present:
            await self._call(
                "POST", "/repos/{+repo}/issues/{number}/labels", {"labels": [label]}, number=number
            )
            return
        try:
            await self._call(
                "DELETE", "/repos/{+repo}/issues/{number}/labels/{name}", number=number, name=label
            )
        except PermanentError as exc:
            if exc.status != 404:  # already gone is what we wanted
                raise

    async def add_reaction(self, comment_id: int, content: str) -> None:
        await self._call(
            "POST",
            "/repos/{+repo}/issues/comments/{id}/reactions",
            {"content": content},
            id=comment_id,
        )

    # ---- checks ---------------------------------------------------------------------------

    async def check_states(self, sha: str) -> dict[str, tuple[str, str | None]]:
        """Check runs and commit statuses of `sha` by name: (success | pending | failure, link)."""
        states: dict[str, tuple[str, str | None]] = {}
        combined = await self._call("GET", "/repos/{+repo}/commits/{ref}/status", ref=sha)
        for status in combined.get("statuses") or []:
            state = _STATUSES.get(str(status.get("state")), "pending")
            states[str(status.get("context"))] = (state, status.get("target_url"))
        runs = await self._call(
            "GET", "/repos/{+repo}/commits/{ref}/check-runs{?per_page}", ref=sha, per_page=100
        )
        for run in runs.get("check_runs") or []:
            if run.get("status") != "completed":
                state = "pending"
            else:
                state = _CONCLUSIONS.get(str(run.get("conclusion")), "failure")
            states[str(run.get("name"))] = (state, run.get("html_url"))
        return states

    async def report_check(self, report: CheckReport) -> int:
        data: dict[str, Any] = {
            "status": report.status,
            "output": {"title": report.title, "summary": report.summary or report.title},
        }
        if report.conclusion:
            data["conclusion"] = report.conclusion
        if report.details_url:
            data["details_url"] = report.details_url
        if report.check_run_id is not None:
            await self._call(
                "PATCH", "/repos/{+repo}/check-runs/{id}", data, id=report.check_run_id
            )
            return report.check_run_id
        data.update(name=CHECK_RUN_NAME, head_sha=report.sha, external_id=DEPLOYMENT_MARKER)
        created = await self._call("POST", "/repos/{+repo}/check-runs", data)
        return int(created["id"])

    async def find_check(self, sha: str, name: str) -> int | None:
        runs = await self._call(
            "GET", "/repos/{+repo}/commits/{ref}/check-runs{?check_name}", ref=sha, check_name=name
        )
        for run in runs.get("check_runs") or []:
            if run.get("external_id") == DEPLOYMENT_MARKER:
                return int(run["id"])
        return None

    # ---- the repository as a whole --------------------------------------------------------

    async def list_files(self, path: str, ref: str) -> list[str] | None:
        """Every file under `path` on `ref`, from one (recursive) git tree read."""
        tree = f"{ref}:{path}" if path else ref
        try:
            data = await self._call(
                "GET", "/repos/{+repo}/git/trees/{+tree}{?recursive}", tree=tree, recursive=1
            )
        except PermanentError as exc:
            if exc.status == 404:
                return None
            raise
        prefix = f"{path}/" if path else ""
        return [prefix + e["path"] for e in data.get("tree") or [] if e.get("type") == "blob"]

    async def open_pulls(self) -> list[PullRequest]:
        gh = await self._github.api(self.installation_id)
        try:
            return [
                pull_from_api(item)
                async for item in gh.getiter(
                    "/repos/{+repo}/pulls{?state,per_page}",
                    {"repo": self.repo, "state": "open", "per_page": 100},
                )
            ]
        except Exception as exc:
            raise self._github.map_error(self.installation_id, exc) from exc

    async def delete_files(self, paths: list[str], branch: str, message: str) -> str | None:
        """Delete `paths` in one commit (git data API); Conflict when the branch moved."""
        ref = await self._call("GET", "/repos/{+repo}/git/ref/{+ref}", ref=f"heads/{branch}")
        head = str(ref["object"]["sha"])
        commit = await self._call("GET", "/repos/{+repo}/git/commits/{sha}", sha=head)
        entries = [{"path": p, "mode": "100644", "type": "blob", "sha": None} for p in paths]
        tree = await self._call(
            "POST",
            "/repos/{+repo}/git/trees",
            {"base_tree": commit["tree"]["sha"], "tree": entries},
        )
        if tree["sha"] == commit["tree"]["sha"]:
            return None  # none of them was there
        made = await self._call(
            "POST",
            "/repos/{+repo}/git/commits",
            {"message": message, "tree": tree["sha"], "parents": [head]},
        )
        try:
            await self._call(
                "PATCH",
                "/repos/{+repo}/git/refs/{+ref}",
                {"sha": made["sha"]},
                ref=f"heads/{branch}",
            )
        except PermanentError as exc:
            if exc.status == 422:  # not a fast-forward: someone pushed in between
                raise Conflict(str(exc)) from exc
            raise
        return str(made["sha"])
