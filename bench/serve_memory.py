"""Memory of `preview-bot serve` with N managed Applications on the rig's real API server.

Starts the rig (kube-apiserver + etcd), server-side applies N Applications as the bot renders
them, then runs `python -m bot serve` against it (GitHub unreachable, so the syncs the watch's
first list queues retry) and prints its resident and peak memory after a few seconds. The
budget is 100 MiB with 1,000 previews.

    .venv/bin/python bench/serve_memory.py [--previews 1000] [--rounds 2] [--settle 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.config import Settings  # noqa: E402
from bot.kube import APPLICATIONS  # noqa: E402
from bot.model import PullRequest  # noqa: E402
from bot.render import render_application  # noqa: E402
from tests.rig.kube import KubeRig, _start_rig  # noqa: E402
from tests.rig.net import free_port  # noqa: E402

REPO = "data-literate/DEX"


async def populate(rig: KubeRig, previews: int) -> None:
    settings = Settings(github_app_id=1, github_private_key="", github_webhook_secret="")
    slots = asyncio.Semaphore(16)
    async with rig.kubeapi() as api:

        async def one(number: int) -> None:
            pr = PullRequest(
                repo=REPO,
                number=number,
                state="open",
                merged=False,
                labels=frozenset({"preview"}),
                head_sha=f"{number:040x}",
                head_repo=REPO,
                default_branch="main",
                html_url=f"https://github.com/{REPO}/pull/{number}",
                repo_html_url=f"https://github.com/{REPO}",
            )
            app = render_application(settings, pr, "main", 7)
            async with slots:
                path = APPLICATIONS.path("argocd", app["metadata"]["name"])
                await api.apply(path, app, "preview-bot")

        await asyncio.gather(*(one(n) for n in range(1, previews + 1)))


def serve_memory(rig: KubeRig, key_file: Path, settle: float) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB of one `serve` process, `settle` seconds after it is healthy."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "GITHUB_APP_ID": "1",
        "GITHUB_PRIVATE_KEY_FILE": str(key_file),
        "GITHUB_WEBHOOK_SECRET": "bench",
        "GITHUB_API_URL": f"http://127.0.0.1:{free_port()}",
        "KUBECONFIG": str(rig.kubeconfig_path),
        "PREVIEW_BOT_REPOSITORIES": "*",
    }
    command = [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        time.sleep(settle)
        status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
        kib = {line.split(":")[0]: int(line.split()[1]) for line in status if line.startswith("Vm")}
        return kib["VmRSS"] / 1024, kib["VmHWM"] / 1024
    finally:
        proc.terminate()
        proc.wait(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--previews", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--settle", type=float, default=8.0)
    args = parser.parse_args()
    plane, rig = _start_rig()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            key_file = Path(tmp) / "key.pem"
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            key_file.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.TraditionalOpenSSL,
                    serialization.NoEncryption(),
                )
            )
            asyncio.run(populate(rig, args.previews))
            runs = [serve_memory(rig, key_file, args.settle) for _ in range(args.rounds)]
        rss = statistics.median(r[0] for r in runs)
        peak = statistics.median(r[1] for r in runs)
        print(f"serve with {args.previews} previews: {rss:.1f} MiB resident, {peak:.1f} MiB peak")
    finally:
        plane.stop()


if __name__ == "__main__":
    main()
