"""bot.kubeapi against the real API server: CRUD on Applications, watches, configuration."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from bot.errors import ClusterUnavailable, PermanentError
from bot.kube import APPLICATIONS, ArgoCD
from bot.kubeapi import (
    ApiError,
    ClusterConfig,
    KubeApi,
    WatchEvent,
    in_cluster_config,
    load_config,
    unavailable,
)
from bot.model import TEARDOWN_FINALIZER, ObservedApp
from tests.rig.argocd import RESOURCES_FINALIZER
from tests.rig.kube import KubeRig
from tests.rig.net import free_port

pytestmark = pytest.mark.rig

NAMESPACES = "/api/v1/namespaces"


def application(name: str = "dex-pr-42", revision: str = "main") -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "preview-bot"},
            "finalizers": [RESOURCES_FINALIZER],
        },
        "spec": {
            "project": "default",
            "source": {
                "repoURL": "https://example.com/r.git",
                "path": "p",
                "targetRevision": revision,
            },
            "destination": {"server": "https://kubernetes.default.svc", "namespace": name},
        },
    }


async def test_server_side_apply_creates_then_updates(admin_api: KubeApi, argocd_ns: str) -> None:
    path = APPLICATIONS.path(argocd_ns, "dex-pr-42")
    created = await admin_api.apply(path, application(revision="a"), "preview-bot")
    # Unlike kubernetes_asyncio, the object comes back on create (201) too.
    assert created["spec"]["source"]["targetRevision"] == "a"
    updated = await admin_api.apply(path, application(revision="b"), "preview-bot")
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]
    assert updated["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]
    assert (await admin_api.get(path))["spec"]["source"]["targetRevision"] == "b"
    managers = {(m["manager"], m["operation"]) for m in updated["metadata"]["managedFields"]}
    assert ("preview-bot", "Apply") in managers


async def test_merge_patch_sets_and_removes_under_its_own_manager(
    admin_api: KubeApi, argocd_ns: str
) -> None:
    path = APPLICATIONS.path(argocd_ns, "dex-pr-42")
    await admin_api.apply(path, application(), "preview-bot")
    patched = await admin_api.merge_patch(
        path, {"metadata": {"annotations": {"a": "1", "b": "2"}}}, "preview-bot-state"
    )
    assert patched["metadata"]["annotations"] == {"a": "1", "b": "2"}
    patched = await admin_api.merge_patch(path, {"metadata": {"annotations": {"a": None}}})
    assert patched["metadata"]["annotations"] == {"b": "2"}
    managers = {m["manager"] for m in patched["metadata"]["managedFields"]}
    assert "preview-bot-state" in managers


async def test_list_selects_by_label(admin_api: KubeApi, argocd_ns: str) -> None:
    await admin_api.apply(APPLICATIONS.path(argocd_ns, "dex-pr-1"), application("dex-pr-1"), "t")
    other = application("other")
    other["metadata"]["labels"] = {"team": "x"}
    await admin_api.apply(APPLICATIONS.path(argocd_ns, "other"), other, "t")
    listing = await admin_api.list(
        APPLICATIONS.path(argocd_ns), "app.kubernetes.io/managed-by=preview-bot"
    )
    assert [i["metadata"]["name"] for i in listing["items"]] == ["dex-pr-1"]
    assert listing["metadata"]["resourceVersion"]
    everything = await admin_api.list(APPLICATIONS.path(argocd_ns))
    assert len(everything["items"]) == 2


async def test_delete_with_a_finalizer_is_terminating_until_it_is_dropped(
    admin_api: KubeApi, argocd_ns: str
) -> None:
    path = APPLICATIONS.path(argocd_ns, "dex-pr-42")
    await admin_api.apply(path, application(), "preview-bot")
    answer = await admin_api.delete(path)
    assert answer["kind"] == "Application"  # the object: a finalizer holds it
    assert answer["metadata"]["deletionTimestamp"]
    assert (await admin_api.get(path))["metadata"]["deletionTimestamp"]
    await admin_api.merge_patch(path, {"metadata": {"finalizers": None}})
    with pytest.raises(ApiError) as gone:
        await admin_api.get(path)
    assert gone.value.status == 404


class StaleFirstRead(KubeApi):
    """A KubeApi whose first GET answers what the object was before `change` ran: the race of
    a release with Argo CD dropping its own finalizer."""

    def __init__(self, api: KubeApi, change: Any) -> None:
        super().__init__(api.config)
        self._change = change
        self.gets = 0

    async def get(self, path: str) -> dict[str, Any]:
        self.gets += 1
        got = await super().get(path)
        if self.gets == 1:
            await self._change()
        return got


async def held_application(api: KubeApi, namespace: str) -> str:
    """dex-pr-42 applied with Argo CD's finalizer and the bot's; its path."""
    path = APPLICATIONS.path(namespace, "dex-pr-42")
    body = application()
    body["metadata"]["finalizers"] = [RESOURCES_FINALIZER, TEARDOWN_FINALIZER]
    await api.apply(path, body, "preview-bot")
    return path


async def test_release_never_clobbers_finalizers_changed_since_its_read(
    admin_api: KubeApi, argocd_ns: str
) -> None:
    path = await held_application(admin_api, argocd_ns)
    await admin_api.delete(path)

    async def argocd_pruned() -> None:
        await admin_api.merge_patch(path, {"metadata": {"finalizers": [TEARDOWN_FINALIZER]}})

    stale = StaleFirstRead(admin_api, argocd_pruned)
    try:
        # The list read first still names Argo CD's finalizer: written back blindly it would
        # put it on again. The resourceVersion makes that write a 409; the second read wins.
        assert await ArgoCD(stale, argocd_ns).release("dex-pr-42") is True
    finally:
        await stale.close()
    assert stale.gets == 2
    with pytest.raises(ApiError) as gone:
        await admin_api.get(path)
    assert gone.value.status == 404


async def test_release_of_a_live_application_drops_only_the_bots_finalizer(
    admin_api: KubeApi, argocd_ns: str
) -> None:
    path = await held_application(admin_api, argocd_ns)
    argocd = ArgoCD(admin_api, argocd_ns)
    assert await argocd.release("dex-pr-42") is True
    assert (await admin_api.get(path))["metadata"]["finalizers"] == [RESOURCES_FINALIZER]
    assert await argocd.release("dex-pr-42") is False  # nothing of ours left: no write
    assert await argocd.release("dex-pr-404") is False  # gone: nothing to release


async def test_missing_and_duplicate_objects(admin_api: KubeApi, argocd_ns: str) -> None:
    path = APPLICATIONS.path(argocd_ns, "dex-pr-404")
    for call in (
        admin_api.get(path),
        admin_api.merge_patch(path, {"metadata": {"annotations": {"a": "1"}}}),
        admin_api.delete(path),
    ):
        with pytest.raises(ApiError) as missing:
            await call
        assert (missing.value.status, missing.value.reason) == (404, "Not Found")
        assert missing.value.body["reason"] == "NotFound"
        assert "dex-pr-404" in str(missing.value)
    await admin_api.create(APPLICATIONS.path(argocd_ns), application())
    with pytest.raises(ApiError) as taken:
        await admin_api.create(APPLICATIONS.path(argocd_ns), application())
    assert taken.value.status == 409
    invalid = application("dex-pr-43")
    invalid["spec"]["source"]["repoURL"] = 5
    with pytest.raises(ApiError) as rejected:
        await admin_api.create(APPLICATIONS.path(argocd_ns), invalid)
    assert rejected.value.status == 422
    assert "spec.source.repoURL" in str(rejected.value)


async def collect(api: KubeApi, path: str, version: str, seconds: int) -> list[WatchEvent]:
    events: list[WatchEvent] = []
    async with api.watch(path, version, timeout_seconds=seconds) as stream:
        async for event in stream:
            events.append(event)
    return events


async def test_watch_delivers_changes_then_bookmarks(admin_api: KubeApi, argocd_ns: str) -> None:
    apps = APPLICATIONS.path(argocd_ns)
    version = (await admin_api.list(apps))["metadata"]["resourceVersion"]
    # The server ends the watch after timeoutSeconds, sending a bookmark shortly before.
    watching = asyncio.create_task(collect(admin_api, apps, version, 4))
    path = APPLICATIONS.path(argocd_ns, "dex-pr-42")
    await admin_api.apply(path, application(), "preview-bot")
    await admin_api.merge_patch(path, {"metadata": {"annotations": {"a": "1"}}})
    await admin_api.merge_patch(path, {"metadata": {"finalizers": None}})
    await admin_api.delete(path)
    events = await asyncio.wait_for(watching, 30)

    changes = [(e.type, e.object["metadata"]["name"]) for e in events if e.type != "BOOKMARK"]
    assert changes == [
        ("ADDED", "dex-pr-42"),
        ("MODIFIED", "dex-pr-42"),
        ("MODIFIED", "dex-pr-42"),
        ("DELETED", "dex-pr-42"),
    ]
    bookmarks = [e for e in events if e.type == "BOOKMARK"]
    assert bookmarks, "no bookmark before the watch ended"
    assert bookmarks[-1].object["kind"] == "Application"
    assert bookmarks[-1].object["metadata"]["resourceVersion"]


async def test_watch_from_a_version_too_old_is_gone(admin_api: KubeApi, argocd_ns: str) -> None:
    with pytest.raises(ApiError) as gone:
        await collect(admin_api, APPLICATIONS.path(argocd_ns), "1", 5)
    assert gone.value.status == 410


async def test_a_watch_event_larger_than_aiohttps_line_limit(
    admin_api: KubeApi, argocd_ns: str
) -> None:
    apps = APPLICATIONS.path(argocd_ns)
    version = (await admin_api.list(apps))["metadata"]["resourceVersion"]
    big = application()
    big["metadata"]["annotations"] = {"big": "x" * 200_000}  # aiohttp's readline stops at 128 KiB
    async with admin_api.watch(apps, version, timeout_seconds=10) as stream:
        await admin_api.apply(APPLICATIONS.path(argocd_ns, "dex-pr-42"), big, "preview-bot")
        event = await anext(aiter(stream))
    assert event.type == "ADDED"
    assert event.object["metadata"]["annotations"]["big"] == "x" * 200_000


class StaleFirstList(KubeApi):
    """Hands out a long-compacted version from its first list, as after a long disconnect."""

    lists = 0

    async def list(
        self, path: str, label_selector: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        result = await super().list(path, label_selector, limit)
        self.lists += 1
        if self.lists == 1:
            result["metadata"]["resourceVersion"] = "1"
        return result


async def test_adapter_watch_lists_again_after_410(kube: KubeRig, argocd_ns: str) -> None:
    async with StaleFirstList(kube.kubeapi().config) as api:
        argocd = ArgoCD(api, argocd_ns)
        await api.apply(APPLICATIONS.path(argocd_ns, "dex-pr-1"), application("dex-pr-1"), "t")
        seen: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        beats = 0

        async def on_event(kind: str, app: ObservedApp) -> None:
            await seen.put((kind, app.name))

        def alive() -> None:
            nonlocal beats
            beats += 1

        watching = asyncio.create_task(argocd.watch(on_event, alive, timeout_seconds=30))
        try:
            async with asyncio.timeout(20):
                first, second = await seen.get(), await seen.get()
                await api.merge_patch(
                    APPLICATIONS.path(argocd_ns, "dex-pr-1"),
                    {"metadata": {"annotations": {"a": "1"}}},
                )
                third = await seen.get()
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
    assert [first, second, third] == [
        ("SYNCED", "dex-pr-1"),  # the stale list
        ("SYNCED", "dex-pr-1"),  # the watch said 410: listed again
        ("MODIFIED", "dex-pr-1"),
    ]
    assert api.lists == 2
    assert beats >= 3  # two lists and one event


async def test_in_cluster_config_reads_a_rotated_token(
    kube: KubeRig, tmp_path: Path, argocd_ns: str
) -> None:
    """A pod's view: KUBERNETES_SERVICE_HOST/PORT, a bound service-account token and the CA."""
    minted = await kube.make_service_account_kubeconfig("argocd", "preview-bot")
    (tmp_path / "token").write_text(minted["users"][0]["user"]["token"])
    (tmp_path / "ca.crt").write_bytes(kube.ca_path.read_bytes())
    host, port = kube.server.removeprefix("https://").split(":")
    env = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}
    async with KubeApi(in_cluster_config(env, tmp_path)) as api:
        with pytest.raises(ApiError) as forbidden:  # authenticated, not authorized
            await api.list(APPLICATIONS.path(argocd_ns))
        assert forbidden.value.status == 403
        assert "system:serviceaccount:argocd:preview-bot" in str(forbidden.value)
        # The kubelet swaps in a new token (here: the admin's); the next request uses it.
        (tmp_path / "token.new").write_text(kube.token)
        (tmp_path / "token.new").replace(tmp_path / "token")
        assert (await api.list(APPLICATIONS.path(argocd_ns)))["items"] == []


