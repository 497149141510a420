"""An Argo CD stand-in for the test API server: writes Application status and finishes deletions."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client import ApiClient, ApiException

GROUP = "argoproj.io"
VERSION = "v1alpha1"
PLURAL = "applications"
# Argo CD's cascade-delete finalizer; "/background" and "/foreground" select the deletion
# propagation, all three mean "prune the app's resources, then let the Application go".
RESOURCES_FINALIZER = "resources-finalizer.argocd.argoproj.io"
# The name Argo CD's controller writes under, so managedFields look like a real cluster's.
FIELD_MANAGER = "argocd-application-controller"
MERGE_PATCH = "application/merge-patch+json"
# Argo CD keeps this many history entries by default (spec.revisionHistoryLimit).
HISTORY_LIMIT = 10

SyncStatus = Literal["Synced", "OutOfSync", "Unknown"]
HealthStatus = Literal["Healthy", "Progressing", "Degraded", "Missing", "Suspended", "Unknown"]
OperationPhase = Literal["Running", "Terminating", "Succeeded", "Failed", "Error"]

# Messages of the kind Argo CD's controller writes into operationState.message.
DEFAULT_MESSAGES: dict[str, str] = {
    "Running": "one or more tasks are running",
    "Terminating": "operation is terminating",
    "Succeeded": "successfully synced (all tasks run)",
    "Failed": "one or more synchronization tasks completed unsuccessfully",
    "Error": "an error occurred during the sync operation",
}
_FINISHED = {"Succeeded", "Failed", "Error"}


def _now() -> str:
    # metav1.Time marshals as RFC 3339 with second precision in UTC.
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _source_fields(spec: dict[str, Any]) -> dict[str, Any]:
    # Single- and multi-source Applications: Argo CD mirrors whichever the spec uses.
    return {key: copy.deepcopy(spec[key]) for key in ("source", "sources") if key in spec}


def is_resources_finalizer(finalizer: str) -> bool:
    return finalizer == RESOURCES_FINALIZER or finalizer.startswith(RESOURCES_FINALIZER + "/")


class ArgoCDStandIn:
    """Plays Argo CD's application controller against Applications in one namespace.

    Use the methods directly, or `async with ArgoCDStandIn(api) as argocd:` to also run a
    watch that finishes every deletion (drops the resources finalizer) like a healthy Argo CD,
    except for names marked with `stick(name)` (an Argo CD that cannot prune).
    """

    def __init__(
        self,
        api_client: ApiClient,
        namespace: str = "argocd",
        *,
        stuck: Iterable[str] = (),
        autopilot: bool = False,
    ) -> None:
        self.namespace = namespace
        self._api = client.CustomObjectsApi(api_client)
        self._stuck = set(stuck)
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._listed = asyncio.Event()
        self._error: BaseException | None = None
        self.finished: list[str] = []  # names whose deletion this stand-in completed, in order
        # autopilot: every Application soon reports Synced and Healthy at the revision its
        # spec names (a healthy Argo CD and a good image), and the loops ride out API server
        # outages instead of failing (the chaos test stops the API server on purpose).
        self.autopilot = autopilot
        self._syncs: asyncio.Queue[str] = asyncio.Queue()

    # -- status -------------------------------------------------------------------------------

    async def get(self, name: str) -> dict[str, Any]:
        app: dict[str, Any] = await self._api.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )
        return app

    async def find(self, name: str) -> dict[str, Any] | None:
        """The Application, or None when it does not exist."""
        try:
            return await self.get(name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def set_status(
        self,
        name: str,
        *,
        sync: SyncStatus = "Synced",
        health: HealthStatus = "Healthy",
        revision: str | None = None,
        operation_phase: OperationPhase | None = None,
        message: str | None = None,
    ) -> dict[str, Any]:
        """Write `.status` as Argo CD 3.x does and return the updated Application.

        `revision` is the commit SHA Argo CD resolved (status.sync.revision; kept when None).
        With `operation_phase`, `.status.operationState` describes an automated sync of that
        revision; `message` is that operation's message (Argo CD's usual text when None).
        Without it, operationState is left as it was, as Argo CD does between syncs.
        """
        if message is not None and operation_phase is None:
            raise ValueError("message belongs to operationState: pass operation_phase too")

        def build(app: dict[str, Any]) -> dict[str, Any]:
            return self._status_patch(app, sync, health, revision, operation_phase, message)

        return await self._patch_with_retry(name, build)

    def _status_patch(
        self,
        app: dict[str, Any],
        sync: SyncStatus,
        health: HealthStatus,
        revision: str | None,
        phase: OperationPhase | None,
        message: str | None,
    ) -> dict[str, Any]:
        now = _now()
        spec: dict[str, Any] = app.get("spec", {})
        old: dict[str, Any] = app.get("status") or {}
        source_fields = _source_fields(spec)

        compared: dict[str, Any] = {"destination": copy.deepcopy(spec.get("destination", {}))}
        compared.update(source_fields)
        sync_status: dict[str, Any] = {"status": sync, "comparedTo": compared}
        if revision is not None:
            sync_status["revision"] = revision

        health_status: dict[str, Any] = {"status": health}
        # Argo CD 3.x moves lastTransitionTime only when the health status changes.
        old_health = old.get("health") or {}
        if old_health.get("status") != health or "lastTransitionTime" not in old_health:
            health_status["lastTransitionTime"] = now

        status: dict[str, Any] = {
            "sync": sync_status,
            "health": health_status,
            "reconciledAt": now,
            "controllerNamespace": self.namespace,
        }
        if phase is not None:
            status.update(self._operation_status(spec, old, revision, phase, message, now))
        return {"status": status}

    def _operation_status(
        self,
        spec: dict[str, Any],
        old: dict[str, Any],
        revision: str | None,
        phase: OperationPhase,
        message: str | None,
        now: str,
    ) -> dict[str, Any]:
        old_op: dict[str, Any] = old.get("operationState") or {}
        sync_rev = (
            revision
            or (old.get("sync") or {}).get("revision")
            or (spec.get("source") or {}).get("targetRevision", "HEAD")
        )
        # A finishing operation keeps the start time of the running one it completes.
        started = (
            old_op.get("startedAt") if old_op.get("phase") in ("Running", "Terminating") else None
        )
        policy: dict[str, Any] = spec.get("syncPolicy") or {}
        sync_op: dict[str, Any] = {"revision": sync_rev}
        if (policy.get("automated") or {}).get("prune"):
            sync_op["prune"] = True
        if policy.get("syncOptions"):
            sync_op["syncOptions"] = list(policy["syncOptions"])
        source_fields = _source_fields(spec)

        op_state: dict[str, Any] = {
            "operation": {
                "sync": sync_op,
                "initiatedBy": {"automated": True},
                "retry": copy.deepcopy(policy.get("retry") or {"limit": 5}),
            },
            "phase": phase,
            "message": message if message is not None else DEFAULT_MESSAGES[phase],
            "startedAt": started or now,
            # Argo CD writes operationState whole; null clears what a merge patch would keep.
            "finishedAt": now if phase in _FINISHED else None,
            # An Error (e.g. manifest generation failed) never got as far as a sync result.
            "syncResult": None if phase == "Error" else {"revision": sync_rev, **source_fields},
        }
        result: dict[str, Any] = {"operationState": op_state}
        if phase == "Succeeded":
            history: list[dict[str, Any]] = list(old.get("history") or [])
            history.append(
                {
                    "id": max((h.get("id", 0) for h in history), default=-1) + 1,
                    "revision": sync_rev,
                    "deployStartedAt": op_state["startedAt"],
                    "deployedAt": now,
                    "initiatedBy": {"automated": True},
                    **source_fields,
                }
            )
            limit = spec.get("revisionHistoryLimit", HISTORY_LIMIT)
            result["history"] = history[-limit:]
        return result

    async def _patch_with_retry(
        self, name: str, build: Callable[[dict[str, Any]], dict[str, Any] | None]
    ) -> dict[str, Any]:
        """Read, compute a merge patch, write it guarded by resourceVersion; retry on 409.

        The CRD has no status subresource, so status goes onto the object itself, and the
        resourceVersion precondition keeps us from computing it from a stale read.
        """
        for _ in range(10):
            app = await self.get(name)
            patch = build(app)
            if patch is None:
                return app
            patch.setdefault("metadata", {})["resourceVersion"] = app["metadata"]["resourceVersion"]
            try:
                # The bundled stubs omit _content_type, which the runtime accepts; without it
                # a dict body is sent as a JSON patch and the server answers 400.
                result: dict[str, Any] = await self._api.patch_namespaced_custom_object(  # type: ignore[call-arg]
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    name,
                    patch,
                    field_manager=FIELD_MANAGER,
                    _content_type=MERGE_PATCH,
                )
            except ApiException as exc:
                if exc.status == 409:
                    continue
                raise
            return result
        raise RuntimeError(f"Application {name}: gave up after 10 conflicting writes")

    # -- deletion -----------------------------------------------------------------------------

    async def finish_deletion(self, name: str) -> bool:
        """Finish a pending cascade deletion as Argo CD does once it pruned the app's resources.

        Returns True when the resources finalizer was removed (the object then goes away
        unless other finalizers remain), False when there was nothing to do: the
        Application is gone, not being deleted, or does not carry the finalizer.
        """
        removed = False

        def build(app: dict[str, Any]) -> dict[str, Any] | None:
            nonlocal removed
            meta = app["metadata"]
            finalizers: list[str] = meta.get("finalizers") or []
            kept = [f for f in finalizers if not is_resources_finalizer(f)]
            removed = bool(meta.get("deletionTimestamp")) and kept != finalizers
            # Resources live elsewhere (no Argo CD here), so "pruning" has nothing to delete.
            return {"metadata": {"finalizers": kept}} if removed else None

        try:
            await self._patch_with_retry(name, build)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return removed

    def stick(self, name: str) -> None:
        """Leave `name` undeleted (as if pruning failed) until `unstick`."""
        self._stuck.add(name)

    def unstick(self, name: str) -> None:
        """Let `name` go again; a deletion pending meanwhile is finished by the running loop."""
        self._stuck.discard(name)
        self._queue.put_nowait(name)

    async def wait_gone(self, name: str, within: float = 10.0) -> None:
        """Wait up to `within` seconds until Application `name` no longer exists."""
        await self._wait(lambda: self._exists(name, want=False), within, f"{name} still exists")

    async def _exists(self, name: str, *, want: bool) -> bool:
        try:
            await self.get(name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return not want
        return want

    async def _wait(self, check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
        deadline = time.monotonic() + within
        while not await check():
            if self._error is not None:
                raise RuntimeError("the Argo CD stand-in loop failed") from self._error
            if time.monotonic() > deadline:
                raise TimeoutError(f"after {within}s: {what}")
            await asyncio.sleep(0.05)

    # -- background loop ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._error = None
        self._listed.clear()
        self._tasks = [
            asyncio.create_task(self._guard(self._watch_loop())),
            asyncio.create_task(self._guard(self._worker())),
        ]
        if self.autopilot:
            self._tasks.append(asyncio.create_task(self._guard(self._syncer())))
        # Return only once the first list is done, so a failure (e.g. RBAC) shows here.
        try:
            await self._wait(self._listed_yet, 10.0, "initial list of Applications")
        except BaseException:
            await self._stop()
            raise
        return self

    async def _listed_yet(self) -> bool:
        return self._listed.is_set()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()
        # A loop failure would otherwise pass unnoticed; don't mask the test's own error.
        if self._error is not None and exc is None:
            raise RuntimeError("the Argo CD stand-in loop failed") from self._error

    async def _stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _guard(self, loop: Awaitable[None]) -> None:
        try:
            await loop
        except Exception as exc:  # recorded for _wait and __aexit__; cancellation passes
            self._error = exc
            raise

    def _consider(self, app: dict[str, Any]) -> None:
        meta = app.get("metadata", {})
        if meta.get("deletionTimestamp") and any(
            is_resources_finalizer(f) for f in meta.get("finalizers") or []
        ):
            self._queue.put_nowait(meta["name"])
        elif self.autopilot and not meta.get("deletionTimestamp"):
            wanted = (app.get("spec", {}).get("source") or {}).get("targetRevision")
            status = app.get("status") or {}
            synced = (status.get("sync") or {}).get("revision")
            healthy = (status.get("health") or {}).get("status") == "Healthy"
            if wanted and (synced != wanted or not healthy):
                self._syncs.put_nowait(meta["name"])

    async def _watch_loop(self) -> None:
        while True:
            try:
                await self._watch_once()
            except (TimeoutError, OSError, aiohttp.ClientError, ApiException) as exc:
                if not self.autopilot:
                    raise
                if isinstance(exc, ApiException) and exc.status not in (0, 410, 500, 503, 504):
                    raise
                await asyncio.sleep(0.5)  # the API server is away: come back when it is

    async def _syncer(self) -> None:
        """Autopilot: report each waiting Application synced and healthy at its revision."""
        while True:
            name = await self._syncs.get()
            await asyncio.sleep(0.2)  # Argo CD takes a moment to reconcile
            try:
                app = await self.find(name)
                if app is None or app.get("metadata", {}).get("deletionTimestamp"):
                    continue
                revision = (app.get("spec", {}).get("source") or {}).get("targetRevision")
                await self.set_status(
                    name,
                    sync="Synced",
                    health="Healthy",
                    revision=revision,
                    operation_phase="Succeeded",
                )
            except (TimeoutError, OSError, aiohttp.ClientError, ApiException):
                await asyncio.sleep(0.5)
                self._syncs.put_nowait(name)  # try again once the API server is back

    async def _watch_once(self) -> None:
        listing = await self._api.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL
        )
        for app in listing["items"]:
            self._consider(app)
        self._listed.set()
        resource_version = listing["metadata"]["resourceVersion"]
        try:
            async with watch.Watch() as stream:
                async for event in stream.stream(
                    self._api.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    resource_version=resource_version,
                    timeout_seconds=60,
                    allow_watch_bookmarks=True,
                ):
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._consider(event["raw_object"])
        except ApiException as exc:
            if exc.status != 410:  # 410 Gone: our resourceVersion expired, re-list
                raise
        # The server ended the watch (timeout) or it expired: re-list and watch again.

    async def _worker(self) -> None:
        while True:
            name = await self._queue.get()
            if name in self._stuck:
                continue
            try:
                done = await self.finish_deletion(name)
            except (TimeoutError, OSError, aiohttp.ClientError, ApiException):
                if not self.autopilot:
                    raise
                await asyncio.sleep(0.5)  # the API server is away: try again when it is back
                self._queue.put_nowait(name)
                continue
            if done:
                self.finished.append(name)
