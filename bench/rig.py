"""The rig for the end-to-end benchmarks (scale.py, request_counts.py): a real `preview-bot serve`.

One real kube-apiserver + etcd (tests.rig.kube, Argo CD's CRDs installed), the GitHub fake over
HTTP (tests.rig.github; its OpenAPI contract checks are off: they cost 2-20 ms per request and
would measure the checker, not the bot), the Argo CD stand-in finishing deletions, and the bot
as in production: `python -m bot serve` in its own process, configured by environment, logging
JSON lines to a file, taking signed webhooks over HTTP. The bench process plays GitHub (the
fake, in its event loop) and Argo CD; the bot process is measured (RSS from /proc).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client import ApiClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.model import A_HEAD_SHA  # noqa: E402
from bot.webhooks import delivery_headers  # noqa: E402
from tests.rig.argocd import ArgoCDStandIn  # noqa: E402
from tests.rig.github.server import FakeGitHub  # noqa: E402
from tests.rig.harness import skeleton_files  # noqa: E402
from tests.rig.kube import KubeRig, _start_rig  # noqa: E402
from tests.rig.net import free_port  # noqa: E402

SECRET = "bench-webhook-secret"
NAMESPACE = "argocd"
LABEL = "preview"


def proc_status(pid: int, field_name: str) -> float:
    """A memory figure of /proc/<pid>/status (VmRSS, VmHWM) in MiB; 0 once the process is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) / 1024
    return 0.0


# Several repositories: names must carry the repository (the bot refuses to start otherwise).
NAME_TEMPLATE = "{repo}-pr-{number}"
TEMPLATES = {
    "PREVIEW_BOT_APP_NAME_TEMPLATE": NAME_TEMPLATE,
    "PREVIEW_BOT_NAMESPACE_TEMPLATE": NAME_TEMPLATE,
}


def app_name(repo: str, number: int) -> str:
    """The Application of a PR under NAME_TEMPLATE."""
    return NAME_TEMPLATE.format(repo=repo.lower(), number=number)


