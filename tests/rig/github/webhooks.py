"""Webhook payloads from the fake's state, on top of GitHub's official examples, schema-checked."""

from __future__ import annotations

import copy
import functools
import json
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

# jsonschema ships no type stubs here (types-jsonschema is not a dev dependency).
from bot.webhooks import delivery_headers
from tests.rig.artifacts import webhook_errors, webhook_examples
from tests.rig.github.shapes import HTML, iso, node_id
from tests.rig.github.state import CI_APP, Installation, Pull, Repo

if TYPE_CHECKING:
    from tests.rig.github.server import FakeGitHub

JSON = dict[str, Any]
PULL_REQUEST_ACTIONS = (
    "opened",
    "reopened",
    "closed",
    "edited",
    "labeled",
    "unlabeled",
    "synchronize",
    "ready_for_review",
    "converted_to_draft",
)
ISSUE_COMMENT_ACTIONS = ("created", "edited", "deleted")


class WebhookSchemaError(AssertionError):
    """A payload built by the fake does not match GitHub's published webhook schema."""


def validate(event: str, action: str, payload: JSON) -> None:
    """Raise WebhookSchemaError when `payload` breaks the schema of `event$action` (of
    `event$event` for events without actions, such as `status`: action "")."""
    errors = webhook_errors(event, {**payload, "action": action} if action else payload)
    if errors:
        lines = [
            f"  at /{'/'.join(str(p) for p in e.absolute_path)}: {e.message[:300]}"
            for e in errors[:10]
        ]
        raise WebhookSchemaError(
            f"{event}.{action} payload breaks the schema:\n" + "\n".join(lines)
        )


@functools.cache
def _example(event: str, action: str, organization: bool) -> JSON:
    """The first official example of event/action that passes its own schema.

    Some examples are older than the schema (e.g. the first `opened` lacks `auto_merge`), and
    there is no `pull_request.edited` example: `opened` stands in, the action is changed later.
    """
    source = "opened" if (event, action) == ("pull_request", "edited") else action
    # Events without actions (`status`) are asked for with action "".
    candidates = [e for e in webhook_examples()[event] if e.get("action") == (source or None)]
    candidates.sort(key=lambda e: ("installation" not in e, ("organization" in e) != organization))
    for example in candidates:
        if not webhook_errors(event, example):
            return example
    raise LookupError(f"no valid official example for {event}.{source}")


def overlay(example: Any, state: Any, user_template: JSON) -> Any:
    """`state`'s values in `example`'s shape: keys GitHub sends stay, our extras are dropped.

    Lists overlay each item onto the example's first item; a user where the example has null
    (e.g. `merged_by`) takes the shape of the example's `sender`.
    """
    if isinstance(example, dict) and isinstance(state, dict):
        return {
            k: overlay(v, state[k], user_template) if k in state else v for k, v in example.items()
        }
    if isinstance(example, list) and isinstance(state, list):
        if example:
            return [overlay(example[0], item, user_template) for item in state]
        return copy.deepcopy(state)
    if example is None and isinstance(state, dict) and "login" in state:
        return overlay(user_template, state, user_template)
    return copy.deepcopy(state)


