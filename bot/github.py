"""The GitHub adapter: the calls a sync makes, for any installation of the App.

gidgethub builds the requests and reads the answers. Below it, bot.github_http sends every
request under GitHub's rate limits and a breaker per host; bot.github_auth holds the App's key,
JWT and installation tokens. This module adds a conditional cache (ETag -> the compact value a
caller keeps, per installation: a 304 costs no rate limit, and one installation never sees
another's answer) and the split of GitHub's errors into temporary (retry later) and permanent.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn, TypeVar, cast

import aiohttp
from cachetools import LRUCache
from gidgethub import BadRequest, GitHubBroken, RateLimitExceeded, sansio
from gidgethub.aiohttp import GitHubAPI

from bot import USER_AGENT
from bot.config import Settings
from bot.errors import Conflict, PermanentError, TemporaryError
from bot.github_auth import AppAuth
from bot.github_http import ConditionalCache, Held, Transport
from bot.metrics import Metrics
from bot.model import (
    CheckReport,
    DeploymentStatus,
    IssueComment,
    LabelEvent,
    ListedDeployment,
    PullRequest,
)
from bot.parse import comment_from_api, pull_from_api
from bot.ports import RepoInfo
from bot.throttle import Clock, SystemClock

log = logging.getLogger(__name__)

T = TypeVar("T")

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
    """The calls a sync makes, for any installation of the App.

    Every request goes through one Transport (rate limits, the host's breaker, pacing) and
    authenticates through one AppAuth (the key parsed once, a cached JWT, one token request
    in flight per installation). Reads worth repeating go through the conditional cache.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: Settings,
        metrics: Metrics | None = None,
        cache_size: int = 2000,
        clock: Clock | None = None,
    ) -> None:
        self._settings = settings
        self.transport = Transport(session, clock or SystemClock(), metrics)
        self.auth = AppAuth(
            self.transport,
            settings.github_app_id,
            settings.github_private_key,
            settings.github_api_url,
        )
        self.etags = ConditionalCache(cache_size)
        self._clients: LRUCache[int, tuple[str, GitHubAPI]] = LRUCache(1000)
        self._bot_login: str | None = None

    @property
    def token_requests(self) -> int:
        return self.auth.token_requests

    def _client(self, installation_id: int | None, token: str | None) -> GitHubAPI:
        """A client through the Transport; (None, None) is the App itself (pass jwt=)."""
        return self.transport.client(installation_id, token, self._settings.github_api_url)

    def app_jwt(self) -> str:
        """The App's JWT for calls as the App (GET /app, /app/installations): cached."""
        return self.auth.app_jwt()

    async def _token(self, installation_id: int) -> str:
        try:
            return await self.auth.token(installation_id)
        except TemporaryError:
            raise
        except Exception as exc:
            mapped = classify_error(exc)
            if isinstance(mapped, TemporaryError) and mapped.retry_after is None:
                # No sooner than the token backoff allows another request.
                mapped.retry_after = self.auth.backoff.wait(installation_id) or None
            if mapped is exc:
                raise
            raise mapped from exc

    async def api(self, installation_id: int) -> GitHubAPI:
        """A client for the installation, with a valid token."""
        token = await self._token(installation_id)
        held = self._clients.get(installation_id)
        if held and held[0] == token:
            return held[1]
        client = self._client(installation_id, token)
        self._clients[installation_id] = (token, client)
        return client

    def rate_remaining(self, installation_id: int) -> float | None:
        """The fraction of the installation's hourly requests left, from its last answer;
        None before any."""
        seen = self.transport.throttle.remaining(installation_id)
        if seen is None or seen[1] <= 0:
            return None
        return seen[0] / seen[1]

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
            self.reraise(installation_id, exc)

    async def get_cached(
        self,
        installation_id: int,
        url: str,
        url_vars: Mapping[str, Any],
        convert: Callable[[Any], T],
    ) -> T:
        """GET through the conditional cache: `convert(json)` is kept with the ETag, and an
        unchanged resource (304, free of rate limit) returns the kept value itself.

        `convert` is part of the cache key: pass a module-level function, not a new lambda.
        """
        full = sansio.format_url(url, url_vars, base_url=self._settings.github_api_url)
        value, _ = await self._conditional(installation_id, full, convert)
        return cast(T, value)

    async def get_cached_pages(
        self,
        installation_id: int,
        url: str,
        url_vars: Mapping[str, Any],
        convert_page: Callable[[Any], Sequence[T]],
    ) -> list[T]:
        """Every page of a list through the conditional cache, each page converted by
        `convert_page` (return a tuple of compact items); unchanged pages cost nothing."""
        items: list[T] = []
        next_url: str | None = sansio.format_url(
            url, url_vars, base_url=self._settings.github_api_url
        )
        while next_url is not None:
            page, next_url = await self._conditional(installation_id, next_url, convert_page)
            items.extend(page)
        return items

    async def _conditional(
        self, installation_id: int, url: str, convert: Callable[[Any], Any]
    ) -> tuple[Any, str | None]:
        token = await self._token(installation_id)
        held = self.etags.get(installation_id, url, convert)
        headers = sansio.create_headers(USER_AGENT, oauth_token=token)
        if held is not None:
            headers["if-none-match"] = held.etag
        try:
            status, resp_headers, body = await self.transport.send(
                installation_id, "GET", url, headers
            )
            if status == 304 and held is not None:
                return held.value, held.next_url
            data, _, next_url = sansio.decipher_response(status, resp_headers, body)
        except Exception as exc:
            self.reraise(installation_id, exc)
        value = convert(data)
        etag = resp_headers.get("etag")
        if etag:
            self.etags.put(installation_id, url, convert, Held(etag, value, next_url))
        return value, next_url

    def reraise(self, installation_id: int, exc: BaseException) -> NoReturn:
        """Raise `exc` as bot.errors has it (an error already of ours as it is)."""
        mapped = self.map_error(installation_id, exc)
        if mapped is exc:
            raise exc
        raise mapped from exc

    def map_error(self, installation_id: int, exc: BaseException) -> BaseException:
        if isinstance(exc, BadRequest) and int(exc.status_code) == 401:
            # The token was revoked or expired early (the App was reinstalled, its key
            # rotated): forget it, so that the retry asks for a new one.
            self.auth.forget(installation_id)
            self._clients.pop(installation_id, None)
            return TemporaryError("GitHub refused the installation token (401)")
        return classify_error(exc)

    def repo(self, installation_id: int, repo: str) -> RepoClient:
        """The calls a sync makes on one repository, through one installation."""
        return RepoClient(self, installation_id, repo)

    async def _call(self, method: str, url: str, iterable_key: str | None = None) -> Any:
        """A GET as the App itself (its JWT), for the App's own resources."""
        if method != "GET":
            raise ValueError("the App itself only reads")
        jwt = self.app_jwt()
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
        found = await self.get_cached_pages(
            installation_id,
            "/installation/repositories{?per_page}",
            {"per_page": 100},
            _repositories_page,
        )
        return [RepoInfo(name, installation_id, branch) for name, branch in found]

    async def bot_login(self) -> str | None:
        """`<slug>[bot]`, the login the App's comments carry: read once from GET /app."""
        if self._bot_login is None:
            app = await self._call("GET", "/app")
            self._bot_login = f"{app['slug']}[bot]"
        return self._bot_login


