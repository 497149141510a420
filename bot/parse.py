"""GitHub's and Kubernetes' JSON -> the domain's types, in one place for every adapter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.model import (
    A_HEAD_SHA,
    A_INSTALLATION,
    A_PR,
    A_REPO,
    BOT,
    FINALIZER,
    MANAGED_BY,
    TEARDOWN_FINALIZER,
    AppStatus,
    IssueComment,
    ObservedApp,
    PullRequest,
    Record,
)

# The file names kustomize looks for in a directory.
KUSTOMIZATION_NAMES = frozenset({"kustomization.yaml", "kustomization.yml", "Kustomization"})


def pull_from_api(data: Mapping[str, Any]) -> PullRequest:
    """A PullRequest from GitHub's pull-request JSON (the API's, or a webhook's)."""
    base_repo = data["base"]["repo"]
    head_repo = data["head"].get("repo")
    return PullRequest(
        repo=str(base_repo["full_name"]),
        number=int(data["number"]),
        state=str(data["state"]),
        merged=bool(data.get("merged")),
        labels=frozenset(str(label["name"]) for label in data.get("labels") or []),
        head_sha=str(data["head"]["sha"]),
        head_repo=str(head_repo["full_name"]) if head_repo else None,
        default_branch=str(base_repo.get("default_branch") or data["base"]["ref"]),
        html_url=str(data["html_url"]),
        repo_html_url=str(base_repo["html_url"]),
        draft=bool(data.get("draft")),
        comment_count=data["comments"] if isinstance(data.get("comments"), int) else None,
    )


def comment_from_api(data: Mapping[str, Any]) -> IssueComment:
    """An IssueComment from GitHub's issue-comment JSON."""
    user = data.get("user") or {}
    app = data.get("performed_via_github_app") or {}
    app_id = app.get("id")
    return IssueComment(
        id=int(data["id"]),
        author=str(user.get("login") or ""),
        app_id=app_id if isinstance(app_id, int) else None,
        body=str(data.get("body") or ""),
    )


def _int(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def is_argocd_finalizer(finalizer: str) -> bool:
    """Argo CD's resources finalizer, plain or with its propagation ("/background",
    "/foreground"): all of them mean "prune first"."""
    return finalizer == FINALIZER or finalizer.startswith(FINALIZER + "/")


def app_from_object(obj: Mapping[str, Any]) -> ObservedApp:
    """The parts of an Argo CD Application object the bot looks at."""
    meta = obj.get("metadata") or {}
    finalizers = [str(f) for f in meta.get("finalizers") or []]
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    status = obj.get("status") or {}
    sync = status.get("sync") or {}
    health = status.get("health") or {}
    op = status.get("operationState") or {}
    return ObservedApp(
        name=str(meta.get("name", "")),
        managed=(meta.get("labels") or {}).get(MANAGED_BY) == BOT,
        terminating=bool(meta.get("deletionTimestamp")),
        repo=annotations.get(A_REPO) or None,
        number=_int(annotations.get(A_PR)),
        installation_id=_int(annotations.get(A_INSTALLATION)),
        head_sha=annotations.get(A_HEAD_SHA) or None,
        record=Record.from_annotations(annotations),
        status=AppStatus(
            sync=sync.get("status"),
            health=health.get("status"),
            revision=sync.get("revision"),
            operation_phase=op.get("phase"),
            message=op.get("message") or health.get("message"),
        ),
        held=TEARDOWN_FINALIZER in finalizers,
        pruned=not any(is_argocd_finalizer(f) for f in finalizers),
    )
