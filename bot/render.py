"""What the bot writes, as pure functions: the overlay, the Application and the PR comment."""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import yaml

from bot.config import Settings
from bot.model import (
    A_HEAD_SHA,
    A_INSTALLATION,
    A_PR,
    A_PR_URL,
    A_REPO,
    BOT,
    FINALIZER,
    L_PR,
    L_REPO,
    MANAGED_BY,
    CommentText,
    IssueComment,
    ObservedComment,
    PullRequest,
    State,
    label_safe,
)

COMMENT_MARKER = "<!-- preview-bot:comment -->"
_STATE_RE = re.compile(r"<!-- preview-bot:state (\{.*?\}) -->")
OVERLAY_HEADER = (
    "# Managed by preview-bot: this preview's overlay is rewritten on every push and removed\n"
    "# when the PR is closed or unlabeled. Hand edits are overwritten.\n"
)
COMMIT_SUFFIX = " [skip ci]"

STATE_TITLES = {
    State.DEPLOYING: "🚧 Preview deploying",
    State.READY: "✅ Preview ready",
    State.FAILED: "❌ Preview failed",
    State.TEARDOWN_PENDING: "⏳ Preview teardown pending",
    State.DESTROYED: "🧹 Preview destroyed",
    State.NOT_DEPLOYED: "⛔ No preview",
}
STATE_TEXT = {
    State.DEPLOYING: "Argo CD is rolling out this commit.",
    State.READY: "Argo CD reports the preview synced and healthy.",
    State.FAILED: "Argo CD reports the preview degraded or its sync failed.",
    State.TEARDOWN_PENDING: (
        "The Application is deleted and waits for Argo CD to prune what it deployed "
        "(its finalizer). The bot finishes the teardown once it is gone."
    ),
    State.DESTROYED: "The preview and everything it deployed are removed.",
    State.NOT_DEPLOYED: "",
}
FORK_REFUSAL = (
    "Previews are not built for pull requests from forks: their code would run with this "
    "repository's deploy rights."
)


@dataclass(frozen=True)
class Names:
    """Every name derived from a PR and the settings' templates."""

    app: str
    namespace: str
    overlay_path: str
    overlay_dir: str
    base_dir: str  # the base overlay's directory, relative to the repository root
    preview_url: str
    host: str | None


def names(settings: Settings, repo: str, number: int) -> Names:
    owner, name = repo.split("/", 1)
    common = {"number": number, "owner": owner, "repo": name}
    app = settings.app_name_template.format(**common)
    namespace = settings.namespace_template.format(**common)
    path = settings.overlay_path_template.format(**common, name=app)
    overlay_dir = posixpath.dirname(path)
    url_vars = {**common, "name": app, "namespace": namespace}
    host = (
        settings.preview_host_template.format(**url_vars)
        if settings.preview_host_template
        else None
    )
    return Names(
        app=app,
        namespace=namespace,
        overlay_path=path,
        overlay_dir=overlay_dir,
        base_dir=posixpath.normpath(posixpath.join(overlay_dir, settings.overlay_base)),
        preview_url=settings.preview_url_template.format(**url_vars),
        host=host,
    )


def image_tag(settings: Settings, pr: PullRequest) -> str:
    owner, name = pr.repo.split("/", 1)
    return settings.image_tag_template.format(
        number=pr.number, owner=owner, repo=name, sha=pr.head_sha, short_sha=pr.head_sha[:8]
    )


def render_overlay(settings: Settings, pr: PullRequest) -> str:
    """The PR's kustomization.yaml: the base overlay, the PR's namespace, image tag and labels."""
    n = names(settings, pr.repo, pr.number)
    doc: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [settings.overlay_base],
        "namespace": n.namespace,
        "labels": [
            {
                "pairs": {L_PR: str(pr.number), L_REPO: label_safe(pr.repo)},
                # Selectors are immutable on Deployments; labels on objects are enough to find them.
                "includeSelectors": False,
            }
        ],
        "images": [{"name": settings.image_name, "newTag": image_tag(settings, pr)}],
    }
    if n.host:
        # `add` on an object member replaces it, so this works whether or not the base sets a host.
        doc["patches"] = [
            {
                "target": {"kind": "Ingress"},
                "patch": yaml.safe_dump(
                    [{"op": "add", "path": "/spec/rules/0/host", "value": n.host}],
                    sort_keys=False,
                ),
            }
        ]
    return OVERLAY_HEADER + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def overlay_message(pr: PullRequest, settings: Settings, deleting: bool = False) -> str:
    n = names(settings, pr.repo, pr.number)
    if deleting:
        return f"chore(preview): remove {n.app} for PR #{pr.number}{COMMIT_SUFFIX}"
    tag = image_tag(settings, pr)
    return f"chore(preview): deploy {n.app} at {tag} for PR #{pr.number}{COMMIT_SUFFIX}"


