"""`pull_request` webhook payloads for local mode, in the shape of GitHub's official examples.

The template is the `pull_request.labeled` example of @octokit/webhooks-examples 7.6.1, key for
key and in GitHub's order, trimmed where the schema allows it (no assignee, reviewers or
milestone) and filled from the simulated PR. It lives here, not in the npm package, because the
bot must not need npm at run time. tests/unit/test_local.py checks every action's payload against
@octokit/webhooks-schemas and the key order against the official example, so the template cannot
drift from what GitHub sends.
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

API = "https://api.github.com"
WEB = "https://github.com"
INSTALLATION_ID = 1  # the id GitHub's own examples use; local mode has one "installation"
TRIGGER_COLOR = "0e8a16"
TRIGGER_DESCRIPTION = "Deploy a preview of this pull request"

# pull_request actions `simulate` sends, by its command name.
ACTIONS = {
    "label": "labeled",
    "push": "synchronize",
    "unlabel": "unlabeled",
    "close": "closed",
    "reopen": "reopened",
}

# The URL fields of a repository object, in GitHub's order, after `url` (the repository's API
# URL) and relative to it. Order matters only for faithfulness: JSON readers do not care.
_REPO_URLS: tuple[tuple[str, str], ...] = (
    ("forks_url", "/forks"),
    ("keys_url", "/keys{/key_id}"),
    ("collaborators_url", "/collaborators{/collaborator}"),
    ("teams_url", "/teams"),
    ("hooks_url", "/hooks"),
    ("issue_events_url", "/issues/events{/number}"),
    ("events_url", "/events"),
    ("assignees_url", "/assignees{/user}"),
    ("branches_url", "/branches{/branch}"),
    ("tags_url", "/tags"),
    ("blobs_url", "/git/blobs{/sha}"),
    ("git_tags_url", "/git/tags{/sha}"),
    ("git_refs_url", "/git/refs{/sha}"),
    ("trees_url", "/git/trees{/sha}"),
    ("statuses_url", "/statuses/{sha}"),
    ("languages_url", "/languages"),
    ("stargazers_url", "/stargazers"),
    ("contributors_url", "/contributors"),
    ("subscribers_url", "/subscribers"),
    ("subscription_url", "/subscription"),
    ("commits_url", "/commits{/sha}"),
    ("git_commits_url", "/git/commits{/sha}"),
    ("comments_url", "/comments{/number}"),
    ("issue_comment_url", "/issues/comments{/number}"),
    ("contents_url", "/contents/{+path}"),
    ("compare_url", "/compare/{base}...{head}"),
    ("merges_url", "/merges"),
    ("archive_url", "/{archive_format}{/ref}"),
    ("downloads_url", "/downloads"),
    ("issues_url", "/issues{/number}"),
    ("pulls_url", "/pulls{/number}"),
    ("milestones_url", "/milestones{/number}"),
    ("notifications_url", "/notifications{?since,all,participating}"),
    ("labels_url", "/labels{/name}"),
    ("releases_url", "/releases{/id}"),
    ("deployments_url", "/deployments"),
)
_USER_URLS: tuple[tuple[str, str], ...] = (
    ("followers_url", "/followers"),
    ("following_url", "/following{/other_user}"),
    ("gists_url", "/gists{/gist_id}"),
    ("starred_url", "/starred{/owner}{/repo}"),
    ("subscriptions_url", "/subscriptions"),
    ("organizations_url", "/orgs"),
    ("repos_url", "/repos"),
    ("events_url", "/events{/privacy}"),
    ("received_events_url", "/received_events"),
)


@dataclass
class PullState:
    """A simulated PR as GitHub would hold it: what `simulate` keeps in DIR/github/pr-N.json."""

    number: int
    title: str
    head_ref: str
    head_sha: str
    base_ref: str
    base_sha: str
    created_at: str
    updated_at: str
    state: str = "open"  # open | closed
    closed_at: str | None = None
    labels: list[str] = field(default_factory=list)
    commits: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PullState:
        return cls(**data)


def _id(kind: str, text: str) -> int:
    """A stable, plausible numeric id for a simulated object (GitHub's are opaque integers)."""
    return 100_000_000 + zlib.crc32(f"{kind}:{text}".encode()) % 900_000_000


def node_id(kind: str, number: int) -> str:
    """A node id in GitHub's legacy format: base64 of `0<len>:<Kind><id>` (as in the examples)."""
    return base64.b64encode(f"0{len(kind)}:{kind}{number}".encode()).decode()


def user(login: str) -> dict[str, Any]:
    uid = _id("user", login)
    api = f"{API}/users/{login}"
    out: dict[str, Any] = {
        "login": login,
        "id": uid,
        "node_id": node_id("User", uid),
        "avatar_url": f"https://avatars.githubusercontent.com/u/{uid}?v=4",
        "gravatar_id": "",
        "url": api,
        "html_url": f"{WEB}/{login}",
    }
    out.update({key: api + suffix for key, suffix in _USER_URLS})
    out.update({"type": "User", "site_admin": False})
    return out


def repository(
    full_name: str, default_branch: str, created_at: str, pushed_at: str
) -> dict[str, Any]:
    owner, name = full_name.split("/", 1)
    rid = _id("repo", full_name)
    api = f"{API}/repos/{full_name}"
    out: dict[str, Any] = {
        "id": rid,
        "node_id": node_id("Repository", rid),
        "name": name,
        "full_name": full_name,
        "private": False,
        "owner": user(owner),
        "html_url": f"{WEB}/{full_name}",
        "description": "A repository served by preview-bot's local mode",
        "fork": False,
        "url": api,
    }
    out.update({key: api + suffix for key, suffix in _REPO_URLS})
    out.update(
        {
            "created_at": created_at,
            "updated_at": pushed_at,
            "pushed_at": pushed_at,
            "git_url": f"git://github.com/{full_name}.git",
            "ssh_url": f"git@github.com:{full_name}.git",
            "clone_url": f"{WEB}/{full_name}.git",
            "svn_url": f"{WEB}/{full_name}",
            "homepage": None,
            "size": 0,
            "stargazers_count": 0,
            "watchers_count": 0,
            "language": "Python",
            "has_issues": True,
            "has_projects": True,
            "has_downloads": True,
            "has_wiki": True,
            "has_pages": False,
            "forks_count": 0,
            "mirror_url": None,
            "archived": False,
            "disabled": False,
            "open_issues_count": 1,
            "license": None,
            "forks": 0,
            "open_issues": 1,
            "watchers": 0,
            "default_branch": default_branch,
            "is_template": False,
            "topics": [],
            "visibility": "public",
            "web_commit_signoff_required": False,
            "custom_properties": {},
        }
    )
    return out


def label(full_name: str, name: str, trigger: bool = True) -> dict[str, Any]:
    lid = _id("label", f"{full_name}:{name}")
    return {
        "id": lid,
        "node_id": node_id("Label", lid),
        "url": f"{API}/repos/{full_name}/labels/{quote(name, safe='')}",
        "name": name,
        "color": TRIGGER_COLOR if trigger else "ededed",
        "default": False,
        "description": TRIGGER_DESCRIPTION if trigger else None,
    }


def pull_request(
    pr: PullState, full_name: str, default_branch: str, trigger_label: str
) -> dict[str, Any]:
    owner = full_name.split("/", 1)[0]
    pid = _id("pull", f"{full_name}#{pr.number}")
    api = f"{API}/repos/{full_name}"
    html = f"{WEB}/{full_name}/pull/{pr.number}"
    issue = f"{api}/issues/{pr.number}"
    repo = repository(full_name, default_branch, pr.created_at, pr.updated_at)
    author = user(owner)
    links = {
        "self": f"{api}/pulls/{pr.number}",
        "html": html,
        "issue": issue,
        "comments": f"{issue}/comments",
        "review_comments": f"{api}/pulls/{pr.number}/comments",
        "review_comment": f"{api}/pulls/comments{{/number}}",
        "commits": f"{api}/pulls/{pr.number}/commits",
        "statuses": f"{api}/statuses/{pr.head_sha}",
    }
    return {
        "url": links["self"],
        "id": pid,
        "node_id": node_id("PullRequest", pid),
        "html_url": html,
        "diff_url": f"{html}.diff",
        "patch_url": f"{html}.patch",
        "issue_url": issue,
        "number": pr.number,
        "state": pr.state,
        "locked": False,
        "title": pr.title,
        "user": author,
        "body": "Opened by `preview-bot simulate` (local mode).",
        "created_at": pr.created_at,
        "updated_at": pr.updated_at,
        "closed_at": pr.closed_at,
        "merged_at": None,
        "merge_commit_sha": None,
        "assignee": None,
        "assignees": [],
        "requested_reviewers": [],
        "requested_teams": [],
        "labels": [label(full_name, n, n == trigger_label) for n in pr.labels],
        "milestone": None,
        "commits_url": links["commits"],
        "review_comments_url": links["review_comments"],
        "review_comment_url": links["review_comment"],
        "comments_url": links["comments"],
        "statuses_url": links["statuses"],
        "head": {
            "label": f"{owner}:{pr.head_ref}",
            "ref": pr.head_ref,
            "sha": pr.head_sha,
            "user": author,
            "repo": repo,
        },
        "base": {
            "label": f"{owner}:{pr.base_ref}",
            "ref": pr.base_ref,
            "sha": pr.base_sha,
            "user": author,
            "repo": repo,
        },
        "_links": {key: {"href": href} for key, href in links.items()},
        "author_association": "OWNER",
        "auto_merge": None,
        "active_lock_reason": None,
        "draft": False,
        "merged": False,
        "mergeable": None if pr.state == "closed" else True,
        "rebaseable": None if pr.state == "closed" else True,
        "mergeable_state": "unknown" if pr.state == "closed" else "clean",
        "merged_by": None,
        "comments": 0,
        "review_comments": 0,
        "maintainer_can_modify": False,
        "commits": pr.commits,
        "additions": pr.commits,
        "deletions": 0,
        "changed_files": 1,
    }


@dataclass(frozen=True)
class SimulatedRepo:
    """The repository a simulated PR belongs to, as its deliveries name it."""

    full_name: str  # owner/name
    default_branch: str
    trigger_label: str


def build_payload(
    action: str, pr: PullState, repo: SimulatedRepo, before: str | None = None
) -> dict[str, Any]:
    """The `pull_request` delivery GitHub sends for `action` (labeled, synchronize, ...).

    `pr` is the PR's state after the action; `before` is the previous head (synchronize).
    """
    full_name, trigger_label = repo.full_name, repo.trigger_label
    owner = full_name.split("/", 1)[0]
    payload: dict[str, Any] = {
        "action": action,
        "number": pr.number,
        "pull_request": pull_request(pr, full_name, repo.default_branch, trigger_label),
    }
    if action == "synchronize":
        if before is None:
            raise ValueError("synchronize needs the previous head sha (before)")
        payload.update(before=before, after=pr.head_sha)
    if action in ("labeled", "unlabeled"):
        payload["label"] = label(full_name, trigger_label)
    payload["repository"] = payload["pull_request"]["base"]["repo"]
    payload["installation"] = {
        "id": INSTALLATION_ID,
        "node_id": node_id("IntegrationInstallation", INSTALLATION_ID),
    }
    payload["sender"] = user(owner)
    return payload