@dataclass(frozen=True)
class Contents:
    """What the bot keeps of a contents answer: a file's blob sha, or a directory's names
    (not the file's base64 body, nor each entry's URLs)."""

    sha: str | None
    names: frozenset[str] | None = None  # set for a directory


def contents_from_api(data: Any) -> Contents:
    if isinstance(data, list):
        return Contents(None, frozenset(str(e.get("name")) for e in data))
    return Contents(str(data["sha"]))


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
        return await self._github.get_cached(
            self.installation_id,
            "/repos/{+repo}/pulls/{number}",
            {"repo": self.repo, "number": number},
            pull_from_api,
        )

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
                self._github.reraise(self.installation_id, exc)
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

    async def _contents(self, path: str, ref: str) -> Contents | None:
        """What the contents API says of `path` on `ref` (file or listing); None on 404."""
        try:
            return await self._github.get_cached(
                self.installation_id,
                "/repos/{+repo}/contents/{+path}{?ref}",
                {"repo": self.repo, "path": path, "ref": ref},
                contents_from_api,
            )
        except PermanentError as exc:
            if exc.status == 404:
                return None
            raise

    async def get_file_sha(self, path: str, ref: str) -> str | None:
        data = await self._contents(path, ref)
        if data is None:
            return None
        if data.names is not None:
            raise PermanentError(f"{path} is a directory on {ref}, expected a file")
        return data.sha

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
        return next((int(d["id"]) for d in found if _made_by_bot(d)), None)

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

    async def recent_deployments(self) -> list[ListedDeployment]:
        """The newest page of the repository's deployments (every environment, newest first),
        through the conditional cache: the resync reads it each period, and an unchanged list
        is a free 304. Older pages are not read: the resync looks for recent strays."""
        found = await self._github.get_cached(
            self.installation_id,
            "/repos/{+repo}/deployments{?per_page}",
            {"repo": self.repo, "per_page": 100},
            _deployments_page,
        )
        return list(found)

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
        """The latest `labeled` event of `label` on the PR (its actor and time), through the
        conditional cache: the cap's queue and the label gate ask again on later syncs, and
        an unchanged history then costs nothing."""
        found = await self._github.get_cached_pages(
            self.installation_id,
            "/repos/{+repo}/issues/{number}/events{?per_page}",
            {"repo": self.repo, "number": number, "per_page": 100},
            _label_events_page,
        )
        return next((event for name, event in reversed(found) if name == label), None)

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
        """Check runs and commit statuses of `sha` by name: (success | pending | failure, link).

        Every page of both, through the conditional cache: a head waiting for its checks is
        asked again on each sync, and while nothing finished the answers are free 304s."""
        vars_ = {"repo": self.repo, "ref": sha, "per_page": 100}
        statuses = await self._github.get_cached_pages(
            self.installation_id,
            "/repos/{+repo}/commits/{ref}/status{?per_page}",
            vars_,
            _status_page,
        )
        runs = await self._github.get_cached_pages(
            self.installation_id,
            "/repos/{+repo}/commits/{ref}/check-runs{?per_page}",
            vars_,
            _check_runs_page,
        )
        # Statuses first, check runs after: a check run wins a name both use, as before.
        return {name: (state, link) for name, state, link in (*statuses, *runs)}

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
        """Every file under `path` on `ref`, from one recursive git tree read (conditional:
        an unchanged tree is a free 304, which keeps the resync's idle cost at zero)."""
        tree = f"{ref}:{path}" if path else ref
        try:
            blobs = await self._github.get_cached(
                self.installation_id,
                "/repos/{+repo}/git/trees/{+tree}{?recursive}",
                {"repo": self.repo, "tree": tree, "recursive": 1},
                _tree_blobs,
            )
        except PermanentError as exc:
            if exc.status == 404:
                return None
            raise
        prefix = f"{path}/" if path else ""
        return [prefix + name for name in blobs]

    async def open_pulls(self) -> list[PullRequest]:
        """The open PRs, page by page through the conditional cache (unchanged: free)."""
        return await self._github.get_cached_pages(
            self.installation_id,
            "/repos/{+repo}/pulls{?state,per_page}",
            {"repo": self.repo, "state": "open", "per_page": 100},
            _pulls_page,
        )

    async def branch_head(self, branch: str) -> str | None:
        try:
            ref = await self._call("GET", "/repos/{+repo}/git/ref/{+ref}", ref=f"heads/{branch}")
        except PermanentError as exc:
            if exc.status == 404:
                return None
            raise
        return str(ref["object"]["sha"])

    async def delete_files(self, paths: list[str], branch: str, message: str) -> str | None:
        """Delete `paths` in one commit (git data API); Conflict when the branch moved."""
        head = await self.branch_head(branch)
        if head is None:
            raise PermanentError(f"branch {branch} not found", 404)
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