@dataclass
class BotProcess:
    """`python -m bot serve` against the rig; its log is JSON lines in a file."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def count(self, prefix: str) -> int:
        """How many log lines have a message starting with `prefix` (no JSON parsing: cheap
        enough to poll; the bot writes compact JSON, no space after the colon)."""
        return self.log.read_text(errors="replace").count(f'"msg":"{prefix}')

    def rss(self) -> float:
        return proc_status(self.pid, "VmRSS")

    def peak(self) -> float:
        return proc_status(self.pid, "VmHWM")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Rig:
    """The running parts; see the module docstring."""

    kube: KubeRig
    fake: FakeGitHub
    api_client: ApiClient
    tmp: Path
    http: aiohttp.ClientSession
    bots: list[BotProcess] = field(default_factory=list)
    # When each (Application name, head sha annotation) was first seen by the watch.
    seen: dict[tuple[str, str], float] = field(default_factory=dict)
    present: set[str] = field(default_factory=set)

    def start_bot(self, repositories: str, **env: str) -> BotProcess:
        key = self.tmp / "app-key.pem"
        key.write_text(self.fake.private_key_pem)
        port = free_port()
        log = self.tmp / f"bot-{len(self.bots)}.log"
        environment = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "GITHUB_APP_ID": str(self.fake.app_id),
            "GITHUB_PRIVATE_KEY_FILE": str(key),
            "GITHUB_WEBHOOK_SECRET": SECRET,
            "GITHUB_API_URL": self.fake.url,
            "KUBECONFIG": str(self.kube.kubeconfig_path),
            "PREVIEW_BOT_ARGOCD_NAMESPACE": NAMESPACE,
            "PREVIEW_BOT_REPOSITORIES": repositories,
            **env,
        }
        command = [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(port)]
        with log.open("w") as out:
            proc = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=out, stderr=out)
        bot = BotProcess(proc, port, log)
        self.bots.append(bot)
        return bot

    async def wait_listening(self, bot: BotProcess, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if bot.proc.poll() is not None:
                raise RuntimeError(f"the bot exited:\n{bot.log.read_text()[-3000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with self.http.get(f"http://127.0.0.1:{bot.port}/healthz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the bot did not listen within {within}s")

    async def post(self, bot: BotProcess, event: str, payload: dict[str, Any]) -> int:
        body = json.dumps(payload).encode()
        headers = delivery_headers(SECRET, event, body)
        url = f"http://127.0.0.1:{bot.port}/webhook"
        async with self.http.post(url, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status

    async def quiet(
        self, seconds: float, until: Callable[[], bool] = lambda: True, limit: float = 1800.0
    ) -> float:
        """Wait until `until()` holds and the fake saw no request for `seconds`; returns the
        time of the last request (monotonic) so callers can time the work itself."""
        deadline = time.monotonic() + limit
        count, last = len(self.fake.requests), time.monotonic()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            if len(self.fake.requests) != count:
                count, last = len(self.fake.requests), now
            elif until() and now - last >= seconds:
                return last
        raise TimeoutError(f"not settled within {limit}s")

    async def wait_for(self, check: Callable[[], bool], limit: float, what: str) -> None:
        deadline = time.monotonic() + limit
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {limit}s")
            await asyncio.sleep(0.05)

    async def watch_applications(self) -> None:
        """Record when each Application first shows each head sha (and which exist)."""
        api = client.CustomObjectsApi(self.api_client)
        version = ""
        while True:
            listed = await api.list_namespaced_custom_object(
                "argoproj.io", "v1alpha1", NAMESPACE, "applications"
            )
            for obj in listed["items"]:
                self._record(obj, "ADDED")
            version = listed["metadata"]["resourceVersion"]
            with contextlib.suppress(client.ApiException, aiohttp.ClientError):
                async with watch.Watch() as w:
                    async for event in w.stream(
                        api.list_namespaced_custom_object,
                        "argoproj.io",
                        "v1alpha1",
                        NAMESPACE,
                        "applications",
                        resource_version=version,
                        timeout_seconds=300,
                        allow_watch_bookmarks=False,
                    ):
                        self._record(event["object"], event["type"])

    def _record(self, obj: dict[str, Any], kind: str) -> None:
        meta = obj.get("metadata", {})
        name = meta.get("name", "")
        if kind == "DELETED":
            self.present.discard(name)
            return
        self.present.add(name)
        sha = (meta.get("annotations") or {}).get(A_HEAD_SHA, "")
        self.seen.setdefault((name, sha), time.monotonic())


@contextlib.asynccontextmanager
async def rig() -> AsyncIterator[Rig]:
    """Start every part (the control plane takes ~10-30 s); stop them all afterwards."""
    plane, kube = await asyncio.to_thread(_start_rig)
    fake = FakeGitHub(contract=False)
    tmp = Path(tempfile.mkdtemp(prefix="bench-rig-"))
    try:
        await fake.start()
        api_client = await kube.api_client()
        async with (
            aiohttp.ClientSession() as http,
            ArgoCDStandIn(api_client, NAMESPACE),
        ):
            the_rig = Rig(kube, fake, api_client, tmp, http)
            watcher = asyncio.create_task(the_rig.watch_applications())
            try:
                yield the_rig
            finally:
                for bot in the_rig.bots:
                    bot.stop()
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watcher
        await api_client.close()
    finally:
        await fake.stop()
        plane.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def run(main: Coroutine[Any, Any, None]) -> None:
    """asyncio.run, with SIGTERM (and SIGINT, which a background job ignores) stopping the bot
    process and the control plane cleanly."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    asyncio.run(main)


def make_repository(fake: FakeGitHub, owner: str, name: str) -> None:
    """A DEX-style repository (base + overlays/preview) whose PR authors may label."""
    fake.create_repo(owner, name, files=skeleton_files())
    fake.set_permission(owner, name, "octocat", "write")


def open_labeled_pulls(fake: FakeGitHub, owner: str, name: str, numbers: Iterator[int]) -> None:
    for number in numbers:
        fake.create_pull(owner, name, number, labels=(LABEL,))
