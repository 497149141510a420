"""The Argo CD adapter: read, server-side apply, annotate, delete and watch Applications.

Writes are idempotent: the Application is server-side applied by the field manager
`preview-bot` (creating or updating in one request), and the bot's bookkeeping annotations are
merge-patched by a second manager so that an apply never drops them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import aiohttp
from kubernetes_asyncio import client, watch
from kubernetes_asyncio import config as kconfig
from kubernetes_asyncio.client.exceptions import ApiException

from bot.config import Settings
from bot.errors import ClusterUnavailable
from bot.model import BOT, MANAGED_BY, ObservedApp
from bot.parse import app_from_object
from bot.ports import OnAlive, OnEvent

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "argoproj.io", "v1alpha1", "applications"
FIELD_MANAGER = "preview-bot"
STATE_MANAGER = "preview-bot-state"
# A dict body is otherwise sent as a JSON patch, which the API server refuses (TOOLCHAIN.md);
# passed as ** because the client's type stubs do not declare _content_type.
APPLY: dict[str, Any] = {"_content_type": "application/apply-patch+yaml"}
MERGE: dict[str, Any] = {"_content_type": "application/merge-patch+json"}


def _temporary(exc: BaseException) -> bool:
    if isinstance(exc, ApiException):
        return exc.status in (0, 429) or (exc.status or 0) >= 500
    return isinstance(exc, aiohttp.ClientError | asyncio.TimeoutError | OSError)


async def load_kube_client(settings: Settings) -> client.ApiClient:
    """An ApiClient from KUBECONFIG, else the in-cluster service account, else ~/.kube/config."""
    if settings.kubeconfig:
        await kconfig.load_kube_config(config_file=settings.kubeconfig)
        return client.ApiClient()
    try:
        kconfig.load_incluster_config()  # type: ignore[no-untyped-call]  # untyped upstream
    except kconfig.ConfigException:
        await kconfig.load_kube_config()
    return client.ApiClient()


class ArgoCD:
    """Applications in one Argo CD namespace, through one ApiClient."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.api_client = api_client
        self.api = client.CustomObjectsApi(api_client)
        self.namespace = namespace

    async def close(self) -> None:
        await self.api_client.close()

    async def _do(self, what: str, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except Exception as exc:
            if _temporary(exc):
                raise ClusterUnavailable(f"{what}: {exc}") from exc
            raise

    async def get(self, name: str) -> ObservedApp | None:
        try:
            obj: dict[str, Any] = await self._do(
                f"get Application {name}",
                self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name),
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return app_from_object(obj)

    async def apply(self, manifest: dict[str, Any]) -> None:
        """Create or update the Application in one server-side apply.

        Returns nothing: kubernetes-asyncio 36.1 decodes a PATCH's 201 (created) as None, and the
        sync needs nothing from the answer.
        """
        name = manifest["metadata"]["name"]
        await self._do(
            f"apply Application {name}",
            self.api.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                name,
                manifest,
                field_manager=FIELD_MANAGER,
                force=True,
                **APPLY,
            ),
        )

    async def annotate(self, name: str, annotations: dict[str, str]) -> bool:
        """Merge the annotations into the Application; False when it is gone."""
        body = {"metadata": {"annotations": annotations}}
        try:
            await self._do(
                f"annotate Application {name}",
                self.api.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    name,
                    body,
                    field_manager=STATE_MANAGER,
                    **MERGE,
                ),
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def delete(self, name: str) -> bool:
        """Delete the Application; True when it is gone, False while its finalizer holds it."""
        try:
            result: dict[str, Any] = await self._do(
                f"delete Application {name}",
                self.api.delete_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, name
                ),
            )
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        # A Status object means it is gone; the object itself means a finalizer keeps it.
        return result.get("kind") == "Status" or not (result.get("metadata") or {}).get(
            "deletionTimestamp"
        )

    async def list_managed(self) -> list[ObservedApp]:
        result = await self._do(
            "list Applications",
            self.api.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, label_selector=f"{MANAGED_BY}={BOT}"
            ),
        )
        return [app_from_object(item) for item in result.get("items") or []]

    async def request_sync(self, name: str) -> bool:
        """Ask Argo CD to sync now: set the Application's `operation`, as `argocd app sync` does."""
        body = {"operation": {"initiatedBy": {"username": FIELD_MANAGER}, "sync": {}}}
        try:
            await self._do(
                f"request a sync of Application {name}",
                self.api.patch_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, name, body, **MERGE
                ),
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def watch(  # noqa: C901 (split when the adapter moves to bot.kubeapi)
        self, on_event: OnEvent, alive: OnAlive | None = None, timeout_seconds: int = 300
    ) -> None:
        """Call `on_event(type, object)` for every change of a managed Application, forever.

        Restarts from a fresh list when the server says the resourceVersion is gone (410), and
        backs off while the API server is unreachable.
        """
        backoff = 1.0
        version: str | None = None
        while True:
            try:
                if version is None:
                    listing = await self.api.list_namespaced_custom_object(
                        GROUP,
                        VERSION,
                        self.namespace,
                        PLURAL,
                        label_selector=f"{MANAGED_BY}={BOT}",
                    )
                    version = listing["metadata"]["resourceVersion"]
                    if alive is not None:
                        alive()
                    for item in listing.get("items") or []:
                        await on_event("SYNCED", app_from_object(item))
                async with watch.Watch() as w:
                    stream = w.stream(
                        self.api.list_namespaced_custom_object,
                        GROUP,
                        VERSION,
                        self.namespace,
                        PLURAL,
                        label_selector=f"{MANAGED_BY}={BOT}",
                        resource_version=version,
                        timeout_seconds=timeout_seconds,
                    )
                    async for event in stream:
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            if isinstance(obj, dict) and obj.get("code") == 410:
                                version = None
                                break
                            continue
                        version = obj["metadata"]["resourceVersion"]
                        if alive is not None:
                            alive()
                        await on_event(event["type"], app_from_object(obj))
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except ApiException as exc:
                if exc.status == 410:
                    version = None
                    continue
                log.warning("watching Applications failed: %s; retrying", exc.reason)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.warning("cannot reach the API server to watch Applications: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)
