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
from collections.abc import Mapping, MutableMapping
from datetime import datetime
from typing import Any

import aiohttp
from cachetools import LRUCache
from gidgethub import BadRequest, GitHubBroken, RateLimitExceeded
from gidgethub import apps as gh_apps
from gidgethub.aiohttp import GitHubAPI

from bot.config import Settings
from bot.metrics import Metrics
from bot.model import ObservedComment, PullRequest
from bot.render import COMMENT_MARKER, parse_comment_state

log = logging.getLogger(__name__)

USER_AGENT = "preview-bot"
TOKEN_MARGIN = 300  # seconds before expires_at at which a token is renewed
KUSTOMIZATION_NAMES = frozenset({"kustomization.yaml", "kustomization.yml", "Kustomization"})

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
)


class TemporaryError(Exception):
    """Worth retrying later: GitHub or the network failed, or a rate limit applies."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        # Seconds GitHub asked us to wait (rate limits); None: use the configured backoff.
        self.retry_after = retry_after


class PermanentError(Exception):
    """Retrying will not help (a 404 of the repository, a 422 on our own request, no access)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Conflict(Exception):
    """A write was refused because the state moved (stale file sha, 409, 422 on sha)."""


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
        status = int(exc.status_code)
        after = _retry_after(exc)
        if status == 429 or (status == 403 and after is not None):
            return TemporaryError("GitHub secondary rate limit", after or 60.0)
        if status == 409:
            return Conflict(str(exc))
        return PermanentError(f"GitHub answered {status}: {exc}", status)
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

    async def _call(self, installation_id: int, method: str, url: str, **kw: Any) -> Any:
        gh = await self.api(installation_id)
        try:
            url_vars = kw.get("url_vars", {})
            data = kw.get("data", {})
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
            mapped = self._map_error(installation_id, exc)
            if mapped is exc:
                raise
            raise mapped from exc

    def _map_error(self, installation_id: int, exc: BaseException) -> BaseException:
        if isinstance(exc, BadRequest) and int(exc.status_code) == 401:
            # The token was revoked or expired early (the App was reinstalled, its key
            # rotated): forget it, so that the retry asks for a new one.
            self._tokens.pop(installation_id, None)
            return TemporaryError("GitHub refused the installation token (401)")
        return classify_error(exc)

    # ---- pull requests and comments --------------------------------------------------------

    async def get_pull(self, installation_id: int, repo: str, number: int) -> PullRequest:
        data = await self._call(
            installation_id,
            "GET",
            "/repos/{+repo}/pulls/{number}",
            url_vars={"repo": repo, "number": number},
        )
        return pull_from_api(data)

    async def find_comment(
        self, installation_id: int, repo: str, number: int
    ) -> ObservedComment | None:
        gh = await self.api(installation_id)
        try:
            async for c in gh.getiter(
                "/repos/{+repo}/issues/{number}/comments{?per_page}",
                {"repo": repo, "number": number, "per_page": 100},
            ):
                body = c.get("body") or ""
                if COMMENT_MARKER in body:
                    state, fp = parse_comment_state(body)
                    return ObservedComment(int(c["id"]), state, fp)
        except Exception as exc:
            raise self._map_error(installation_id, exc) from exc
        return None

    async def create_comment(self, installation_id: int, repo: str, number: int, body: str) -> int:
        data = await self._call(
            installation_id,
            "POST",
            "/repos/{+repo}/issues/{number}/comments",
            url_vars={"repo": repo, "number": number},
            data={"body": body},
        )
        return int(data["id"])

    async def edit_comment(
        self, installation_id: int, repo: str, comment_id: int, body: str
    ) -> bool:
        """Edit the comment; False when it no longer exists (someone deleted it)."""
        try:
            await self._call(
                installation_id,
                "PATCH",
                "/repos/{+repo}/issues/comments/{id}",
                url_vars={"repo": repo, "id": comment_id},
                data={"body": body},
            )
        except PermanentError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # ---- contents --------------------------------------------------------------------------

    async def _contents(self, installation_id: int, repo: str, path: str, ref: str) -> Any:
        """The contents API's answer for `path` on `ref` (file or listing); None on 404."""
        try:
            return await self._call(
                installation_id,
                "GET",
                "/repos/{+repo}/contents/{+path}{?ref}",
                url_vars={"repo": repo, "path": path, "ref": ref},
            )
        except PermanentError as exc:
            if exc.status == 404:
                return None
            raise

    async def get_file_sha(
        self, installation_id: int, repo: str, path: str, ref: str
    ) -> str | None:
        data = await self._contents(installation_id, repo, path, ref)
        if data is None:
            return None
        if isinstance(data, list):
            raise PermanentError(f"{path} is a directory on {ref}, expected a file")
        return str(data["sha"])

    async def has_kustomization(self, installation_id: int, repo: str, path: str, ref: str) -> bool:
        """Whether directory `path` on `ref` holds a kustomization file."""
        data = await self._contents(installation_id, repo, path, ref)
        return isinstance(data, list) and any(e.get("name") in KUSTOMIZATION_NAMES for e in data)

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
        """Create or update a file in one commit: (blob sha, commit sha). Conflict if stale."""
        data: dict[str, Any] = {
            "message": message,
            "content": base64.b64encode(content.encode()).decode(),
            "branch": branch,
        }
        if sha:
            data["sha"] = sha
        try:
            result = await self._call(
                installation_id,
                "PUT",
                "/repos/{+repo}/contents/{+path}",
                url_vars={"repo": repo, "path": path},
                data=data,
            )
        except PermanentError as exc:
            # 422 when the file exists and no sha was given, or the sha is not the file's.
            if exc.status in (409, 422):
                raise Conflict(str(exc)) from exc
            raise
        return str(result["content"]["sha"]), str(result["commit"]["sha"])

    async def delete_file(
        self, installation_id: int, repo: str, path: str, branch: str, message: str, sha: str
    ) -> bool:
        """Delete a file in one commit; False when it was already gone. Conflict if stale."""
        try:
            await self._call(
                installation_id,
                "DELETE",
                "/repos/{+repo}/contents/{+path}",
                url_vars={"repo": repo, "path": path},
                data={"message": message, "sha": sha, "branch": branch},
            )
        except PermanentError as exc:
            if exc.status == 404:
                return False
            if exc.status in (409, 422):
                raise Conflict(str(exc)) from exc
            raise
        # gidgethub returns nothing for a DELETE, so the commit's sha is not known here.
        return True

    # ---- deployments -----------------------------------------------------------------------

    async def create_deployment(
        self, installation_id: int, repo: str, sha: str, environment: str, description: str
    ) -> int:
        data = await self._call(
            installation_id,
            "POST",
            "/repos/{+repo}/deployments",
            url_vars={"repo": repo},
            data={
                "ref": sha,
                "environment": environment,
                "description": description,
                "auto_merge": False,
                "required_contexts": [],
                "transient_environment": True,
                "production_environment": False,
            },
        )
        return int(data["id"])

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
        """Add a status; False when the deployment no longer exists."""
        data: dict[str, Any] = {"state": state, "description": description[:140]}
        if environment_url:
            data["environment_url"] = environment_url
        if log_url:
            data["log_url"] = log_url
        try:
            await self._call(
                installation_id,
                "POST",
                "/repos/{+repo}/deployments/{id}/statuses",
                url_vars={"repo": repo, "id": deployment_id},
                data=data,
            )
        except PermanentError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def active_deployments(
        self, installation_id: int, repo: str, environment: str
    ) -> list[int]:
        """Deployments of `environment` whose latest status is not inactive (newest first)."""
        deployments = await self._call(
            installation_id,
            "GET",
            "/repos/{+repo}/deployments{?environment,per_page}",
            url_vars={"repo": repo, "environment": environment, "per_page": 20},
        )
        active = []
        for d in deployments:
            statuses = await self._call(
                installation_id,
                "GET",
                "/repos/{+repo}/deployments/{id}/statuses{?per_page}",
                url_vars={"repo": repo, "id": d["id"], "per_page": 1},
            )
            if not statuses or statuses[0].get("state") != "inactive":
                active.append(int(d["id"]))
        return active


def pull_from_api(data: Mapping[str, Any]) -> PullRequest:
    """A PullRequest from GitHub's pull-request JSON (the API's, or a webhook's)."""
    base_repo = data["base"]["repo"]
    head_repo = data["head"].get("repo")
    return PullRequest(
        repo=str(base_repo["full_name"]),
        number=int(data["number"]),
        state=str(data["state"]),
        merged=bool(data.get("merged")),
        labels=frozenset(str(label["name"]) for label in data.get("labels") or []),
        head_sha=str(data["head"]["sha"]),
        head_repo=str(head_repo["full_name"]) if head_repo else None,
        default_branch=str(base_repo.get("default_branch") or data["base"]["ref"]),
        html_url=str(data["html_url"]),
        repo_html_url=str(base_repo["html_url"]),
        draft=bool(data.get("draft")),
        comment_count=data["comments"] if isinstance(data.get("comments"), int) else None,
    )
