"""JSON shapes of GitHub's REST resources, built from the fake's state (the fields GitHub sends)."""

from __future__ import annotations

import base64
import zlib
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from tests.rig.github.gitstore import Commit, Person
from tests.rig.github.state import (
    CheckRun,
    Comment,
    CommitStatus,
    Deployment,
    DeploymentStatus,
    Installation,
    IssueEvent,
    Label,
    Pull,
    Reaction,
    Repo,
    User,
)

HTML = "https://github.com"
# The order of GitHub's reaction rollup keys in comments and issues.
_ROLLUP = ("+1", "-1", "laugh", "hooray", "confused", "heart", "rocket", "eyes")
# Apps other than the test App (a CI's check runs): GitHub Actions has this id on github.com.
_KNOWN_APPS = {"github-actions": (15368, "github")}

JSON = dict[str, Any]


def iso(when: datetime | None) -> str | None:
    if when is None:
        return None
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_id(kind: str, ident: int | str) -> str:
    """GitHub's legacy global ids: base64 of '<len>:<Type><id>' (e.g. MDQ6VXNlcjE= = 04:User1)."""
    return base64.b64encode(f"{len(kind):02d}:{kind}{ident}".encode()).decode()


def b64_lines(data: bytes) -> str:
    """Base64 with a newline every 60 characters, as the contents and blobs APIs send it."""
    text = base64.b64encode(data).decode()
    return "".join(text[i : i + 60] + "\n" for i in range(0, len(text), 60))


_REPO_URLS = [
    ("archive_url", "/{archive_format}{/ref}"),
    ("assignees_url", "/assignees{/user}"),
    ("blobs_url", "/git/blobs{/sha}"),
    ("branches_url", "/branches{/branch}"),
    ("collaborators_url", "/collaborators{/collaborator}"),
    ("comments_url", "/comments{/number}"),
    ("commits_url", "/commits{/sha}"),
    ("compare_url", "/compare/{base}...{head}"),
    ("contents_url", "/contents/{+path}"),
    ("contributors_url", "/contributors"),
    ("deployments_url", "/deployments"),
    ("downloads_url", "/downloads"),
    ("events_url", "/events"),
    ("forks_url", "/forks"),
    ("git_commits_url", "/git/commits{/sha}"),
    ("git_refs_url", "/git/refs{/sha}"),
    ("git_tags_url", "/git/tags{/sha}"),
    ("hooks_url", "/hooks"),
    ("issue_comment_url", "/issues/comments{/number}"),
    ("issue_events_url", "/issues/events{/number}"),
    ("issues_url", "/issues{/number}"),
    ("keys_url", "/keys{/key_id}"),
    ("labels_url", "/labels{/name}"),
    ("languages_url", "/languages"),
    ("merges_url", "/merges"),
    ("milestones_url", "/milestones{/number}"),
    ("notifications_url", "/notifications{?since,all,participating}"),
    ("pulls_url", "/pulls{/number}"),
    ("releases_url", "/releases{/id}"),
    ("stargazers_url", "/stargazers"),
    ("statuses_url", "/statuses/{sha}"),
    ("subscribers_url", "/subscribers"),
    ("subscription_url", "/subscription"),
    ("tags_url", "/tags"),
    ("teams_url", "/teams"),
    ("trees_url", "/git/trees{/sha}"),
]


