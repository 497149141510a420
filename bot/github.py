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
from typing import Any, TypeVar, cast

import aiohttp
from cachetools import LRUCache
from gidgethub import BadRequest, GitHubBroken, RateLimitExceeded, sansio
from gidgethub.aiohttp import GitHubAPI

from bot.config import Settings
from bot.errors import Conflict, PermanentError, TemporaryError
from bot.github_auth import AppAuth
from bot.github_http import USER_AGENT, ConditionalCache, Held, Transport
from bot.metrics import Metrics
from bot.model import DeploymentStatus, IssueComment, PullRequest
from bot.parse import KUSTOMIZATION_NAMES, comment_from_api, pull_from_api
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
)


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
            mapped = self.map_error(installation_id, exc)
            if mapped is exc:
                raise
            raise mapped from exc

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
            mapped = self.map_error(installation_id, exc)
            if mapped is exc:
                raise
            raise mapped from exc
        value = convert(data)
        etag = resp_headers.get("etag")
        if etag:
            self.etags.put(installation_id, url, convert, Held(etag, value, next_url))
        return value, next_url

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

    async def has_kustomization(self, path: str, ref: str) -> bool:
        """Whether directory `path` on `ref` holds a kustomization file."""
        data = await self._contents(path, ref)
        return data is not None and not KUSTOMIZATION_NAMES.isdisjoint(data.names or ())

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
        result = await self._call("POST", "/repos/{+repo}/deployments", data)
        return int(result["id"])

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