def _issue_shape(fake: FakeGitHub, pr: Pull) -> JSON:
    """The issue side of a pull request, as an issue_comment webhook carries it."""
    repo = pr.repo
    shapes = fake.shapes
    url = f"{shapes.repo_url(repo)}/issues/{pr.number}"
    html = f"{HTML}/{repo.full_name}/pull/{pr.number}"
    comments = sum(1 for c in repo.comments.values() if c.number == pr.number)
    return {
        "url": url,
        "repository_url": shapes.repo_url(repo),
        "labels_url": f"{url}/labels{{/name}}",
        "comments_url": f"{url}/comments",
        "events_url": f"{url}/events",
        "html_url": html,
        # Issue ids differ from pull request ids on GitHub; derive a stable distinct one.
        "id": pr.id + 900_000_000,
        "node_id": node_id("Issue", pr.id + 900_000_000),
        "number": pr.number,
        "title": pr.title,
        "user": shapes.user(pr.user),
        "labels": [shapes.label(repo, repo.labels[n]) for n in pr.labels],
        "state": pr.state,
        "locked": pr.locked,
        "assignee": None,
        "assignees": [],
        "milestone": None,
        "comments": comments,
        "created_at": iso(pr.created_at),
        "updated_at": iso(pr.updated_at),
        "closed_at": iso(pr.closed_at),
        "author_association": shapes.pull(pr, simple=True)["author_association"],
        "active_lock_reason": None,
        "draft": pr.draft,
        "body": pr.body,
        "reactions": {
            "url": f"{url}/reactions",
            "total_count": 0,
            "+1": 0,
            "-1": 0,
            "laugh": 0,
            "hooray": 0,
            "confused": 0,
            "heart": 0,
            "rocket": 0,
            "eyes": 0,
        },
        "timeline_url": f"{url}/timeline",
        "performed_via_github_app": None,
        "state_reason": None,
    }


def _organization(fake: FakeGitHub, repo: Repo) -> JSON:
    org = repo.owner
    base = f"{fake.shapes.api}/orgs/{org.login}"
    return {
        "login": org.login,
        "id": org.id,
        "node_id": node_id("Organization", org.id),
        "url": base,
        "repos_url": f"{base}/repos",
        "events_url": f"{base}/events",
        "hooks_url": f"{base}/hooks",
        "issues_url": f"{base}/issues",
        "members_url": f"{base}/members{{/member}}",
        "public_members_url": f"{base}/public_members{{/member}}",
        "avatar_url": f"https://avatars.githubusercontent.com/u/{org.id}?v=4",
        "description": None,
    }


