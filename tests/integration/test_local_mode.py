"""The README's walkthrough, automated: `serve --local` and `simulate` run as a user runs them.

The server is a real subprocess on a free port; the test only polls the files a user would
look at (the git repository, DIR/cluster, DIR/prs), with bounded timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes_asyncio.client import ApiClient

from bot.config import Settings
from bot.local.simulate import Request, simulate
from bot.model import A_HEAD_SHA
from bot.parse import pull_from_api
from bot.render import render_application
from tests.rig.artifacts import validate_webhook
from tests.rig.kube import KubeRig
from tests.rig.kustomize import build_and_validate
from tests.rig.net import free_port, stop_process

OVERLAY = "infra/argocd/previews/pr-7/kustomization.yaml"
APP = "dex-pr-7"
WAIT = 30.0  # seconds any one effect may take before the test gives up
T = TypeVar("T")


def _cli() -> list[str]:
    """The installed `preview-bot` command of this venv, else the module."""
    script = Path(sys.executable).parent / "preview-bot"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bot"]


def _clean_env(**extra: str) -> dict[str, str]:
    # The developer's own settings must not leak into the walkthrough.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREVIEW_BOT_", "GITHUB_")) and k != "KUBECONFIG"
    }
    env.update(extra)
    return env


@dataclass
class LocalServer:
    """A running `preview-bot serve --local DIR` and helpers to drive and inspect it."""

    dir: Path
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def simulate(self, *args: str) -> str:
        done = subprocess.run(
            [*_cli(), "simulate", *args, "--pr", "7", "--dir", str(self.dir)],
            capture_output=True,
            text=True,
            timeout=WAIT,
            env=self.env,
            check=False,
        )
        assert done.returncode == 0, f"simulate {args}: {done.stdout}{done.stderr}"
        return done.stdout

    def check_payload(self, action: str) -> dict[str, Any]:
        """What `simulate ACTION` would send, validated against GitHub's schema.

        In-process (`--print-only` through the function): it changes nothing, and saves a
        second of interpreter start per call.
        """
        out = io.StringIO()
        assert simulate(self.dir, Request(action, 7, print_only=True), out) == 0
        payload: dict[str, Any] = json.loads(out.getvalue())
        validate_webhook("pull_request", payload)
        return payload

    def head(self) -> str:
        state = json.loads((self.dir / "github" / "pr-7.json").read_text())
        return str(state["head_sha"])

    def git(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            ["git", "-C", str(self.dir / "repo"), *args],
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
        if check:
            assert done.returncode == 0, done.stderr
        return done.stdout if done.returncode == 0 else ""

    def overlay(self) -> str:
        return self.git("show", f"main:{OVERLAY}", check=False)

    def comment_history(self) -> list[str]:
        md = (
            (self.dir / "prs" / "pr-7.md").read_text()
            if (self.dir / "prs" / "pr-7.md").exists()
            else ""
        )
        return re.findall(r"^- .* · (comment \d+ \w+: .*)$", md, flags=re.MULTILINE)

    def wait(self, what: str, probe: Callable[[], T | None]) -> T:
        deadline = time.monotonic() + WAIT
        while True:
            value = probe()
            if value:
                return value
            if self.proc.poll() is not None:
                pytest.fail(
                    f"the server exited ({self.proc.returncode}) while waiting for "
                    f"{what}:\n{self.logs()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"after {WAIT:.0f}s still waiting for {what}; server log:\n{self.logs()}"
                )
            time.sleep(0.05)


@contextlib.contextmanager
def serve_local(tmp: Path, **env: str) -> Iterator[LocalServer]:
    """Start the server, wait until /readyz says ready; always stop it (terminate, then kill)."""
    directory, port = tmp / "local", free_port()
    log = tmp / "server.log"
    full_env = _clean_env(**env)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *_cli(),
                "serve",
                "--local",
                str(directory),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    server = LocalServer(directory, proc, log, full_env)
    try:

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    return bool(r.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        server.wait("/readyz to answer 200", ready)
        yield server
    finally:
        stop_process(proc)


def _expected_spec(server: LocalServer) -> dict[str, Any]:
    """The spec production would apply for the PR the server learned from its deliveries,
    pinned to the overlay commit (main's head, just after a deploy)."""
    pr = pull_from_api(json.loads((server.dir / "prs" / "pr-7.json").read_text()))
    settings = Settings(github_app_id=1, github_private_key="k", github_webhook_secret="s")
    spec: dict[str, Any] = render_application(settings, pr, "main", 1)["spec"]
    spec["source"]["targetRevision"] = server.git("rev-parse", "main").strip()
    return spec


def _build_main(server: LocalServer, dest: Path) -> list[dict[str, Any]]:
    """Build the PR's overlay as committed on main (not the working tree) with real kustomize."""
    archive = dest.with_suffix(".tar")
    subprocess.run(
        ["git", "-C", str(server.dir / "repo"), "archive", "-o", str(archive), "main"],
        check=True,
        timeout=WAIT,
    )
    if dest.exists():
        shutil.rmtree(dest)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return build_and_validate(dest / Path(OVERLAY).parent)


def test_label_push_close_walkthrough_with_files(tmp_path: Path) -> None:
    with serve_local(tmp_path, KUBECONFIG=str(tmp_path / "no-such-kubeconfig")) as server:
        app_file = server.dir / "cluster" / f"{APP}.yaml"
        assert "files under" in server.logs()

        # label: the PR opens with the trigger label -> overlay commit, Application, comment
        server.check_payload("label")
        assert "HTTP 202" in server.simulate("label")
        head = server.head()
        tag = f"sha-{head[:8]}"
        server.wait(f"the overlay with {tag} on main", lambda: tag in server.overlay())
        objs = _build_main(server, tmp_path / "build-1")
        deployment = next(o for o in objs if o["kind"] == "Deployment")
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == f"ghcr.io/data-literate/dex:{tag}"
        (namespace,) = [o for o in objs if o["kind"] == "Namespace"]
        assert namespace["metadata"]["name"] == APP
        assert {o["metadata"]["namespace"] for o in objs if o is not namespace} == {APP}

        def app_at(sha: str) -> dict[str, Any] | None:
            if not app_file.exists():
                return None
            obj = yaml.safe_load(app_file.read_text())
            return obj if obj["metadata"]["annotations"].get(A_HEAD_SHA) == sha else None

        app = server.wait("the Application file", lambda: app_at(head))
        assert app["spec"] == _expected_spec(server)
        assert app["metadata"]["finalizers"] == [
            "resources-finalizer.argocd.argoproj.io",
            "preview-bot.io/teardown",
        ]
        server.wait("the first comment", server.comment_history)

        # play Argo CD, as the file's header suggests: its watch turns the comment to ready
        with app_file.open("a") as f:
            f.write("status:\n  sync: {status: Synced}\n  health: {status: Healthy}\n")
        server.wait(
            "the ready comment", lambda: any("ready" in h for h in server.comment_history())
        )

        # push: a new commit on pr-7 -> new tag, one more overlay commit, the comment edited
        server.check_payload("push")
        server.check_payload("unlabel")
        assert "HTTP 202" in server.simulate("push")
        new_head = server.head()
        assert new_head != head
        new_tag = f"sha-{new_head[:8]}"
        server.wait(f"the overlay with {new_tag}", lambda: new_tag in server.overlay())
        _build_main(server, tmp_path / "build-2")
        app = server.wait("the Application at the new head", lambda: app_at(new_head))
        assert app["spec"] == _expected_spec(server)
        server.wait("the edited comment", lambda: len(server.comment_history()) >= 3)

        # close: everything goes
        server.check_payload("close")
        assert "HTTP 202" in server.simulate("close")
        server.check_payload("reopen")
        server.wait(
            "the destroyed comment", lambda: any("destroyed" in h for h in server.comment_history())
        )
        assert server.overlay() == ""
        assert not app_file.exists()
        assert server.git("ls-tree", "-r", "--name-only", "main").split() == [
            "README.md",
            "infra/argocd/base/deployment.yaml",
            "infra/argocd/base/kustomization.yaml",
            "infra/argocd/base/service.yaml",
            "infra/argocd/overlays/preview/ingress.yaml",
            "infra/argocd/overlays/preview/kustomization.yaml",
            # shared by every preview of the repository, so it stays
            "infra/argocd/previews/_namespace/kustomization.yaml",
            "infra/argocd/previews/_namespace/namespace.yaml",
        ]
        subjects = server.git("log", "--format=%s", "main").splitlines()
        assert subjects == [
            "chore(preview): remove dex-pr-7 for PR #7 [skip ci]",
            f"chore(preview): deploy dex-pr-7 at {new_tag} for PR #7 [skip ci]",
            f"chore(preview): deploy dex-pr-7 at {tag} for PR #7 [skip ci]",
            "chore(preview): add the shared preview Namespace component [skip ci]",
            "chore(preview): add the shared preview Namespace component [skip ci]",
            "Initial commit: DEX-style infra tree (base + overlays/preview)",
        ]
        assert server.comment_history() == [
            "comment 1 created: 🚧 Preview deploying",
            "comment 1 edited: ✅ Preview ready",
            "comment 1 edited: 🚧 Preview deploying",
            "comment 1 edited: 🧹 Preview destroyed",
        ]
        md = (server.dir / "prs" / "pr-7.md").read_text()
        assert "deployment 1 status success: Preview ready" in md
        assert "deployment 1 status inactive: Superseded by a newer commit" in md
        assert "deployment 2 status inactive: Preview removed" in md
        assert server.git("status", "--porcelain") == ""  # the working tree followed main


@pytest.mark.rig
async def test_local_mode_uses_a_reachable_cluster_with_argocd(
    tmp_path: Path, kube: KubeRig, kube_client: ApiClient, argocd_ns: str
) -> None:
    from tests.rig.argocd import ArgoCDStandIn

    async with ArgoCDStandIn(kube_client, argocd_ns) as standin:
        with serve_local(tmp_path, KUBECONFIG=str(kube.kubeconfig_path)) as server:
            assert f"of the cluster at {kube.server}" in server.logs()
            assert "HTTP 202" in await asyncio.to_thread(server.simulate, "label")
            head = server.head()
            deadline = time.monotonic() + WAIT
            while (app := await standin.find(APP)) is None or app["metadata"]["annotations"].get(
                A_HEAD_SHA
            ) != head:
                assert time.monotonic() < deadline, server.logs()
                await asyncio.sleep(0.05)
            assert app["spec"] == _expected_spec(server)
            assert not (server.dir / "cluster" / f"{APP}.yaml").exists()

            assert "HTTP 202" in await asyncio.to_thread(server.simulate, "close")
            while not any("destroyed" in h for h in server.comment_history()):
                assert time.monotonic() < deadline + WAIT, server.logs()
                await asyncio.sleep(0.05)
            # The comment says destroyed once Argo CD has pruned; the bot's finalizer goes
            # right after it, last.
            while await standin.find(APP) is not None:
                assert time.monotonic() < deadline + WAIT, server.logs()
                await asyncio.sleep(0.05)
            assert APP in standin.finished  # gone through the finalizer, as with Argo CD
            assert server.overlay() == ""