class Shapes:
    """Renders state as GitHub does; API URLs point at the fake (as GHES URLs point at GHES)."""

    def __init__(
        self,
        api: str,
        app_id: int,
        app_slug: str,
        app_owner: User,
        app_permissions: dict[str, str],
        app_created: datetime,
    ) -> None:
        self.api = api.rstrip("/")
        self.app_id = app_id
        self.app_slug = app_slug
        self.app_owner = app_owner
        self.app_permissions = app_permissions
        self.app_created = app_created

    # -- accounts ---------------------------------------------------------------------------
    def user(self, u: User) -> JSON:
        base = f"{self.api}/users/{u.login}"
        return {
            "login": u.login,
            "id": u.id,
            "node_id": node_id("Bot" if u.type == "Bot" else u.type, u.id),
            "avatar_url": f"https://avatars.githubusercontent.com/u/{u.id}?v=4",
            "gravatar_id": "",
            "url": base,
            "html_url": f"{HTML}/{u.login}",
            "followers_url": f"{base}/followers",
            "following_url": f"{base}/following{{/other_user}}",
            "gists_url": f"{base}/gists{{/gist_id}}",
            "starred_url": f"{base}/starred{{/owner}}{{/repo}}",
            "subscriptions_url": f"{base}/subscriptions",
            "organizations_url": f"{base}/orgs",
            "repos_url": f"{base}/repos",
            "events_url": f"{base}/events{{/privacy}}",
            "received_events_url": f"{base}/received_events",
            "type": u.type,
            "user_view_type": "public",
            "site_admin": False,
        }

    def integration(self) -> JSON:
        return {
            "id": self.app_id,
            "slug": self.app_slug,
            "client_id": f"Iv1.{self.app_id:016x}",
            "node_id": node_id("Integration", self.app_id),
            "owner": self.user(self.app_owner),
            "name": self.app_slug,
            "description": "preview-bot test App",
            "external_url": "https://example.com",
            "html_url": f"{HTML}/apps/{self.app_slug}",
            "created_at": iso(self.app_created),
            "updated_at": iso(self.app_created),
            "permissions": dict(self.app_permissions),
            "events": ["pull_request", "issue_comment", "push"],
        }

    def other_app(self, slug: str) -> JSON:
        """Another App (e.g. `github-actions`, whose check runs a CI makes), as GitHub shows it."""
        app_id, owner = _KNOWN_APPS.get(slug, (zlib.crc32(slug.encode()) % 900_000 + 1000, slug))
        owner_user = User(owner, app_id * 7 + 1, "Organization")
        return {
            "id": app_id,
            "slug": slug,
            "client_id": f"Iv1.{app_id:016x}",
            "node_id": node_id("Integration", app_id),
            "owner": self.user(owner_user),
            "name": slug,
            "description": "",
            "external_url": f"https://{slug}.example",
            "html_url": f"{HTML}/apps/{slug}",
            "created_at": iso(self.app_created),
            "updated_at": iso(self.app_created),
            "permissions": {"checks": "write", "contents": "read", "metadata": "read"},
            "events": ["check_run", "check_suite", "push", "pull_request"],
        }

    def app_of(self, slug: str | None) -> JSON:
        """The test App (None) or another App by slug."""
        return self.integration() if slug is None else self.other_app(slug)

    def installation(self, inst: Installation) -> JSON:
        return {
            "id": inst.id,
            "account": self.user(inst.account),
            "repository_selection": inst.repository_selection,
            "access_tokens_url": f"{self.api}/app/installations/{inst.id}/access_tokens",
            "repositories_url": f"{self.api}/installation/repositories",
            "html_url": f"{HTML}/settings/installations/{inst.id}",
            "app_id": self.app_id,
            "app_slug": self.app_slug,
            "client_id": f"Iv1.{self.app_id:016x}",
            "target_id": inst.account.id,
            "target_type": inst.account.type,
            "permissions": dict(inst.permissions),
            "events": ["pull_request", "issue_comment", "push"],
            "created_at": iso(inst.created_at),
            "updated_at": iso(inst.created_at),
            "single_file_name": None,
            "has_multiple_single_files": False,
            "single_file_paths": [],
            "suspended_by": None,
            "suspended_at": None,
        }

    # -- repositories -----------------------------------------------------------------------
    def repo_url(self, repo: Repo) -> str:
        return f"{self.api}/repos/{repo.full_name}"

    def repository(self, repo: Repo, *, full: bool = False) -> JSON:
        url = self.repo_url(repo)
        html = f"{HTML}/{repo.full_name}"
        open_pulls = sum(1 for p in repo.pulls.values() if p.state == "open")
        shape: JSON = {
            "id": repo.id,
            "node_id": node_id("Repository", repo.id),
            "name": repo.name,
            "full_name": repo.full_name,
            "private": repo.private,
            "owner": self.user(repo.owner),
            "html_url": html,
            "description": repo.description,
            "fork": repo.fork,
            "url": url,
        }
        shape.update({key: url + suffix for key, suffix in _REPO_URLS})
        shape.update(
            {
                "git_url": f"git://github.com/{repo.full_name}.git",
                "ssh_url": f"git@github.com:{repo.full_name}.git",
                "clone_url": f"{html}.git",
                "svn_url": html,
                "mirror_url": None,
                "homepage": None,
                "language": None,
                "forks_count": 0,
                "forks": 0,
                "stargazers_count": 0,
                "watchers_count": 0,
                "watchers": 0,
                "size": 1,
                "default_branch": repo.default_branch,
                "open_issues_count": open_pulls,
                "open_issues": open_pulls,
                "is_template": False,
                "topics": [],
                "has_issues": True,
                "has_projects": True,
                "has_wiki": True,
                "has_pages": False,
                "has_downloads": True,
                "has_discussions": False,
                "archived": False,
                "disabled": False,
                "visibility": "private" if repo.private else "public",
                "pushed_at": iso(repo.pushed_at),
                "created_at": iso(repo.created_at),
                "updated_at": iso(repo.updated_at),
                "permissions": {
                    "admin": False,
                    "maintain": False,
                    "push": True,
                    "triage": True,
                    "pull": True,
                },
                "allow_forking": True,
                "web_commit_signoff_required": False,
                "license": None,
            }
        )
        if full:
            shape.update(
                {
                    "allow_rebase_merge": True,
                    "allow_squash_merge": True,
                    "allow_merge_commit": True,
                    "allow_auto_merge": False,
                    "delete_branch_on_merge": False,
                    "allow_update_branch": False,
                    "use_squash_pr_title_as_default": False,
                    "squash_merge_commit_title": "COMMIT_OR_PR_TITLE",
                    "squash_merge_commit_message": "COMMIT_MESSAGES",
                    "merge_commit_title": "MERGE_MESSAGE",
                    "merge_commit_message": "PR_TITLE",
                    "temp_clone_token": "",
                    "network_count": 0,
                    "subscribers_count": 0,
                }
            )
            if repo.parent is not None:
                shape["parent"] = self.repository(repo.parent)
                shape["source"] = self.repository(repo.parent)
        return shape

    def label(self, repo: Repo, label: Label) -> JSON:
        return {
            "id": label.id,
            "node_id": node_id("Label", label.id),
            "url": f"{self.repo_url(repo)}/labels/{quote(label.name, safe='')}",
            "name": label.name,
            "color": label.color,
            "default": label.default,
            "description": label.description,
        }

    # -- pull requests ----------------------------------------------------------------------
    def pull(self, pr: Pull, *, simple: bool = False) -> JSON:
        repo = pr.repo
        url = f"{self.repo_url(repo)}/pulls/{pr.number}"
        html = f"{HTML}/{repo.full_name}/pull/{pr.number}"
        issue = f"{self.repo_url(repo)}/issues/{pr.number}"
        statuses = f"{self.repo_url(repo)}/statuses/{pr.head_sha}"
        base_sha = repo.store.refs.get(f"refs/heads/{pr.base_ref}", "")
        shape: JSON = {
            "url": url,
            "id": pr.id,
            "node_id": node_id("PullRequest", pr.id),
            "html_url": html,
            "diff_url": f"{html}.diff",
            "patch_url": f"{html}.patch",
            "issue_url": issue,
            "commits_url": f"{url}/commits",
            "review_comments_url": f"{url}/comments",
            "review_comment_url": f"{self.repo_url(repo)}/pulls/comments{{/number}}",
            "comments_url": f"{issue}/comments",
            "statuses_url": statuses,
            "number": pr.number,
            "state": pr.state,
            "locked": pr.locked,
            "title": pr.title,
            "user": self.user(pr.user),
            "body": pr.body,
            "labels": [self.label(repo, repo.labels[name]) for name in pr.labels],
            "milestone": None,
            "active_lock_reason": None,
            "created_at": iso(pr.created_at),
            "updated_at": iso(pr.updated_at),
            "closed_at": iso(pr.closed_at),
            "merged_at": iso(pr.merged_at),
            "merge_commit_sha": pr.merge_commit_sha,
            "assignee": None,
            "assignees": [],
            "requested_reviewers": [],
            "requested_teams": [],
            "head": {
                "label": f"{pr.head_repo.owner.login}:{pr.head_ref}",
                "ref": pr.head_ref,
                "sha": pr.head_sha,
                "user": self.user(pr.head_repo.owner),
                "repo": self.repository(pr.head_repo),
            },
            "base": {
                "label": f"{repo.owner.login}:{pr.base_ref}",
                "ref": pr.base_ref,
                "sha": base_sha,
                "user": self.user(repo.owner),
                "repo": self.repository(repo),
            },
            "_links": {
                "self": {"href": url},
                "html": {"href": html},
                "issue": {"href": issue},
                "comments": {"href": f"{issue}/comments"},
                "review_comments": {"href": f"{url}/comments"},
                "review_comment": {"href": f"{self.repo_url(repo)}/pulls/comments{{/number}}"},
                "commits": {"href": f"{url}/commits"},
                "statuses": {"href": statuses},
            },
            "author_association": _association(repo, pr.user),
            "auto_merge": None,
            "draft": pr.draft,
        }
        if not simple:
            comments = sum(1 for c in repo.comments.values() if c.number == pr.number)
            shape.update(
                {
                    "merged": pr.merged,
                    "mergeable": None if pr.state == "closed" else True,
                    "rebaseable": None if pr.state == "closed" else True,
                    "mergeable_state": "unknown" if pr.state == "closed" else "clean",
                    "merged_by": self.user(pr.merged_by) if pr.merged_by else None,
                    "comments": comments,
                    "review_comments": 0,
                    "maintainer_can_modify": pr.fork,
                    "commits": max(len(pr.head_history), 1),
                    "additions": 1,
                    "deletions": 0,
                    "changed_files": 1,
                }
            )
        return shape

    # -- issues -----------------------------------------------------------------------------
    def comment(self, repo: Repo, c: Comment) -> JSON:
        url = f"{self.repo_url(repo)}/issues/comments/{c.id}"
        pull = c.number in repo.pulls
        html_kind = "pull" if pull else "issues"
        shape: JSON = {
            "id": c.id,
            "node_id": node_id("IssueComment", c.id),
            "url": url,
            "html_url": f"{HTML}/{repo.full_name}/{html_kind}/{c.number}#issuecomment-{c.id}",
            "body": c.body,
            "user": self.user(c.user),
            "created_at": iso(c.created_at),
            "updated_at": iso(c.updated_at),
            "issue_url": f"{self.repo_url(repo)}/issues/{c.number}",
            "author_association": _association(repo, c.user),
            "performed_via_github_app": self.integration() if c.via_app else None,
            "reactions": {
                "url": f"{url}/reactions",
                "total_count": len(c.reactions),
                **{k: sum(1 for r in c.reactions if r.content == k) for k in _ROLLUP},
            },
        }
        return shape

    def reaction(self, r: Reaction) -> JSON:
        return {
            "id": r.id,
            "node_id": node_id("Reaction", r.id),
            "user": self.user(r.user),
            "content": r.content,
            "created_at": iso(r.created_at),
        }

    def issue_event(self, repo: Repo, e: IssueEvent) -> JSON:
        kind = "".join(part.capitalize() for part in e.event.split("_")) + "Event"
        shape: JSON = {
            "id": e.id,
            "node_id": node_id(kind, e.id),
            "url": f"{self.repo_url(repo)}/issues/events/{e.id}",
            "actor": self.user(e.actor),
            "event": e.event,
            "commit_id": e.commit_id,
            "commit_url": f"{self.repo_url(repo)}/commits/{e.commit_id}" if e.commit_id else None,
            "created_at": iso(e.created_at),
            "performed_via_github_app": self.integration() if e.via_app else None,
        }
        if e.label is not None:
            shape["label"] = {"name": e.label.name, "color": e.label.color}
        return shape

    def permission(self, repo: Repo, user: User, permission: str) -> JSON:
        collaborator = self.user(user)
        role = {
            "admin": "admin",
            "maintain": "maintain",
            "write": "write",
            "triage": "triage",
            "read": "read",
        }.get(permission, "none")
        collaborator["permissions"] = {
            "admin": permission == "admin",
            "maintain": permission in ("admin", "maintain"),
            "push": permission in ("admin", "maintain", "write"),
            "triage": permission in ("admin", "maintain", "write", "triage"),
            "pull": permission != "none",
        }
        collaborator["role_name"] = role
        # The legacy `permission` field folds maintain into write and triage into read.
        legacy = {"maintain": "write", "triage": "read"}.get(permission, permission)
        return {"permission": legacy, "role_name": role, "user": collaborator}

    # -- deployments, checks, statuses --------------------------------------------------------
    def deployment(self, repo: Repo, d: Deployment) -> JSON:
        url = f"{self.repo_url(repo)}/deployments/{d.id}"
        return {
            "url": url,
            "id": d.id,
            "node_id": node_id("Deployment", d.id),
            "sha": d.sha,
            "ref": d.ref,
            "task": d.task,
            "payload": d.payload,
            "original_environment": d.original_environment,
            "environment": d.environment,
            "description": d.description,
            "creator": self.user(d.creator),
            "created_at": iso(d.created_at),
            "updated_at": iso(d.updated_at),
            "statuses_url": f"{url}/statuses",
            "repository_url": self.repo_url(repo),
            "transient_environment": d.transient_environment,
            "production_environment": d.production_environment,
            "performed_via_github_app": self.integration() if d.via_app else None,
        }

    def deployment_status(self, repo: Repo, d: Deployment, s: DeploymentStatus) -> JSON:
        url = f"{self.repo_url(repo)}/deployments/{d.id}"
        return {
            "url": f"{url}/statuses/{s.id}",
            "id": s.id,
            "node_id": node_id("DeploymentStatus", s.id),
            "state": s.state,
            "creator": self.user(s.creator),
            "description": s.description,
            "environment": s.environment,
            "target_url": s.target_url,
            "created_at": iso(s.created_at),
            "updated_at": iso(s.updated_at),
            "deployment_url": url,
            "repository_url": self.repo_url(repo),
            "environment_url": s.environment_url,
            "log_url": s.log_url,
            "performed_via_github_app": self.integration() if s.via_app else None,
        }

    def check_run(self, repo: Repo, run: CheckRun) -> JSON:
        url = f"{self.repo_url(repo)}/check-runs/{run.id}"
        pulls = self.check_pulls(repo, run.head_sha)
        output = run.output
        return {
            "id": run.id,
            "head_sha": run.head_sha,
            "node_id": node_id("CheckRun", run.id),
            "external_id": run.external_id or "",
            "url": url,
            "html_url": f"{HTML}/{repo.full_name}/runs/{run.id}",
            "details_url": run.details_url or f"{HTML}/{repo.full_name}/runs/{run.id}",
            "status": run.status,
            "conclusion": run.conclusion,
            "started_at": iso(run.started_at),
            "completed_at": iso(run.completed_at),
            "output": {
                "title": output.get("title"),
                "summary": output.get("summary"),
                "text": output.get("text"),
                "annotations_count": len(output.get("annotations") or []),
                "annotations_url": f"{url}/annotations",
            },
            "name": run.name,
            "check_suite": {"id": run.check_suite_id},
            "app": self.app_of(run.app),
            "pull_requests": pulls,
        }

    def check_pulls(self, repo: Repo, sha: str) -> list[JSON]:
        """The `pull_requests` of a check run or suite on `sha`."""
        return [
            {
                "id": p.id,
                "number": p.number,
                "url": f"{self.repo_url(repo)}/pulls/{p.number}",
                "head": {
                    "ref": p.head_ref,
                    "sha": p.head_sha,
                    "repo": {
                        "id": p.head_repo.id,
                        "url": self.repo_url(p.head_repo),
                        "name": p.head_repo.name,
                    },
                },
                "base": {
                    "ref": p.base_ref,
                    "sha": repo.store.refs.get(f"refs/heads/{p.base_ref}", ""),
                    "repo": {"id": repo.id, "url": self.repo_url(repo), "name": repo.name},
                },
            }
            for p in repo.pulls.values()
            # GitHub lists only open PRs from the same repository (never forks) here.
            if p.state == "open" and not p.fork and p.head_sha == sha
        ]

    def commit_status(self, repo: Repo, s: CommitStatus) -> JSON:
        return {
            "url": f"{self.repo_url(repo)}/statuses/{s.sha}",
            "avatar_url": f"https://avatars.githubusercontent.com/u/{s.creator.id}?v=4",
            "id": s.id,
            "node_id": node_id("StatusContext", s.id),
            "state": s.state,
            "description": s.description,
            "target_url": s.target_url,
            "context": s.context,
            "created_at": iso(s.created_at),
            "updated_at": iso(s.updated_at),
            "creator": self.user(s.creator),
        }

    # -- git data ---------------------------------------------------------------------------
    def git_ref(self, repo: Repo, ref: str, sha: str, kind: str) -> JSON:
        return {
            "ref": ref,
            "node_id": node_id("Ref", f"{repo.id}:{ref}"),
            "url": f"{self.repo_url(repo)}/git/{ref}",
            "object": {"type": kind, "sha": sha, "url": f"{self.repo_url(repo)}/git/{kind}s/{sha}"},
        }

    @staticmethod
    def person(p: Person) -> JSON:
        return {"name": p.name, "email": p.email, "date": p.iso()}

    def git_commit(self, repo: Repo, c: Commit) -> JSON:
        url = f"{self.repo_url(repo)}/git/commits/{c.sha}"
        return {
            "sha": c.sha,
            "node_id": node_id("Commit", f"{repo.id}:{c.sha}"),
            "url": url,
            "html_url": f"{HTML}/{repo.full_name}/commit/{c.sha}",
            "author": self.person(c.author),
            "committer": self.person(c.committer),
            "tree": {"sha": c.tree, "url": f"{self.repo_url(repo)}/git/trees/{c.tree}"},
            "message": c.message,
            "parents": [
                {
                    "sha": p,
                    "url": f"{self.repo_url(repo)}/git/commits/{p}",
                    "html_url": f"{HTML}/{repo.full_name}/commit/{p}",
                }
                for p in c.parents
            ],
            # The fake does not sign commits; GitHub reports unsigned ones like this.
            "verification": {
                "verified": False,
                "reason": "unsigned",
                "signature": None,
                "payload": None,
                "verified_at": None,
            },
        }

    def content_entry(
        self, repo: Repo, ref: str, path: str, kind: str, sha: str, size: int
    ) -> JSON:
        self_url = f"{self.repo_url(repo)}/contents/{quote(path)}?ref={quote(ref, safe='')}"
        git_kind = {"dir": "trees", "file": "blobs", "symlink": "blobs"}.get(kind, "trees")
        git_url = f"{self.repo_url(repo)}/git/{git_kind}/{sha}"
        html_kind = "tree" if kind == "dir" else "blob"
        html = f"{HTML}/{repo.full_name}/{html_kind}/{ref}/{quote(path)}"
        download = (
            f"https://raw.githubusercontent.com/{repo.full_name}/{ref}/{quote(path)}"
            if kind == "file"
            else None
        )
        return {
            "type": kind,
            "size": size,
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "sha": sha,
            "url": self_url,
            "git_url": git_url,
            "html_url": html,
            "download_url": download,
            "_links": {"self": self_url, "git": git_url, "html": html},
        }


def _association(repo: Repo, user: User) -> str:
    if user.login == repo.owner.login:
        return "OWNER"
    if user.type == "Bot":
        return "NONE"
    if repo.collaborators.get(user.login, "none") in ("admin", "maintain", "write", "triage"):
        return "COLLABORATOR"
    return "CONTRIBUTOR" if any(p.user.login == user.login for p in repo.pulls.values()) else "NONE"