def event_payload(
    fake: FakeGitHub, event: str, action: str, owner: str, name: str, number: int, **extra: Any
) -> JSON:
    """A `pull_request` or `issue_comment` payload for PR `number`, from the fake's state.
    (Other events: check_run_payload, check_suite_payload, status_payload,
    installation_payload and installation_repositories_payload below.)

    extra keywords:
      sender: login of who acted (default: who did it as the issue events recorded it,
              e.g. add_label(by=); else the PR author, merged_by for merged closes; the
              comment author for comments)
      label: for labeled/unlabeled, the label name (default: the last one added/removed)
      before / after: for synchronize (default: the previous and current head sha)
      changes: for edited (default: what edit_pull recorded)
      comment_id / body / user: for issue_comment; without comment_id a comment with `body`
              by `user` is added first (a comment exists before GitHub announces it)
      installation: False to leave out `installation` (as for a repository webhook)
    Any other keyword is set as a top-level field. Raises WebhookSchemaError if the result
    breaks the official schema.
    """
    repo = fake.repo(owner, name)
    pr = repo.pulls[number]
    organization = repo.owner.type == "Organization"
    if event == "pull_request" and action not in PULL_REQUEST_ACTIONS:
        raise ValueError(f"unsupported pull_request action {action}")
    if event == "issue_comment" and action not in ISSUE_COMMENT_ACTIONS:
        raise ValueError(f"unsupported issue_comment action {action}")
    if event not in ("pull_request", "issue_comment"):
        raise ValueError(f"unsupported event {event}")
    example = copy.deepcopy(_example(event, action, organization))
    template = example["sender"]
    shapes = fake.shapes
    include_installation = extra.pop("installation", True)
    payload: JSON = {"action": action}

    if event == "pull_request":
        sender = extra.pop("sender", None)
        if sender is None:
            # Who did it, as the issue's events recorded (e.g. who added the label).
            sender = _event_actor(repo, pr, action, extra.get("label") or pr.last_label)
        if sender is None:
            sender = pr.merged_by.login if (action == "closed" and pr.merged_by) else pr.user.login
        payload["number"] = pr.number
        if action == "edited":
            payload["changes"] = extra.pop("changes", None) or pr.changes
        if action in ("labeled", "unlabeled"):
            label_name = extra.pop("label", None) or pr.last_label
            if label_name is None:
                raise ValueError(f"#{number} has no label to announce")
            label = next(lb for lb in repo.labels.values() if lb.name.lower() == label_name.lower())
            payload_label = overlay(example["label"], shapes.label(repo, label), template)
        if action == "synchronize":
            history = pr.head_history
            payload["before"] = extra.pop(
                "before",
                history[-2]
                if len(history) > 1
                else repo.store.refs.get(f"refs/heads/{pr.base_ref}", ""),
            )
            payload["after"] = extra.pop("after", pr.head_sha)
        payload["pull_request"] = overlay(example["pull_request"], shapes.pull(pr), template)
        if action in ("labeled", "unlabeled"):
            payload["label"] = payload_label
    else:
        comment_id = extra.pop("comment_id", None)
        if comment_id is None:
            body = extra.pop("body", None)
            if body is None:
                raise ValueError("issue_comment needs comment_id= or body=")
            comment = fake.add_comment(owner, name, number, body, user=extra.pop("user", "octocat"))
        else:
            comment = repo.comments[comment_id]
        sender = extra.pop("sender", None) or comment.user.login
        issue = overlay(example["issue"], _issue_shape(fake, pr), template)
        # The examples are all plain issues; a PR's issue also links the pull request.
        pr_url = f"{shapes.repo_url(repo)}/pulls/{pr.number}"
        html = f"{HTML}/{repo.full_name}/pull/{pr.number}"
        issue["pull_request"] = {
            "url": pr_url,
            "html_url": html,
            "diff_url": f"{html}.diff",
            "patch_url": f"{html}.patch",
            "merged_at": iso(pr.merged_at),
        }
        payload["issue"] = issue
        payload["comment"] = overlay(example["comment"], shapes.comment(repo, comment), template)
        if comment.via_app:
            # The examples' comments have no App (null): shape ours as webhooks carry Apps.
            payload["comment"]["performed_via_github_app"] = webhook_app(
                shapes.integration(), template
            )
        if action == "edited":
            previous = comment.previous_body or ""
            payload["changes"] = extra.pop("changes", {"body": {"from": previous}})

    payload["repository"] = overlay(example["repository"], shapes.repository(repo), template)
    if organization:
        payload["organization"] = _organization(fake, repo)
    payload["sender"] = overlay(template, shapes.user(fake.user(sender)), template)
    if include_installation:
        try:
            inst = fake.installation_for(owner, name)
        except KeyError:
            inst = None
        if inst is not None:
            payload["installation"] = {"id": inst.id, "node_id": node_id("Installation", inst.id)}
    payload.update(extra)
    validate(event, action, payload)
    return payload


def webhook_request(
    event: str,
    payload: JSON,
    secret: str | None,
    *,
    delivery_id: str | None = None,
    installation_target_id: int | None = None,
) -> tuple[dict[str, str], bytes]:
    """Headers and body of a delivery as GitHub sends it (signed when `secret` is given)."""
    body = json.dumps(payload).encode()
    delivery = delivery_id or str(uuid.uuid4())
    if secret is not None:
        headers = delivery_headers(secret, event, body, delivery)
    else:  # an unsigned delivery, as from a hook configured without a secret
        headers = {
            "Content-Type": "application/json",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
        }
    headers.update(
        {
            "User-Agent": "GitHub-Hookshot/fake",
            "X-GitHub-Hook-ID": "1",
            "X-GitHub-Hook-Installation-Target-Type": "integration",
            "X-GitHub-Hook-Installation-Target-ID": str(installation_target_id or 0),
        }
    )
    return headers, body


# What a pull_request action is called among the issue's events.
_PR_ACTION_EVENTS = {
    "labeled": "labeled",
    "unlabeled": "unlabeled",
    "closed": "closed",
    "reopened": "reopened",
    "ready_for_review": "ready_for_review",
    "converted_to_draft": "convert_to_draft",
}


