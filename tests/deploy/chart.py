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

from bot.config import Settings, load_settings
from tests.deploy.tools import ROOT, helm_path

CHART = ROOT / "charts" / "preview-bot"
PRODUCTION_VALUES = ROOT / "examples" / "values-production.yaml"
# settings.repositories, which has no default: the first values file of every render and lint.
REQUIRED_VALUES = Path(__file__).with_name("required-values.yaml")
REQUIRED = ("-f", str(REQUIRED_VALUES))
REQUIRED_SETTINGS: dict[str, str] = yaml.safe_load(REQUIRED_VALUES.read_text())["settings"]
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
    "settings.repositories={data-literate/DEX,data-literate/*}",
    # Two repositories in scope: names must tell them apart (the bot checks it at start).
    "--set-json",
    'settings.app_name_template="{repo}-pr-{number}"',
    "--set-json",
    'settings.namespace_template="{repo}-pr-{number}"',
    "--set",
    "settings.trigger_label=deploy-me",
    "--set",
    "settings.queue_size=50",
    "--set",
    "argocd.namespace=gitops",
    "--set",
    "fullnameOverride=bot",
)

# Each is rendered after REQUIRED: "default" is the chart's defaults plus settings.repositories.
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
    """`helm template` output as text; settings.repositories from REQUIRED unless `values` say."""
    return helm(
        "template", release, str(CHART), "--namespace", namespace, *REQUIRED, *values
    ).stdout


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(doc["kind"] for doc in docs)


# The downward API's fields as a pod of the release would see them.
DOWNWARD_API = {"metadata.name": "preview-bot-5d8f7c9b6-x2x7q", "metadata.namespace": "preview-bot"}


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The pod template's spec of the chart's Deployment."""
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def container_view(
    docs: list[dict[str, Any]], secret: dict[str, str], where: Path
) -> tuple[dict[str, str], Path]:
    """The container's environment with its mounts laid out under `where`.

    Container paths in env values are rewritten to the folder holding that mount's files.
    """
    pod = pod_spec(docs)
    (container,) = pod["containers"]
    config = one(docs, "ConfigMap")["data"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts: dict[str, Path] = {}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        folder = where / mount["name"]
        folder.mkdir(parents=True)
        if "configMap" in volume:
            for key, text in config.items():
                (folder / key).write_text(text)
        elif "secret" in volume:
            for item in volume["secret"]["items"]:
                (folder / item["path"]).write_text(secret[item["key"]])
        mounts[mount["mountPath"]] = folder
    env: dict[str, str] = {}
    for var in container["env"]:
        source = var.get("valueFrom", {})
        if "fieldRef" in source:  # the downward API: what the kubelet would fill in
            env[var["name"]] = DOWNWARD_API[source["fieldRef"]["fieldPath"]]
            continue
        if "secretKeyRef" in source:
            env[var["name"]] = secret[source["secretKeyRef"]["key"]]
            continue
        value = var["value"]
        for path, folder in mounts.items():
            if value.startswith(path + "/"):
                value = str(folder / value[len(path) + 1 :])
                break
        env[var["name"]] = value
    return env, where


PEM = "-----BEGIN RSA PRIVATE KEY-----\nMII\n-----END RSA PRIVATE KEY-----\n"
# What the GitHub Secret holds, whether the chart makes it or it exists already.
STAND_IN_SECRET = {"GITHUB_APP_ID": "42", "GITHUB_PRIVATE_KEY": PEM, "GITHUB_WEBHOOK_SECRET": "x"}


def bot_settings(docs: list[dict[str, Any]], where: Path) -> Settings:
    """The Settings the bot in the rendered pod would load (its env and files; a stand-in
    Secret, as the chart's defaults leave the App's credentials empty)."""
    env, _ = container_view(docs, STAND_IN_SECRET, where)
    return load_settings(environ=env)
