"""The examples: the previews' AppProject is the chart's, valid, and fences the bot in."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.deploy.argocd_rules import admits
from tests.deploy.chart import documents, one, render
from tests.deploy.conftest import for_the_test_server, kubectl
from tests.deploy.tools import ROOT
from tests.rig.kube import KubeRig

PROJECT = ROOT / "examples" / "appproject-previews.yaml"


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(PROJECT.read_text())
    return data


def test_appproject_is_accepted_by_argo_cds_crd(kube: KubeRig, project: dict[str, Any]) -> None:
    done = kubectl(
        kube,
        "apply",
        "--server-side",
        "--dry-run=server",
        "-f",
        "-",
        stdin=for_the_test_server([project]),
    )
    assert done.returncode == 0, done.stderr
    assert "appproject.argoproj.io/previews serverside-applied" in done.stdout


def test_appproject_is_the_one_the_chart_makes(project: dict[str, Any]) -> None:
    """The chart's defaults with settings.repositories: data-literate/DEX (tests' REQUIRED)."""
    chart = one(documents(render()), "AppProject")
    for which in (chart, project):
        which["spec"].pop("description")
    assert project["spec"] == chart["spec"]
    assert (project["metadata"]["name"], project["metadata"]["namespace"]) == (
        chart["metadata"]["name"],
        chart["metadata"]["namespace"],
    )


def test_appproject_admits_the_previews_of_dex_only(project: dict[str, Any]) -> None:
    def app(repo: str, namespace: str = "dex-pr-42") -> dict[str, Any]:
        return {
            "metadata": {"namespace": "argocd"},
            "spec": {
                "project": "previews",
                "source": {"repoURL": f"https://github.com/{repo}"},
                "destination": {"server": "https://kubernetes.default.svc", "namespace": namespace},
            },
        }

    assert admits(project, app("data-literate/DEX"))
    assert not admits(project, app("someone/else"))
    assert not admits(project, app("data-literate/DEX", namespace="kube-system"))