def _event_actor(repo: Repo, pr: Pull, action: str, label: str | None) -> str | None:
    """The login of whoever did the latest `action` on `pr` (None when nothing recorded it)."""
    wanted = _PR_ACTION_EVENTS.get(action)
    for e in reversed(repo.issue_events):
        if e.number != pr.number or e.event != wanted:
            continue
        if wanted in ("labeled", "unlabeled") and (
            e.label is None or label is None or e.label.name.lower() != label.lower()
        ):
            continue
        return e.actor.login
    return None


def _finish(
    fake: FakeGitHub,
    event: str,
    action: str,
    payload: JSON,
    example: JSON,
    repo: Repo,
    sender: str,
    extra: dict[str, Any],
) -> JSON:
    """repository, organization, sender and installation, then `extra`; schema-checked."""
    include_installation = extra.pop("installation", True)
    template = example["sender"]
    payload["repository"] = overlay(example["repository"], fake.shapes.repository(repo), template)
    if repo.owner.type == "Organization":
        payload["organization"] = _organization(fake, repo)
    payload["sender"] = overlay(template, fake.shapes.user(fake.user(sender)), template)
    if include_installation:
        try:
            inst = fake.installation_for(repo.owner.login, repo.name)
        except KeyError:
            inst = None
        if inst is not None:
            payload["installation"] = {"id": inst.id, "node_id": node_id("Installation", inst.id)}
    payload.update(extra)
    validate(event, action, payload)
    return payload


def _commit_author(fake: FakeGitHub, repo: Repo, sha: str) -> str:
    """The login of the user who wrote commit `sha` (the repository owner if unknown)."""
    name = repo.store.read_commit(sha).author.name
    user = fake.users.get(name.lower())
    return user.login if user is not None else repo.owner.login


_FAILING = ("action_required", "cancelled", "timed_out", "failure", "startup_failure", "stale")


def check_suite_shape(fake: FakeGitHub, repo: Repo, sha: str, app: str | None) -> JSON:
    """The check suite of `app`'s runs on `sha` (None: the test App) as webhooks carry it:
    completed when all its runs are, with the most severe conclusion."""
    shapes = fake.shapes
    runs = sorted(
        (r for r in repo.check_runs.values() if r.head_sha == sha and r.app == app),
        key=lambda r: r.id,
    )
    states = {r.status for r in runs}
    if runs and states == {"completed"}:
        status = "completed"
        conclusions = {r.conclusion for r in runs}
        conclusion = next((c for c in _FAILING if c in conclusions), None)
        if conclusion is None:
            conclusion = (
                "skipped"
                if conclusions == {"skipped"}
                else "success"
                if "success" in conclusions
                else "neutral"
            )
    else:
        status = "in_progress" if states & {"in_progress", "completed"} else "queued"
        conclusion = None
    suite_id = fake.check_suite_id(repo, sha, app)
    commit = repo.store.read_commit(sha)
    branches = [
        ref.removeprefix("refs/heads/")
        for ref, target in repo.store.refs.items()
        if ref.startswith("refs/heads/") and target == sha
    ]
    url = f"{shapes.repo_url(repo)}/check-suites/{suite_id}"
    created = min((r.created_at for r in runs), default=fake.now())
    updated = max((r.completed_at or r.created_at for r in runs), default=created)
    return {
        "id": suite_id,
        "node_id": node_id("CheckSuite", suite_id),
        "head_branch": branches[0] if branches else None,
        "head_sha": sha,
        "status": status,
        "conclusion": conclusion,
        "url": url,
        "before": commit.parents[0] if commit.parents else "0" * 40,
        "after": sha,
        "pull_requests": shapes.check_pulls(repo, sha),
        "app": shapes.app_of(app),
        "created_at": iso(created),
        "updated_at": iso(updated),
        "latest_check_runs_count": len({r.name for r in runs}),
        "check_runs_url": f"{url}/check-runs",
        "head_commit": {
            "id": sha,
            "tree_id": commit.tree,
            "message": commit.message,
            "timestamp": commit.committer.iso(),
            "author": {"name": commit.author.name, "email": commit.author.email},
            "committer": {"name": commit.committer.name, "email": commit.committer.email},
        },
    }