async def test_kubeconfig_file_with_an_exec_plugin(kube: KubeRig, tmp_path: Path) -> None:
    """exec credentials go through kubernetes_asyncio's loader; the plugin's token is used."""
    plugin = tmp_path / "plugin.py"
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "kind": "ExecCredential",
        "status": {"token": kube.token},
    }
    plugin.write_text(f"print({json.dumps(json.dumps(credential))})\n")
    doc = dict(kube.kubeconfig)
    doc["users"] = [
        {
            "name": "admin",
            "user": {
                "exec": {
                    "apiVersion": "client.authentication.k8s.io/v1beta1",
                    "command": sys.executable,
                    "args": [str(plugin)],
                }
            },
        }
    ]
    doc["contexts"] = [{"name": "admin", "context": {"cluster": "envtest", "user": "admin"}}]
    doc["current-context"] = "admin"
    (tmp_path / "config").write_text(yaml.safe_dump(doc))
    config = await load_config(str(tmp_path / "config"))
    assert "credentials from a plugin" in config.source
    async with KubeApi(config) as api:
        names = {ns["metadata"]["name"] for ns in (await api.list(NAMESPACES))["items"]}
    assert "argocd" in names


@pytest.fixture
async def flaky_server() -> AsyncIterator[tuple[str, list[int | bytes]]]:
    """An HTTP server answering each request with the next item of a list the test fills: a
    status (with a Status body), or bytes streamed as a 200 (a watch)."""
    answers: list[int | bytes] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        item = answers.pop(0)
        if isinstance(item, bytes):
            stream = web.StreamResponse()
            await stream.prepare(request)
            await stream.write(item)
            return stream
        headers = {"Retry-After": "7"} if item == 429 else {}
        body = {"kind": "Status", "code": item, "message": f"injected {item}"}
        return web.json_response(body, status=item, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", answers
    finally:
        await runner.cleanup()


async def test_a_watch_cut_inside_an_event_is_a_network_failure(
    flaky_server: tuple[str, list[int | bytes]],
) -> None:
    url, answers = flaky_server
    obj: dict[str, Any] = {"metadata": {"name": "a", "resourceVersion": "5"}}
    event = {"type": "ADDED", "object": obj}
    answers.append(json.dumps(event).encode() + b"\n" + b'{"type": "MODIFIED", "obj')
    seen: list[WatchEvent] = []

    async def drain(api: KubeApi) -> None:
        async with api.watch(APPLICATIONS.path("argocd"), "4") as events:
            async for item in events:
                seen.append(item)

    async with KubeApi(ClusterConfig(url, ssl_context=False)) as api:
        with pytest.raises(aiohttp.ClientPayloadError) as cut:
            await drain(api)
    assert seen == [WatchEvent("ADDED", obj)]
    assert unavailable(cut.value)  # the adapter retries it like any dropped connection


async def test_adapter_turns_429_5xx_and_unreachable_into_cluster_unavailable(
    flaky_server: tuple[str, list[int | bytes]],
) -> None:
    url, statuses = flaky_server
    async with KubeApi(ClusterConfig(url, ssl_context=False)) as api:
        argocd = ArgoCD(api, "argocd")
        statuses += [429, 503, 403]
        with pytest.raises(ClusterUnavailable) as limited:
            await argocd.get("dex-pr-1")
        assert limited.value.retry_after == 7.0
        with pytest.raises(ClusterUnavailable, match="injected 503"):
            await argocd.apply(application("dex-pr-1"))
        with pytest.raises(PermanentError) as refused:  # not the cluster's fault: said once
            await argocd.list_managed()
        assert refused.value.status == 403
    async with KubeApi(ClusterConfig(f"http://127.0.0.1:{free_port()}", False)) as api:
        with pytest.raises(ClusterUnavailable, match="annotate Application dex-pr-1"):
            await ArgoCD(api, "argocd").annotate("dex-pr-1", {"a": "1"})
