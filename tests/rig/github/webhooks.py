"""Webhook payloads from the fake's state, on top of GitHub's official examples, schema-checked."""

from __future__ import annotations

import copy
import functools
import json
import uuid
from typing import TYPE_CHECKING, Any

# jsonschema ships no type stubs here (types-jsonschema is not a dev dependency).
from bot.webhooks import delivery_headers
from tests.rig.artifacts import webhook_errors, webhook_examples
from tests.rig.github.shapes import HTML, iso, node_id
from tests.rig.github.state import Pull, Repo

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
    """Raise WebhookSchemaError when `payload` breaks the schema of `event$action`."""
    errors = webhook_errors(event, {**payload, "action": action})
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
    candidates = [e for e in webhook_examples()[event] if e.get("action") == source]
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

    extra keywords:
      sender: login of who acted (default: the PR author; merged_by for merged closes;
              the comment author for comments)
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
        if action == "edited":
            payload["changes"] = extra.pop("changes", {"body": {"from": ""}})

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