def render_application(
    settings: Settings, pr: PullRequest, branch: str, installation_id: int
) -> dict[str, Any]:
    """The Argo CD Application of the PR, as the bot server-side-applies it."""
    n = names(settings, pr.repo, pr.number)
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {
            "name": n.app,
            "namespace": settings.argocd_namespace,
            # Deleting the Application makes Argo CD prune what it deployed before it goes.
            "finalizers": [FINALIZER],
            "labels": {
                MANAGED_BY: BOT,
                L_PR: str(pr.number),
                L_REPO: label_safe(pr.repo),
            },
            "annotations": {
                A_REPO: pr.repo,
                A_PR: str(pr.number),
                A_PR_URL: pr.html_url,
                A_HEAD_SHA: pr.head_sha,
                A_INSTALLATION: str(installation_id),
            },
        },
        "spec": {
            "project": settings.argocd_project,
            "source": {
                "repoURL": pr.repo_html_url,
                "targetRevision": branch,
                "path": n.overlay_dir,
            },
            "destination": {"server": settings.destination_server, "namespace": n.namespace},
            "syncPolicy": {
                "automated": {"prune": True, "selfHeal": True},
                "syncOptions": ["CreateNamespace=true"],
            },
        },
    }


def argocd_app_url(settings: Settings, app: str) -> str | None:
    if not settings.argocd_url:
        return None
    return f"{settings.argocd_url}/applications/{settings.argocd_namespace}/{app}"


def fingerprint(*parts: object) -> str:
    """A short digest of what the comment shows, so an unchanged comment is never rewritten."""
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def render_comment(
    settings: Settings,
    pr: PullRequest,
    state: State,
    now: datetime,
    detail: str = "",
) -> CommentText:
    """The PR's one comment. Its fingerprint leaves out the time, so equal states compare equal."""
    n = names(settings, pr.repo, pr.number)
    app_url = argocd_app_url(settings, n.app)
    fp = fingerprint(state.value, pr.head_sha, n.preview_url, detail, app_url)
    hidden = json.dumps({"state": state.value, "fingerprint": fp})
    lines = [
        COMMENT_MARKER,
        f"<!-- preview-bot:state {hidden} -->",
        f"### {STATE_TITLES[state]}",
        "",
    ]
    if state is not State.NOT_DEPLOYED:
        short = pr.head_sha[:8]
        link = f"[`{short}`]({pr.repo_html_url}/commit/{pr.head_sha})"
        url = n.preview_url if state not in (State.DESTROYED,) else f"~~{n.preview_url}~~"
        lines += [
            "| | |",
            "|---|---|",
            f"| **URL** | {url} |",
            f"| **Commit** | {link} |",
            f"| **State** | {state.value} |",
        ]
        if app_url:
            lines.append(f"| **Argo CD** | [{n.app}]({app_url}) |")
        lines += [f"| **Updated** | {now:%Y-%m-%d %H:%M:%S} UTC |", ""]
        if STATE_TEXT[state]:
            lines.append(STATE_TEXT[state])
    if detail:
        lines += ["", _quote(detail)]
    if state is State.NOT_DEPLOYED:
        lines += ["", f"_Updated {now:%Y-%m-%d %H:%M:%S} UTC._"]
    return CommentText("\n".join(lines).rstrip() + "\n", state, fp)


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.strip().splitlines())


def parse_comment_state(body: str) -> tuple[str | None, str | None]:
    """(state, fingerprint) hidden in a comment the bot wrote; (None, None) if unreadable."""
    found = _STATE_RE.search(body)
    if not found:
        return None, None
    try:
        hidden = json.loads(found.group(1))
    except ValueError:
        return None, None
    if not isinstance(hidden, dict):
        return None, None
    state, fp = hidden.get("state"), hidden.get("fingerprint")
    return (state if isinstance(state, str) else None, fp if isinstance(fp, str) else None)


def read_comment(comment: IssueComment) -> ObservedComment | None:
    """The bot's comment, with the state its hidden marker records; None for any other."""
    if COMMENT_MARKER not in comment.body:
        return None
    state, fp = parse_comment_state(comment.body)
    return ObservedComment(comment.id, state, fp)


def deployment_description(state: State) -> str:
    return f"Preview {state.value}"[:140]
