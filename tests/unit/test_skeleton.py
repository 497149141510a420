"""The DEX-style infra tree shipped for local mode builds with real kustomize, with our overlay."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from bot.config import Settings
from bot.model import PullRequest
from bot.render import names, render_namespace_component, render_overlay
from tests.rig.kustomize import build_and_validate

SKELETON = Path(__file__).resolve().parents[2] / "bot" / "skeleton"
SETTINGS = Settings(github_app_id=1, github_private_key="k", github_webhook_secret="s")
PR = PullRequest(
    repo="data-literate/DEX",
    number=42,
    state="open",
    merged=False,
    labels=frozenset({"preview"}),
    head_sha="1a2b3c4d" + "e" * 32,
    head_repo="data-literate/DEX",
    default_branch="main",
    html_url="https://github.com/data-literate/DEX/pull/42",
    repo_html_url="https://github.com/data-literate/DEX",
)


def overlay_tree(tmp_path: Path, settings: Settings) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(SKELETON / "infra", repo / "infra")
    n = names(settings, PR.repo, PR.number)
    path = repo / n.overlay_path
    path.parent.mkdir(parents=True)
    path.write_text(render_overlay(settings, PR))
    for shared, text in render_namespace_component(settings).items():  # once per repository
        (repo / shared).parent.mkdir(parents=True, exist_ok=True)
        (repo / shared).write_text(text)
    return path.parent


def test_rendered_overlay_builds_and_validates(tmp_path: Path) -> None:
    objs = build_and_validate(overlay_tree(tmp_path, SETTINGS))
    by_kind = {o["kind"]: o for o in objs}
    assert set(by_kind) == {"Namespace", "Deployment", "Service", "Ingress"}
    # The shared placeholder becomes the PR's own Namespace, a managed (so pruned) object.
    assert by_kind["Namespace"]["metadata"]["name"] == "dex-pr-42"
    namespaced = [o for o in objs if o["kind"] != "Namespace"]
    assert {o["metadata"]["namespace"] for o in namespaced} == {"dex-pr-42"}
    container = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/data-literate/dex:sha-1a2b3c4d"
    assert by_kind["Deployment"]["metadata"]["labels"]["preview-bot.io/pr"] == "42"
    # includeSelectors: false keeps the base's selector, which is immutable on a Deployment.
    assert by_kind["Deployment"]["spec"]["selector"] == {"matchLabels": {"app": "dex"}}
    assert by_kind["Ingress"]["spec"]["rules"][0]["host"] == "preview.example.com"


def test_preview_host_becomes_the_ingress_host(tmp_path: Path) -> None:
    settings = replace(SETTINGS, preview_host_template="dex-pr-{number}.preview.example.com")
    objs = build_and_validate(overlay_tree(tmp_path, settings))
    ingress = next(o for o in objs if o["kind"] == "Ingress")
    assert ingress["spec"]["rules"][0]["host"] == "dex-pr-42.preview.example.com"


def test_render_command_output_builds_against_a_dex_tree(tmp_path: Path) -> None:
    import subprocess
    import sys

    sha = "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bot",
            "render",
            "--repo",
            "data-literate/DEX",
            "--pr",
            "42",
            "--sha",
            sha,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    sections = {
        head.split("\n", 1)[0]: head.split("\n", 1)[1] for head in done.stdout.split("# ---- ")[1:]
    }
    overlay = next(body for head, body in sections.items() if head.startswith("overlay:"))
    assert "# ---- overlay: infra/argocd/previews/pr-42/kustomization.yaml" in done.stdout
    assert "kind: Application" in done.stdout and "<!-- preview-bot:comment -->" in done.stdout
    repo = tmp_path / "repo"
    shutil.copytree(SKELETON / "infra", repo / "infra")
    target = repo / "infra/argocd/previews/pr-42"
    target.mkdir(parents=True)
    (target / "kustomization.yaml").write_text(overlay)
    for head, body in sections.items():
        if head.startswith("shared Namespace component: "):
            path = repo / head.split(": ", 1)[1].split(" ", 1)[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
    objs = build_and_validate(target)
    images = [
        c["image"]
        for o in objs
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
    ]
    assert images == ["ghcr.io/data-literate/dex:sha-1a2b3c4d"]


def test_render_refuses_a_bad_sha_with_exit_2() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "bot", "render", "--repo", "o/r", "--pr", "1", "--sha", "abc"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    assert "--sha: expected the 40-hex-digit commit SHA" in done.stderr


def test_names_fit_kubernetes_whatever_the_repository() -> None:
    from bot.render import worst_case_names

    repo_templates = replace(
        SETTINGS,
        app_name_template="{repo}-pr-{number}",
        namespace_template="{owner}-{repo}-{number}",
    )
    assert worst_case_names(repo_templates) == []
    n = names(repo_templates, "Data_Literate/My.Service", 42)
    assert (n.app, n.namespace) == ("my-service-pr-42", "data-literate-my-service-42")
    long = names(repo_templates, "o/" + "r" * 100, 1)
    other = names(repo_templates, "o/" + "r" * 99 + "s", 1)
    assert len(long.app) <= 63 and long.app != other.app and not long.problems()
    bad = replace(SETTINGS, namespace_template="Preview_{number}")
    assert "is not a DNS-1123 label" in worst_case_names(bad)[0]
