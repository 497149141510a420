"""What the bot writes to git and the cluster, as pure functions: names, the overlay, the shared
Namespace component and the Application (the PR comment is bot.comment)."""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass
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
    TEARDOWN_FINALIZER,
    PullRequest,
    State,
    label_safe,
)

OVERLAY_HEADER = (
    "# Managed by preview-bot: this preview's overlay is rewritten on every push and removed\n"
    "# when the PR is closed or unlabeled. Hand edits are overwritten.\n"
)
COMMIT_SUFFIX = " [skip ci]"

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
    previews_root: str  # the directory every PR's overlay lives under
    namespace_dir: str  # the shared Namespace component, under previews_root

    def problems(self) -> list[str]:
        """Why Kubernetes would refuse these names (empty when it accepts them)."""
        out = []
        if not DNS_LABEL.fullmatch(self.namespace):
            out.append(
                f"namespace `{self.namespace}` is not a DNS-1123 label (a-z, 0-9, -, "
                "at most 63 characters, alphanumeric at both ends)"
            )
        # Argo CD puts the Application's name in a label value too, so 63 is its real limit.
        if not DNS_SUBDOMAIN.fullmatch(self.app) or len(self.app) > 63:
            out.append(
                f"Application name `{self.app}` is not a DNS-1123 subdomain of at most "
                "63 characters (a-z, 0-9, - and .)"
            )
        return out


DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
NAMESPACE_COMPONENT = "_namespace"  # under the previews root; not a PR's overlay directory
NAMESPACE_PLACEHOLDER = "preview-namespace"  # kustomize's `namespace:` renames it per PR


def previews_root(settings: Settings) -> str:
    """The directory above every PR's overlay: the overlay path up to its first placeholder."""
    static = settings.overlay_path_template.split("{", 1)[0]
    return posixpath.dirname(static.rstrip("/")) if "/" in static else ""


def kube_word(text: str) -> str:
    """A GitHub owner or repository name as a Kubernetes name part: lower case, with `_` and
    `.` as `-` (GitHub names are case-insensitive; Kubernetes names allow neither)."""
    return re.sub(r"[_.]", "-", text.lower())


def fit_name(name: str, limit: int = 63) -> str:
    """A name cut to `limit` characters when longer, keeping it unique with a short hash of the
    whole (a long repository name would otherwise make Kubernetes refuse the preview)."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-.')}-{digest}"


def names(settings: Settings, repo: str, number: int) -> Names:
    owner, name = repo.split("/", 1)
    common = {"number": number, "owner": owner, "repo": name}
    kube = {"number": number, "owner": kube_word(owner), "repo": kube_word(name)}
    app = fit_name(settings.app_name_template.format(**kube))
    namespace = fit_name(settings.namespace_template.format(**kube))
    path = settings.overlay_path_template.format(**common, name=app)
    overlay_dir = posixpath.dirname(path)
    url_vars = {**common, "name": app, "namespace": namespace}
    host = (
        settings.preview_host_template.format(**url_vars)
        if settings.preview_host_template
        else None
    )
    root = previews_root(settings)
    return Names(
        app=app,
        namespace=namespace,
        overlay_path=path,
        overlay_dir=overlay_dir,
        base_dir=posixpath.normpath(posixpath.join(overlay_dir, settings.overlay_base)),
        preview_url=settings.preview_url_template.format(**url_vars),
        host=host,
        previews_root=root,
        namespace_dir=posixpath.join(root, NAMESPACE_COMPONENT),
    )


def worst_case_names(settings: Settings) -> list[str]:
    """Problems the templates give with the longest values GitHub allows (a 39-character
    owner, a 100-character repository, PR 9999999): checked at start."""
    return names(settings, f"{'o' * 39}/{'r' * 100}", 9_999_999).problems()


def render_namespace_component(settings: Settings) -> dict[str, str]:
    """The shared component every PR's overlay includes: one placeholder Namespace, which
    kustomize's `namespace:` renames to the PR's. Argo CD then owns the Namespace and prunes it
    with everything else (CreateNamespace=true would leave it behind: argo-cd#7875)."""
    root = previews_root(settings)
    directory = posixpath.join(root, NAMESPACE_COMPONENT)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["namespace.yaml"],
    }
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": NAMESPACE_PLACEHOLDER},
    }
    header = "# Managed by preview-bot: the Namespace of every preview of this repository.\n"
    return {
        posixpath.join(directory, "kustomization.yaml"): header
        + yaml.safe_dump(kustomization, sort_keys=False),
        posixpath.join(directory, "namespace.yaml"): header
        + yaml.safe_dump(namespace, sort_keys=False),
    }


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
        "resources": [
            settings.overlay_base,
            posixpath.relpath(n.namespace_dir, n.overlay_dir or "."),
        ],
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
    settings: Settings, pr: PullRequest, revision: str, installation_id: int
) -> dict[str, Any]:
    """The Argo CD Application of the PR, as the bot server-side-applies it.

    `revision` is the commit that wrote the PR's overlay (a branch name only when that commit
    is unknown): pinned, Argo CD's synced revision tells exactly which overlay runs.
    """
    n = names(settings, pr.repo, pr.number)
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {
            "name": n.app,
            "namespace": settings.argocd_namespace,
            # Deleting the Application makes Argo CD prune what it deployed before it goes;
            # then the bot's finalizer keeps it until the PR's comment says destroyed.
            "finalizers": [FINALIZER, TEARDOWN_FINALIZER],
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
                "targetRevision": revision,
                "path": n.overlay_dir,
            },
            "destination": {"server": settings.destination_server, "namespace": n.namespace},
            # The Namespace is in the built manifests (the shared component), so Argo CD prunes
            # it with the rest; no CreateNamespace=true, which never deletes what it made.
            "syncPolicy": {"automated": {"prune": True, "selfHeal": True}},
        },
    }


def argocd_app_url(settings: Settings, app: str) -> str | None:
    if not settings.argocd_url:
        return None
    return f"{settings.argocd_url}/applications/{settings.argocd_namespace}/{app}"


def deployment_description(state: State) -> str:
    return f"Preview {state.value}"[:140]
