"""The chart's AppProject fences the previews: Argo CD admits the bot's Applications, nothing more.

Each check renders the chart, loads the settings the rendered pod would run with, renders the
Application the bot would write with them (bot/render.py), and asks Argo CD's own rules
(tests/deploy/argocd_rules.py) whether the project admits it.
"""

from __future__ import annotations

from dataclasses import replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest

from bot.__main__ import web_url
from bot.config import Settings
from bot.model import PullRequest
from bot.render import render_application
from tests.deploy.argocd_rules import (
    Resource,
    admits,
    app_namespace_permitted,
    glob_match,
    resource_permitted,
    source_permitted,
)
from tests.deploy.chart import CHART, bot_settings, documents, helm, kinds, one, render
from tests.deploy.conftest import ensure_namespace, for_the_test_server, kubectl
from tests.rig.kube import KubeRig

IN_CLUSTER = "https://kubernetes.default.svc"


def _pr(repo: str, number: int = 42, web: str = "https://github.com") -> PullRequest:
    return PullRequest(
        repo=repo,
        number=number,
        state="open",
        merged=False,
        labels=frozenset({"preview"}),
        head_sha="a" * 40,
        head_repo=repo,
        default_branch="main",
        html_url=f"{web}/{repo}/pull/{number}",
        repo_html_url=f"{web}/{repo}",
    )


def _app(settings: Settings, repo: str, web: str = "https://github.com") -> dict[str, Any]:
    return render_application(settings, _pr(repo, web=web), "main", installation_id=7)


def _rendered(tmp_path: Path, *values: str) -> tuple[dict[str, Any], Settings]:
    """The chart's AppProject and the bot's settings, from one render."""
    docs = documents(render(values))
    return one(docs, "AppProject"), bot_settings(docs, tmp_path)


def test_the_emulated_rules_match_argo_cds_documented_globs() -> None:
    # sourceRepos: `*` stops at `/`, `**` does not; URLs compare lower-cased, without .git.
    project = {"spec": {"sourceRepos": ["https://github.com/owner/*"]}}
    assert source_permitted(project, "https://github.com/owner/repo")
    assert source_permitted(project, "https://GitHub.com/Owner/Repo.git")
    assert not source_permitted(project, "https://github.com/owner/repo/sub")
    assert not source_permitted(project, "https://github.com/owner-other/repo")
    assert glob_match("https://github.com/**", "https://github.com/a/b", "/")
    # destinations: no separator.
    assert glob_match("dex-pr-*", "dex-pr-42") and not glob_match("dex-pr-*", "kube-system")


def test_chart_defaults_are_the_bots(tmp_path: Path) -> None:
    project, settings = _rendered(tmp_path)
    defaults = Settings(github_app_id=1, github_private_key="", github_webhook_secret="")
    assert (project["metadata"]["name"], project["metadata"]["namespace"]) == (
        defaults.argocd_project,
        "argocd",
    )
    assert settings.argocd_project == defaults.argocd_project == "previews"
    assert settings.namespace_template == defaults.namespace_template
    assert settings.destination_server == defaults.destination_server
    assert settings.repositories == ("data-literate/DEX",)
    assert project["spec"]["destinations"] == [
        {"server": defaults.destination_server, "namespace": "dex-pr-*"}
    ]


@pytest.mark.parametrize(
    "repositories",
    ["data-literate/DEX", "data-literate/*", "data-literate/DEX,other-org/site", "*/DEX"],
)
def test_project_admits_exactly_the_repositories_the_bot_serves(
    repositories: str, tmp_path: Path
) -> None:
    values = ["--set", f"settings.repositories={{{repositories}}}"]
    if repositories != "data-literate/DEX":
        # Many repositories: the bot wants names that tell them apart (checked at start).
        for name in ("app_name_template", "namespace_template"):
            values += ["--set-json", f'settings.{name}="{{owner}}-{{repo}}-pr-{{number}}"']
    project, settings = _rendered(tmp_path, *values)
    assert settings.repositories == tuple(repositories.split(","))
    for repo in (
        "data-literate/DEX",
        "data-literate/dex-docs",
        "other-org/site",
        "other-org/DEX",
        "data-literate-evil/DEX",
        "someone/else",
    ):
        served = any(fnmatchcase(repo, pattern) for pattern in settings.repositories)
        assert admits(project, _app(settings, repo)) == served, repo


def test_project_admits_only_the_previews_namespaces_on_one_cluster(tmp_path: Path) -> None:
    project, settings = _rendered(tmp_path)
    assert admits(project, _app(settings, "data-literate/DEX"))
    for moved in (
        replace(settings, namespace_template="kube-system-{number}"),
        replace(settings, namespace_template="pr-{number}"),
        replace(settings, destination_server="https://prod.example.com"),
    ):
        assert not admits(project, _app(moved, "data-literate/DEX")), moved


def test_namespace_template_placeholders_become_globs(tmp_path: Path) -> None:
    # --set would read the braces as a list; JSON keeps them text.
    template = 'settings.namespace_template="{owner}-{repo}-pr-{number}"'
    project, settings = _rendered(tmp_path, "--set-json", template)
    assert project["spec"]["destinations"][0]["namespace"] == "*-*-pr-*"
    app = _app(settings, "data-literate/DEX")
    # Kubernetes names are lower case (GitHub's are case-insensitive).
    assert app["spec"]["destination"]["namespace"] == "data-literate-dex-pr-42"
    assert admits(project, app)