def _repositories_page(data: Any) -> tuple[tuple[str, str], ...]:
    """A page of GET /installation/repositories, kept compact: (owner/name, default branch)."""
    return tuple(
        (str(r["full_name"]), str(r.get("default_branch") or "main"))
        for r in data.get("repositories") or []
    )


def _status_page(data: Any) -> tuple[tuple[str, str, str | None], ...]:
    """A page of a commit's combined status, kept compact: (context, state, link) of each."""
    return tuple(
        (
            str(status.get("context")),
            _STATUSES.get(str(status.get("state")), "pending"),
            status.get("target_url"),
        )
        for status in (data or {}).get("statuses") or []
    )


def _check_runs_page(data: Any) -> tuple[tuple[str, str, str | None], ...]:
    """A page of a commit's check runs, kept compact: (name, state, link) of each."""
    return tuple(
        (
            str(run.get("name")),
            "pending"
            if run.get("status") != "completed"
            else _CONCLUSIONS.get(str(run.get("conclusion")), "failure"),
            run.get("html_url"),
        )
        for run in (data or {}).get("check_runs") or []
    )


def _label_events_page(data: Any) -> tuple[tuple[str, LabelEvent], ...]:
    """A page of an issue's events, kept compact: (label, actor and time) of each `labeled`."""
    kept = []
    for event in data or []:
        if event.get("event") != "labeled":
            continue
        actor = (event.get("actor") or {}).get("login") or ""
        at = datetime.fromisoformat(str(event["created_at"]).replace("Z", "+00:00"))
        name = str((event.get("label") or {}).get("name") or "")
        kept.append((name, LabelEvent(str(actor), int(at.timestamp()))))
    return tuple(kept)


def _made_by_bot(deployment: Any) -> bool:
    """A deployment carrying the bot's payload marker (see create_deployment)."""
    payload = deployment.get("payload")
    return isinstance(payload, dict) and DEPLOYMENT_MARKER in payload


def _deployments_page(data: Any) -> tuple[ListedDeployment, ...]:
    """A page of GET /deployments, kept compact: id, sha, environment, and whether the bot's
    payload marker is on it."""
    return tuple(
        ListedDeployment(
            int(d["id"]),
            str(d["sha"]),
            str(d.get("environment") or ""),
            _made_by_bot(d),
        )
        for d in data or []
    )


def _pulls_page(data: Any) -> tuple[PullRequest, ...]:
    """A page of GET /pulls, kept compact: the PRs as the bot sees them."""
    return tuple(pull_from_api(item) for item in data)


def _tree_blobs(data: Any) -> tuple[str, ...]:
    """A git tree, kept compact: the paths of its files."""
    return tuple(e["path"] for e in data.get("tree") or [] if e.get("type") == "blob")
