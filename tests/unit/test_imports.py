"""What `serve` imports: never kubernetes_asyncio (~0.5 s and ~60 MiB), unless a kubeconfig
user needs an exec plugin or auth-provider."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.rig.net import free_port

ROOT = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter: this test session has imported kubernetes_asyncio already.
PROBE = """
import asyncio, json, sys
import bot.wiring
from bot import kubeapi
from bot.errors import ClusterUnavailable
from bot.kube import ArgoCD

async def main():
    async with await kubeapi.connect(sys.argv[1], request_seconds=5) as api:
        outcome = "connected"
        if sys.argv[2] == "list":
            try:
                await ArgoCD(api, "argocd").list_managed()
            except ClusterUnavailable:
                outcome = "unavailable"
        return outcome

outcome = asyncio.run(main())
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "kubernetes_asyncio")
print(json.dumps({"outcome": outcome, "loaded": len(loaded)}))
"""


def probe(kubeconfig: Path, action: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(kubeconfig), action],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def write_kubeconfig(path: Path, user: dict[str, object]) -> Path:
    doc = {
        # Nothing listens there: the adapter's request fails as "unavailable".
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def test_serving_with_a_token_never_imports_kubernetes_asyncio(tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "config", {"token": "t"})
    assert probe(kubeconfig, "list") == {"outcome": "unavailable", "loaded": 0}


def test_an_exec_plugin_falls_back_to_kubernetes_asyncio(tmp_path: Path) -> None:
    """The check above could fail: the one path that loads the library does load it."""
    plugin = tmp_path / "plugin.py"
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": "from-plugin"},
    }
    plugin.write_text(f"print({json.dumps(json.dumps(credential))})\n")
    exec_user: dict[str, object] = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(plugin)],
        }
    }
    kubeconfig = write_kubeconfig(tmp_path / "config", exec_user)
    result = probe(kubeconfig, "connect")
    assert result["outcome"] == "connected"
    assert isinstance(result["loaded"], int) and result["loaded"] > 0