def webhook_app(app: JSON, template: JSON) -> JSON:
    """An App (shapes.integration / other_app) as webhooks carry it: no `client_id`, and
    the owner shaped like the example's users (the schema forbids other fields)."""
    shaped = {k: copy.deepcopy(v) for k, v in app.items() if k != "client_id"}
    shaped["owner"] = overlay(template, app["owner"], template)
    return shaped


def _exact_app(shaped: JSON, app: JSON) -> None:
    """An App's `permissions` and `events` are the App's own, not the example's merged in."""
    shaped["permissions"] = dict(app["permissions"])
    shaped["events"] = list(app["events"])


def check_run_payload(
    fake: FakeGitHub, owner: str, name: str, check_run_id: int, action: str, **extra: Any
) -> JSON:
    """A `check_run` delivery (created, completed, rerequested, ...) of a run in the fake.

    extra keywords: sender (default: the author of the head commit), installation (False
    to leave it out); any other is set as a top-level field. `check_run.pull_requests` lists
    the open same-repository PRs whose head is the run's commit, as GitHub does.
    """
    repo = fake.repo(owner, name)
    run = repo.check_runs[check_run_id]
    if action == "completed" and run.status != "completed":
        raise ValueError(f"check run {run.id} is {run.status}, not completed")
    example = copy.deepcopy(_example("check_run", action, repo.owner.type == "Organization"))
    template = example["sender"]
    shape = fake.shapes.check_run(repo, run)
    shape["check_suite"] = check_suite_shape(fake, repo, run.head_sha, run.app)
    check_run = overlay(example["check_run"], shape, template)
    _exact_app(check_run["app"], shape["app"])
    _exact_app(check_run["check_suite"]["app"], shape["app"])
    sender = extra.pop("sender", None) or _commit_author(fake, repo, run.head_sha)
    payload: JSON = {"action": action, "check_run": check_run}
    return _finish(fake, "check_run", action, payload, example, repo, sender, extra)


def check_suite_payload(
    fake: FakeGitHub,
    owner: str,
    name: str,
    sha: str,
    action: str,
    *,
    app: str | None = CI_APP,
    **extra: Any,
) -> JSON:
    """A `check_suite` delivery for the runs of `app` (None: the test App) on `sha`.

    `completed` needs every run of the suite completed (ValueError otherwise).
    extra keywords as for check_run_payload.
    """
    repo = fake.repo(owner, name)
    example = copy.deepcopy(_example("check_suite", action, repo.owner.type == "Organization"))
    template = example["sender"]
    shape = check_suite_shape(fake, repo, sha, app)
    if action == "completed" and shape["status"] != "completed":
        # The schema does not say so, but GitHub sends `completed` once all runs are done.
        raise ValueError(f"the check suite of {sha} is {shape['status']}, not completed")
    suite = overlay(example["check_suite"], shape, template)
    _exact_app(suite["app"], shape["app"])
    sender = extra.pop("sender", None) or _commit_author(fake, repo, sha)
    payload: JSON = {"action": action, "check_suite": suite}
    return _finish(fake, "check_suite", action, payload, example, repo, sender, extra)