def test_only_the_previews_own_namespace_among_cluster_kinds(tmp_path: Path) -> None:
    project, _ = _rendered(tmp_path)
    assert project["spec"]["clusterResourceWhitelist"] == [
        {"group": "", "kind": "Namespace", "name": "dex-pr-*"}
    ]

    def ok(obj: Resource) -> bool:
        return resource_permitted(project, obj, IN_CLUSTER)

    assert ok(Resource("", "Namespace", "dex-pr-42"))
    assert ok(Resource("apps", "Deployment", "web", "dex-pr-42"))
    assert ok(Resource("networking.k8s.io", "Ingress", "web", "dex-pr-42"))
    refused = [
        Resource("", "Namespace", "kube-system"),
        Resource("rbac.authorization.k8s.io", "ClusterRoleBinding", "x"),
        Resource("apiextensions.k8s.io", "CustomResourceDefinition", "x.example.com"),
        Resource("apps", "Deployment", "web", "kube-system"),
        Resource("", "ResourceQuota", "q", "dex-pr-42"),
        Resource("", "LimitRange", "l", "dex-pr-42"),
        Resource("networking.k8s.io", "NetworkPolicy", "open", "dex-pr-42"),
    ]
    assert [obj for obj in refused if ok(obj)] == []


@pytest.mark.parametrize(
    "api", ["https://api.github.com", "https://ghe.example.com/api/v3", "http://ghe:8080/api/v3"]
)
def test_source_urls_follow_the_github_the_bot_talks_to(api: str, tmp_path: Path) -> None:
    project, settings = _rendered(tmp_path, "--set", f"settings.github_api_url={api}")
    web = web_url(api)
    assert project["spec"]["sourceRepos"] == [f"{web}/data-literate/DEX"]
    assert admits(project, _app(settings, "data-literate/DEX", web=web))
    explicit, _ = _rendered(tmp_path / "2", "--set", "project.githubUrl=https://git.example.org/")
    assert explicit["spec"]["sourceRepos"] == ["https://git.example.org/data-literate/DEX"]


def _fails(*values: str) -> str:
    done = helm("template", "x", str(CHART), *values, check=False)
    assert done.returncode != 0, done.stdout
    return done.stderr


def test_repositories_are_required_with_a_clear_message() -> None:
    for values in ((), ("--set", "settings.repositories="), ("--set", "settings.repositories={}")):
        assert "settings.repositories is required" in _fails(*values), values


def test_every_repository_needs_explicit_source_repos() -> None:
    assert "project.sourceRepos" in _fails("--set", "settings.repositories=*")
    assert "project.sourceRepos" in _fails("--set", "settings.repositories=data-*")
    assert "project.sourceRepos" in _fails("--set", "settings.repositories=data-literate/DE?")
    explicit = documents(
        render(
            (
                "--set",
                "settings.repositories=*",
                "--set",
                "project.sourceRepos={https://github.com/data-literate/*}",
            )
        )
    )
    assert one(explicit, "AppProject")["spec"]["sourceRepos"] == [
        "https://github.com/data-literate/*"
    ]


def test_the_default_project_is_never_taken_over() -> None:
    assert "default project" in _fails(
        "--set", "settings.repositories=a/b", "--set", "settings.argocd_project=default"
    )
    # Without the chart's project, the name is the operator's business.
    docs = documents(render(("--set", "project.create=false")))
    assert "AppProject" not in kinds(docs)


def test_applications_in_any_namespace(tmp_path: Path) -> None:
    docs = documents(render(("--set", "argocd.applicationNamespace=previews-apps")))
    project = one(docs, "AppProject")
    settings = bot_settings(docs, tmp_path)
    # The project stays with Argo CD; the Role and the bot's Applications move.
    assert project["metadata"]["namespace"] == "argocd"
    assert project["spec"]["sourceNamespaces"] == ["previews-apps"]
    assert settings.argocd_namespace == "previews-apps"
    assert {d["metadata"]["namespace"] for d in docs if d["kind"].startswith("Role")} == {
        "previews-apps"
    }
    app = _app(settings, "data-literate/DEX")
    assert app["metadata"]["namespace"] == "previews-apps"
    assert admits(project, app)
    # Applications of any other namespace may not use the previews' project.
    assert not app_namespace_permitted(project, "team-x")
    # In the default mode the project lists no namespace: only Argo CD's own may use it.
    default = one(documents(render()), "AppProject")
    assert "sourceNamespaces" not in default["spec"]
    assert not app_namespace_permitted(default, "previews-apps")


def test_both_modes_apply_with_server_side_dry_run(kube: KubeRig) -> None:
    ensure_namespace(kube, "previews-apps")
    for values in ((), ("--set", "argocd.applicationNamespace=previews-apps")):
        docs = [
            d
            for d in documents(render(values))
            if d["kind"] in ("AppProject", "Role", "RoleBinding")
        ]
        text = for_the_test_server(docs)
        done = kubectl(kube, "apply", "--server-side", "--dry-run=server", "-f", "-", stdin=text)
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("serverside-applied (server dry run)") == 3, done.stdout
