"""The cluster played by files: each Application as DIR/cluster/<name>.yaml, local mode's
ClusterPort when no cluster with Argo CD's CRD answers."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import re
import uuid
from pathlib import Path
from typing import Any

import yaml

from bot.local.layout import iso, now, write_atomic
from bot.model import ObservedApp, released_finalizers
from bot.parse import app_from_object
from bot.ports import OnAlive, OnEvent

log = logging.getLogger(__name__)

WATCH_POLL_SECONDS = 0.5
NO_ARGOCD_NOTE = (
    "no Argo CD runs in local mode, so no finalizer prunes what the Application deployed "
    "(nothing was deployed); the file is removed at once"
)


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
        "# and save: the bot's watch sees it and the PR comment turns to ready. (A status\n"
        "# without `sync.revision` is taken to be about the pinned targetRevision; a new pin\n"
        "# writes that revision in, so edit the status again for the new one.)\n"
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
        write_atomic(self._path(obj["metadata"]["name"]), self.HEADER + text)

    @staticmethod
    def _bump(meta: dict[str, Any], old: dict[str, Any] | None) -> None:
        """Server-set fields, so the file reads like `kubectl get -o yaml`."""
        old_meta = (old or {}).get("metadata") or {}
        meta["uid"] = old_meta.get("uid") or str(uuid.uuid4())
        meta["creationTimestamp"] = old_meta.get("creationTimestamp") or iso(now())
        meta["resourceVersion"] = str(int(old_meta.get("resourceVersion") or 0) + 1)

    async def get(self, name: str) -> ObservedApp | None:
        obj = self._read(self._path(name))
        return None if obj is None else _observed(obj)

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
                    obj["status"] = _about_its_revision(old)
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

    async def release(self, name: str) -> bool:
        """Drop the bot's finalizer from the file. `delete` removes a file at once (nothing to
        prune here), so this only matters for a hand-written terminating one: with no
        finalizer left, it goes as it would on a cluster. False when there is no file, or no
        finalizer of the bot's in it."""
        async with self._lock:
            path = self._path(name)
            obj = self._read(path)
            if obj is None:
                return False
            meta = obj.get("metadata") or {}
            kept = released_finalizers(meta)
            if kept is None:
                return False
            meta["finalizers"] = kept
            if meta.get("deletionTimestamp") and not meta["finalizers"]:
                path.unlink(missing_ok=True)
                return True
            self._bump(meta, obj)
            self._write(obj)
        return True

    async def request_sync(self, name: str) -> bool:
        """Write the `operation` Argo CD would act on (local mode has no Argo CD to act)."""
        async with self._lock:
            obj = self._read(self._path(name))
            if obj is None:
                return False
            obj["operation"] = {
                "initiatedBy": {"username": "preview-bot"},
                "sync": {
                    "revision": (obj.get("spec") or {}).get("source", {}).get("targetRevision")
                },
            }
            self._bump(obj["metadata"], obj)
            self._write(obj)
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

    async def list_managed(self) -> list[ObservedApp]:
        """Like ArgoCD.list_managed: every Application file that parses."""
        return [_observed(obj) for _, obj in self._scan().values() if obj is not None]

    async def watch(
        self, on_event: OnEvent, alive: OnAlive | None = None, poll: float = WATCH_POLL_SECONDS
    ) -> None:
        """Like ArgoCD.watch: every change of a file (the bot's or a hand edit) is an event."""
        seen: dict[str, tuple[str, dict[str, Any] | None]] = {}
        first = True
        while True:
            current = self._scan()
            for name, (digest, obj) in current.items():
                if name in seen and seen[name][0] == digest:
                    continue
                if obj is None:
                    log.warning("%s is not a YAML mapping; ignored until fixed", self._path(name))
                else:
                    kind = "SYNCED" if first else ("MODIFIED" if name in seen else "ADDED")
                    await on_event(kind, _observed(obj))
            for name, (_, obj) in seen.items():
                if name not in current and obj is not None:
                    await on_event("DELETED", _observed(obj))
            seen, first = current, False
            if alive is not None:
                alive()
            await asyncio.sleep(poll)


def _about_its_revision(old: dict[str, Any]) -> Any:
    """The status kept across an apply. A hand-written one without `sync.revision` was about
    the revision pinned when it was written: it says so from now on, so it never speaks for a
    newer pin (Argo CD has not looked at that one yet)."""
    status = old["status"]
    sync = status.get("sync") if isinstance(status, dict) else None
    if not (isinstance(sync, dict) and sync.get("status") and not sync.get("revision")):
        return status
    pinned = ((old.get("spec") or {}).get("source") or {}).get("targetRevision")
    return {**status, "sync": {**sync, "revision": pinned}} if pinned else status


def _observed(obj: dict[str, Any]) -> ObservedApp:
    """The Application as the bot sees it. A hand-written status rarely names the revision
    Argo CD synced; it is taken to be the pinned one (the only one local mode ever applies)."""
    sync = (obj.get("status") or {}).get("sync")
    if isinstance(sync, dict) and sync.get("status") and not sync.get("revision"):
        pinned = ((obj.get("spec") or {}).get("source") or {}).get("targetRevision")
        obj = {**obj, "status": {**obj["status"], "sync": {**sync, "revision": pinned}}}
    return app_from_object(obj)
