"""The Argo CD adapter: read, server-side apply, annotate, delete and watch Applications.

Writes are idempotent: the Application is server-side applied by the field manager
`preview-bot` (creating or updating in one request), and the bot's bookkeeping annotations are
merge-patched by a second manager so that an apply never drops them. Requests go through
bot.kubeapi; a failure that means "the API server is unreachable or overloaded" leaves this
adapter as ClusterUnavailable, any other as the kubeapi.ApiError the server gave.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from bot.errors import ClusterUnavailable, PermanentError, TemporaryError
from bot.kubeapi import ApiError, KubeApi, Resource, unavailable
from bot.model import BOT, MANAGED_BY, ObservedApp, released_finalizers
from bot.parse import app_from_object
from bot.ports import OnAlive, OnEvent

log = logging.getLogger(__name__)

APPLICATIONS = Resource("argoproj.io", "v1alpha1", "applications")
FIELD_MANAGER = "preview-bot"
STATE_MANAGER = "preview-bot-state"
MANAGED = f"{MANAGED_BY}={BOT}"
RELEASE_ATTEMPTS = 3  # reads and guarded writes of the finalizers before a TemporaryError
# The watch's retry delay while the API server is unreachable: doubles up to the cap.
BACKOFF_FIRST, BACKOFF_CAP = 1.0, 60.0
T = TypeVar("T")


@dataclass
class _Feed:
    """Where a watch delivers: every change, and every sign of life."""

    on_event: OnEvent
    alive: OnAlive | None

    def beat(self) -> None:
        if self.alive is not None:
            self.alive()


class ArgoCD:
    """Applications in one Argo CD namespace, through one KubeApi."""

    def __init__(self, api: KubeApi, namespace: str) -> None:
        self.api = api
        self.namespace = namespace

    async def close(self) -> None:
        await self.api.close()

    def _path(self, name: str | None = None) -> str:
        return APPLICATIONS.path(self.namespace, name)

    async def _do(self, what: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except Exception as exc:
            if unavailable(exc):
                retry_after = exc.retry_after if isinstance(exc, ApiError) else None
                raise ClusterUnavailable(f"{what}: {exc}", retry_after) from exc
            if isinstance(exc, ApiError) and exc.status not in (404, 409):
                # 422 (invalid), 403 (RBAC), 400: retrying changes nothing; the PR is told
                # once, with the API server's own words.
                raise PermanentError(
                    f"the Kubernetes API server refused to {what}: {exc}", exc.status
                ) from exc
            raise

    async def _found(self, what: str, call: Awaitable[T]) -> T | None:
        """Run a call on one Application; None when it does not exist (404)."""
        try:
            return await self._do(what, call)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def get(self, name: str) -> ObservedApp | None:
        obj = await self._found(f"get Application {name}", self.api.get(self._path(name)))
        return None if obj is None else app_from_object(obj)

    async def apply(self, manifest: dict[str, Any]) -> None:
        """Create or update the Application in one server-side apply."""
        name = manifest["metadata"]["name"]
        await self._do(
            f"apply Application {name}",
            self.api.apply(self._path(name), manifest, FIELD_MANAGER, force=True),
        )

    async def annotate(self, name: str, annotations: dict[str, str]) -> bool:
        """Merge the annotations into the Application; False when it is gone."""
        body = {"metadata": {"annotations": annotations}}
        patched = await self._found(
            f"annotate Application {name}",
            self.api.merge_patch(self._path(name), body, STATE_MANAGER),
        )
        return patched is not None

    async def delete(self, name: str) -> bool:
        """Delete the Application; True when it is gone, False while its finalizer holds it."""
        result = await self._found(f"delete Application {name}", self.api.delete(self._path(name)))
        if result is None:
            return True
        # A Status object means it is gone; the object itself means a finalizer keeps it.
        return result.get("kind") == "Status" or not (result.get("metadata") or {}).get(
            "deletionTimestamp"
        )

    async def release(self, name: str) -> bool:
        """Remove the bot's finalizer, leaving every other one as it is.

        A merge patch replaces the whole list, so it carries the resourceVersion it was read
        at: if anything changed the object meanwhile (Argo CD dropping its own finalizer, say)
        the API server answers 409 and the list is read again, never clobbered. True when this
        call's write took the finalizer off; False when the Application is gone or carries no
        finalizer of the bot's (nothing written).
        """
        what = f"release Application {name}"
        for _ in range(RELEASE_ATTEMPTS):
            obj = await self._found(what, self.api.get(self._path(name)))
            if obj is None:
                return False
            meta = obj.get("metadata") or {}
            kept = released_finalizers(meta)
            if kept is None:
                return False
            body = {"metadata": {"resourceVersion": meta["resourceVersion"], "finalizers": kept}}
            try:
                patched = await self._found(
                    what, self.api.merge_patch(self._path(name), body, STATE_MANAGER)
                )
            except ApiError as exc:
                if exc.status == 409:
                    continue
                raise
            return patched is not None  # off by this write, or gone meanwhile (404)
        # Retried with backoff like any temporary failure (a sync, or the next resync).
        raise TemporaryError(f"{what}: it kept changing under the write (409)")

    async def list_managed(self) -> list[ObservedApp]:
        result = await self._do("list Applications", self.api.list(self._path(), MANAGED))
        return [app_from_object(item) for item in result.get("items") or []]

    async def reachable(self) -> None:
        """Raise unless the API server answers a list of managed Applications (one item at
        most: a probe, not a read of every preview)."""
        await self._do("list Applications", self.api.list(self._path(), MANAGED, limit=1))

    async def request_sync(self, name: str) -> bool:
        """Ask Argo CD to sync now: set the Application's `operation`, as `argocd app sync` does."""
        body = {"operation": {"initiatedBy": {"username": FIELD_MANAGER}, "sync": {}}}
        patched = await self._found(
            f"request a sync of Application {name}", self.api.merge_patch(self._path(name), body)
        )
        return patched is not None

    async def watch(
        self, on_event: OnEvent, alive: OnAlive | None = None, timeout_seconds: int = 300
    ) -> None:
        """Call `on_event(type, app)` for every change of a managed Application, forever.

        Starts from a list (each item as SYNCED), then watches from its resourceVersion; lists
        again when the server says that version is gone (410), and backs off while the API
        server is unreachable. `alive()` is called on every event, bookmark and fresh list.
        """
        feed = _Feed(on_event, alive)
        backoff = BACKOFF_FIRST
        version: str | None = None
        while True:
            try:
                if version is None:
                    version = await self._relist(feed)
                version = await self._follow(feed, version, timeout_seconds)
                backoff = BACKOFF_FIRST
            except ApiError as exc:
                if exc.status == 410:  # too old: start again from a fresh list
                    version = None
                    continue
                log.warning("watching Applications failed: %s; retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_CAP)
            except Exception as exc:
                if not unavailable(exc):
                    raise
                log.warning("cannot reach the API server to watch Applications: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_CAP)

    async def _relist(self, feed: _Feed) -> str:
        """Report every managed Application as SYNCED; the list's version, to watch from."""
        listing = await self.api.list(self._path(), MANAGED)
        feed.beat()
        for item in listing.get("items") or []:
            await feed.on_event("SYNCED", app_from_object(item))
        return str(listing["metadata"]["resourceVersion"])

    async def _follow(self, feed: _Feed, version: str, timeout_seconds: int) -> str:
        """Deliver changes after `version` until the server ends the watch; the last version."""
        async with self.api.watch(
            self._path(), version, label_selector=MANAGED, timeout_seconds=timeout_seconds
        ) as events:
            async for event in events:
                version = str(event.object["metadata"]["resourceVersion"])
                feed.beat()
                if event.type != "BOOKMARK":
                    await feed.on_event(event.type, app_from_object(event.object))
        return version
