"""The examples: the previews' AppProject is valid for Argo CD and fences the bot's Applications."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

import pytest
import yaml

from bot.config import Settings
from bot.model import PullRequest
from bot.render import render_application
from tests.deploy.conftest import kubectl
from tests.deploy.tools import ROOT
from tests.rig.kube import KubeRig

PROJECT = ROOT / "examples" / "appproject-previews.yaml"
DEX = "https://github.com/data-literate/DEX"
IN_CLUSTER = "https://kubernetes.default.svc"


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(PROJECT.read_text())
    return data


def test_appproject_is_accepted_by_argo_cds_crd(kube: KubeRig) -> None:
    done = kubectl(kube, "apply", "--server-side", "--dry-run=server", "-f", str(PROJECT))
    assert done.returncode == 0, done.stderr
    assert "appproject.argoproj.io/previews serverside-applied" in done.stdout


def test_appproject_allows_only_previews_from_dex(project: dict[str, Any]) -> None:
    spec = project["spec"]
    assert spec["sourceRepos"] == [DEX]
    assert spec["destinations"] == [{"server": IN_CLUSTER, "namespace": "dex-pr-*"}]
    # CreateNamespace=true needs Namespaces; nothing else cluster-wide.
    assert spec["clusterResourceWhitelist"] == [{"group": "*", "kind": "Namespace"}]


def _allowed(project: dict[str, Any], app: dict[str, Any]) -> bool:
    """Argo CD's check: the source repository and the destination match the project."""
    spec = project["spec"]
    source, dest = app["spec"]["source"], app["spec"]["destination"]
    repo_ok = any(fnmatchcase(source["repoURL"], pattern) for pattern in spec["sourceRepos"])
    dest_ok = any(
        fnmatchcase(dest["server"], d["server"]) and fnmatchcase(dest["namespace"], d["namespace"])
        for d in spec["destinations"]
    )
    return repo_ok and dest_ok and app["spec"]["project"] == project["metadata"]["name"]


def _app(repo: str = "data-literate/DEX", **settings: Any) -> dict[str, Any]:
    config = Settings(
        github_app_id=1,
        github_private_key="",
        github_webhook_secret="",
        argocd_project="previews",
        **settings,
    )
    pr = PullRequest(
        repo=repo,
        number=42,
        state="open",
        merged=False,
        labels=frozenset({"preview"}),
        head_sha="a" * 40,
        head_repo=repo,
        default_branch="main",
        html_url=f"https://github.com/{repo}/pull/42",
        repo_html_url=f"https://github.com/{repo}",
    )
    return render_application(config, pr, "main", installation_id=7)


def test_the_bots_applications_fit_the_project_and_others_do_not(
    project: dict[str, Any],
) -> None:
    assert _allowed(project, _app())
    assert not _allowed(project, _app(namespace_template="kube-system-{number}"))
    assert not _allowed(project, _app(repo="someone/else"))
    assert not _allowed(project, _app(destination_server="https://prod.example.com"))
