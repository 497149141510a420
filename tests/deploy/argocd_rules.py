"""Argo CD's AppProject checks, transcribed, so tests can ask what a project admits.

From argoproj/argo-cd `pkg/apis/application/v1alpha1/app_project_types.go` (3.x) and
`util/git` `NormalizeGitURL`: sourceRepos are matched after lower-casing both sides and dropping
`.git`, as globs (gobwas/glob) whose `*` and `?` stop at `/`; destinations and resource names
as globs without separators; a cluster-scoped kind must be in clusterResourceWhitelist (with a
name glob where given), a namespaced kind must not be in namespaceResourceBlacklist and its
namespace must be a destination; an Application outside Argo CD's namespace must be in
sourceNamespaces. Deny patterns (`!...`) and `{a,b}` are left out: the chart writes neither.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any


@dataclass(frozen=True)
class Resource:
    """One object of a preview's manifests; namespace None for a cluster-scoped one."""

    group: str
    kind: str
    name: str
    namespace: str | None = None


def _glob(pattern: str, separator: str | None = None) -> re.Pattern[str]:
    """A gobwas/glob pattern (`**`, `*`, `?`, `[...]`) as a regular expression."""
    one = f"[^{re.escape(separator)}]" if separator else "."
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append(one + "*")
            i += 1
        elif pattern[i] == "?":
            out.append(one)
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out.append("[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def glob_match(pattern: str, value: str, separator: str | None = None) -> bool:
    return pattern == "*" or bool(_glob(pattern, separator).match(value))


def normalize_git_url(url: str) -> str:
    url = url.strip().lower()
    return url.removesuffix(".git")


def source_permitted(project: dict[str, Any], repo_url: str) -> bool:
    wanted = normalize_git_url(repo_url)
    return any(
        glob_match(normalize_git_url(pattern), wanted, "/")
        for pattern in project["spec"].get("sourceRepos") or []
    )


def destination_permitted(project: dict[str, Any], server: str, namespace: str) -> bool:
    return any(
        glob_match(d.get("server", ""), server) and glob_match(d.get("namespace", ""), namespace)
        for d in project["spec"].get("destinations") or []
    )


def _listed(entries: list[dict[str, str]], obj: Resource) -> bool:
    # Kind and group with Go's filepath.Match (fnmatch, for names without `/`); a missing name
    # matches every name.
    return any(
        fnmatchcase(obj.kind, e["kind"])
        and fnmatchcase(obj.group, e["group"])
        and ("name" not in e or fnmatchcase(obj.name, e["name"]))
        for e in entries
    )


def resource_permitted(project: dict[str, Any], obj: Resource, server: str) -> bool:
    """IsGroupKindNamePermitted, plus the destination check of a namespaced object."""
    spec = project["spec"]
    if obj.namespace is None:  # cluster-scoped: only what the whitelist names
        return _listed(spec.get("clusterResourceWhitelist") or [], obj) and not _listed(
            spec.get("clusterResourceBlacklist") or [], obj
        )
    whitelist = spec.get("namespaceResourceWhitelist")
    allowed = whitelist is None or _listed(whitelist, obj)
    denied = _listed(spec.get("namespaceResourceBlacklist") or [], obj)
    return allowed and not denied and destination_permitted(project, server, obj.namespace)


def app_namespace_permitted(project: dict[str, Any], app_namespace: str) -> bool:
    """An Application in Argo CD's own namespace may use any project; elsewhere only a project
    whose sourceNamespaces name its namespace."""
    if app_namespace == project["metadata"]["namespace"]:
        return True
    return any(glob_match(p, app_namespace) for p in project["spec"].get("sourceNamespaces") or [])


def admits(project: dict[str, Any], app: dict[str, Any]) -> bool:
    """Whether Argo CD would run this Application in this project."""
    spec = app["spec"]
    return (
        spec["project"] == project["metadata"]["name"]
        and app_namespace_permitted(project, app["metadata"]["namespace"])
        and source_permitted(project, spec["source"]["repoURL"])
        and destination_permitted(
            project, spec["destination"]["server"], spec["destination"]["namespace"]
        )
    )