def status_payload(fake: FakeGitHub, owner: str, name: str, status_id: int, **extra: Any) -> JSON:
    """A `status` delivery for commit status `status_id` (see FakeGitHub.set_status).

    extra keywords: sender (default: who set the status), installation (False to leave it
    out); any other is set as a top-level field.
    """
    repo = fake.repo(owner, name)
    shapes = fake.shapes
    status = next(s for s in repo.statuses if s.id == status_id)
    example = copy.deepcopy(_example("status", "", repo.owner.type == "Organization"))
    template = example["sender"]
    sha = status.sha
    commit = repo.store.read_commit(sha)
    git = shapes.git_commit(repo, commit)
    base = shapes.repo_url(repo)

    def account(person_name: str) -> JSON | None:
        user = fake.users.get(person_name.lower())
        return shapes.user(user) if user is not None else None

    state_commit = {
        "sha": sha,
        "node_id": node_id("Commit", f"{repo.id}:{sha}"),
        "commit": {
            "author": git["author"],
            "committer": git["committer"],
            "message": commit.message,
            "tree": git["tree"],
            "url": git["url"],
            "comment_count": 0,
            "verification": git["verification"],
        },
        "url": f"{base}/commits/{sha}",
        "html_url": f"{HTML}/{repo.full_name}/commit/{sha}",
        "comments_url": f"{base}/commits/{sha}/comments",
        "author": account(commit.author.name),
        "committer": account(commit.committer.name),
        "parents": git["parents"],
    }
    branches = [
        {
            "name": ref.removeprefix("refs/heads/"),
            "commit": {"sha": sha, "url": f"{base}/commits/{sha}"},
            "protected": False,
        }
        for ref, target in sorted(repo.store.refs.items())
        if ref.startswith("refs/heads/") and target == sha
    ]
    payload: JSON = {
        "id": status.id,
        "sha": sha,
        "name": repo.full_name,
        "target_url": status.target_url,
        "avatar_url": f"https://avatars.githubusercontent.com/u/{status.creator.id}?v=4",
        "context": status.context,
        "description": status.description,
        "state": status.state,
        "commit": overlay(example["commit"], state_commit, template),
        "branches": overlay(example["branches"], branches, template),
        "created_at": iso(status.created_at),
        "updated_at": iso(status.updated_at),
    }
    sender = extra.pop("sender", None) or status.creator.login
    return _finish(fake, "status", "", payload, example, repo, sender, extra)


def _repo_ref(repo: Repo) -> JSON:
    """A repository as installation hooks list it."""
    return {
        "id": repo.id,
        "node_id": node_id("Repository", repo.id),
        "name": repo.name,
        "full_name": repo.full_name,
        "private": repo.private,
    }


def _installation_sender(inst: Installation, sender: str | None) -> str:
    if sender is not None:
        return sender
    return inst.account.login if inst.account.type == "User" else "octocat"


def installation_payload(
    fake: FakeGitHub, action: str, inst: Installation, *, sender: str | None = None, **extra: Any
) -> JSON:
    """An `installation` delivery (created, deleted, suspend, ...) for `inst`, which may
    already be uninstalled (FakeGitHub.uninstall returns it). `sender` defaults to the
    account for a user's installation, else `octocat` (an organization's admin)."""
    example = copy.deepcopy(_example("installation", action, False))
    template = example["sender"]
    shaped = overlay(example["installation"], fake.shapes.installation(inst), template)
    shaped["permissions"] = dict(inst.permissions)
    payload: JSON = {
        "action": action,
        "installation": shaped,
        "repositories": [_repo_ref(r) for r in fake.installation_repos(inst)],
        "sender": overlay(
            template, fake.shapes.user(fake.user(_installation_sender(inst, sender))), template
        ),
    }
    payload.update(extra)
    validate("installation", action, payload)
    return payload


def installation_repositories_payload(
    fake: FakeGitHub,
    action: str,
    inst: Installation,
    repositories: Iterable[Repo],
    *,
    sender: str | None = None,
    **extra: Any,
) -> JSON:
    """An `installation_repositories` delivery: `repositories` were `added` or `removed`
    (see FakeGitHub.add_installation_repos / remove_installation_repos)."""
    example = copy.deepcopy(_example("installation_repositories", action, False))
    template = example["sender"]
    shaped = overlay(example["installation"], fake.shapes.installation(inst), template)
    shaped["permissions"] = dict(inst.permissions)
    changed = [_repo_ref(r) for r in repositories]
    payload: JSON = {
        "action": action,
        "installation": shaped,
        "repository_selection": inst.repository_selection,
        "repositories_added": changed if action == "added" else [],
        "repositories_removed": changed if action == "removed" else [],
        "requester": None,
        "sender": overlay(
            template, fake.shapes.user(fake.user(_installation_sender(inst, sender))), template
        ),
    }
    payload.update(extra)
    validate("installation_repositories", action, payload)
    return payload
