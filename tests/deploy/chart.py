"""Helpers for the chart tests: run the pinned Helm offline, render, and pick objects out."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.tools import ROOT, helm_path

CHART = ROOT / "charts" / "preview-bot"
PRODUCTION_VALUES = ROOT / "examples" / "values-production.yaml"
BIN = Path(sys.executable).parent  # the venv's bin: kubectl, kubernetes-validate, hadolint

# Non-default values that render every optional template and the chart-made Secret.
INLINE_VALUES = (
    "--set",
    "github.appId=1234567",
    "--set",
    "github.webhookSecret=s3cret",
    "--set-string",
    "github.privateKey=-----BEGIN RSA PRIVATE KEY-----\nMII\n-----END RSA PRIVATE KEY-----\n",
    "--set",
    "ingress.enabled=true",
    "--set",
    "ingress.host=bot.example.org",
    "--set",
    "podAntiAffinity=soft",
    "--set",
    "serviceMonitor.enabled=true",
    "--set",
    "podDisruptionBudget.enabled=true",
    "--set",
    "podDisruptionBudget.maxUnavailable=1",
    "--set",
    "settings.trigger_label=deploy-me",
    "--set",
    "settings.queue_size=50",
    "--set",
    "argocd.namespace=gitops",
    "--set",
    "fullnameOverride=bot",
)

VALUE_SETS: dict[str, tuple[str, ...]] = {
    "default": (),
    "production": ("-f", str(PRODUCTION_VALUES)),
    "inline": INLINE_VALUES,
}


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run Helm with throwaway home folders, so nothing of the user's Helm setup leaks in."""
    home = Path(tempfile.gettempdir()) / "preview-bot-helm-home"
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    done = subprocess.run(
        [str(helm_path()), *args], capture_output=True, text=True, env=env, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done


def render(
    values: Sequence[str] = (), release: str = "preview-bot", namespace: str = "preview-bot"
) -> str:
    """`helm template` output as text."""
    return helm("template", release, str(CHART), "--namespace", namespace, *values).stdout


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(doc["kind"] for doc in docs)
