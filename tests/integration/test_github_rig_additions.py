"""The GitHub fake's later additions, over real HTTP: installation repositories, issue events
with actors, reactions, faults that apply the request first, CI checks and statuses, and
webhook payloads for the events the bot handles (each validated against GitHub's schemas)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from gidgethub import BadRequest, GitHubBroken
from gidgethub.aiohttp import GitHubAPI
from gidgethub.apps import get_jwt
from gidgethub.sansio import Event

from bot.webhooks import sign
from tests.rig.github import FakeGitHub, WebhookSchemaError, webhook_request

pytestmark = pytest.mark.rig

OWNER, NAME = "acme", "shop"
REPO = f"/repos/{OWNER}/{NAME}"
FILES = {
    "README.md": "# shop\n",
    "infra/argocd/overlays/preview/kustomization.yaml": "resources: []\n",
    "infra/argocd/base/app.yaml": "kind: Application\n",
}


@pytest.fixture
def repo(github: FakeGitHub) -> FakeGitHub:
    github.create_repo(OWNER, NAME, files=FILES)
    return github


async def _raw(
    fake: FakeGitHub,
    session: aiohttp.ClientSession,
    method: str,
    path: str,
    token: str,
    data: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """(status, JSON body or None, headers) of one request: for statuses gidgethub hides."""
    sent = {
        "Authorization": f"token {token}",
        "Accept": "application/vnd.github+json",
        **(headers or {}),
    }
    async with session.request(method, fake.url + path, json=data, headers=sent) as resp:
        raw = await resp.read()
        return resp.status, json.loads(raw) if raw else None, dict(resp.headers)


# -- GET /installation/repositories ------------------------------------------------------------
async def test_installation_repositories_follow_the_selection(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    repo.create_repo(OWNER, "api")
    repo.create_repo(OWNER, "secret", private=True)
    repo.create_repo("other-org", "site")  # another installation: never listed here
    inst = repo.installation_for(OWNER)
    cache: dict[str, Any] = {}
    gh = repo.client(github_session, installation_id=inst.id, cache=cache)
    names = [
        r["full_name"]
        async for r in gh.getiter(
            "/installation/repositories{?per_page}", {"per_page": 2}, iterable_key="repositories"
        )
    ]
    assert names == ["acme/shop", "acme/api", "acme/secret"]
    assert repo.count("GET", r"^/installation/repositories$") == 2  # two pages

    first = await gh.getitem("/installation/repositories")
    assert first["total_count"] == 3
    assert first["repository_selection"] == "all"
    assert first["repositories"][2]["private"] is True
    again = await gh.getitem("/installation/repositories")
    assert again == first
    assert repo.count("GET", r"^/installation/repositories$", status=304) == 1

    # Taking a repository away makes the installation `selected` with the rest.
    removed = repo.remove_installation_repos(inst.id, ["api"])
    assert [r.full_name for r in removed] == ["acme/api"]
    changed = await gh.getitem("/installation/repositories")  # a new ETag: 200
    assert [r["full_name"] for r in changed["repositories"]] == ["acme/shop", "acme/secret"]
    assert changed["repository_selection"] == "selected"
    assert changed["total_count"] == 2
    with pytest.raises(BadRequest) as hidden:
        await gh.getitem("/repos/acme/api")
    assert hidden.value.status_code == 404
    assert [r.name for r in repo.add_installation_repos(inst.id, ["api", "shop"])] == ["api"]
    assert (await gh.getitem("/installation/repositories"))["total_count"] == 3

    # A token narrowed to one repository lists only that one.
    app = GitHubAPI(github_session, "preview-bot-tests", base_url=repo.url)
    token = await app.post(
        "/app/installations/{id}/access_tokens",
        {"id": inst.id},
        data={"repositories": ["shop"]},
        jwt=get_jwt(app_id=str(repo.app_id), private_key=repo.private_key_pem),
    )
    narrow = repo.client(github_session, token=token["token"])
    listed = await narrow.getitem("/installation/repositories")
    assert [r["full_name"] for r in listed["repositories"]] == ["acme/shop"]
    assert listed["repository_selection"] == "selected"


# -- issue events ------------------------------------------------------------------------------
async def test_issue_events_record_who_did_what(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    repo.create_pull(OWNER, NAME, 7, labels=["preview"])  # labeled by the author, octocat
    repo.add_label(OWNER, NAME, 7, "deploy", by="maintainer")
    repo.add_label(OWNER, NAME, 7, "deploy", by="someone-else")  # already there: no event
    gh = repo.client(github_session)
    await gh.post(REPO + "/issues/7/labels", data={"labels": ["ready"]})
    await gh.delete(REPO + "/issues/7/labels/{name}", {"name": "preview"})
    with pytest.raises(BadRequest) as missing:
        await gh.delete(REPO + "/issues/7/labels/{name}", {"name": "preview"})
    assert missing.value.status_code == 404
    repo.remove_label(OWNER, NAME, 7, "deploy", by="maintainer")
    repo.close(OWNER, NAME, 7, by="maintainer")
    repo.reopen(OWNER, NAME, 7)
    repo.close(OWNER, NAME, 7, merged=True, merged_by="maintainer")

    events = [
        e async for e in gh.getiter(REPO + "/issues/{n}/events{?per_page}", {"n": 7, "per_page": 3})
    ]
    assert repo.count("GET", r"/issues/7/events") == 3  # 9 events in pages of 3
    summary = [
        (e["event"], e["actor"]["login"], (e.get("label") or {}).get("name")) for e in events
    ]
    assert summary == [
        ("labeled", "octocat", "preview"),
        ("labeled", "maintainer", "deploy"),
        ("labeled", "preview-bot[bot]", "ready"),
        ("unlabeled", "preview-bot[bot]", "preview"),
        ("unlabeled", "maintainer", "deploy"),
        ("closed", "maintainer", None),
        ("reopened", "octocat", None),
        ("merged", "maintainer", None),
        ("closed", "maintainer", None),
    ]
    by_bot = events[2]
    assert by_bot["actor"]["type"] == "Bot"
    assert by_bot["performed_via_github_app"]["slug"] == "preview-bot"
    assert events[1]["performed_via_github_app"] is None
    assert events[0]["label"]["color"] == "ededed"
    assert events[7]["commit_id"] == repo.pull(OWNER, NAME, 7).merge_commit_sha
    assert all(e["created_at"].endswith("Z") for e in events)
    assert [e.actor.login for e in repo.issue_events(OWNER, NAME, 7, "labeled")] == [
        "octocat",
        "maintainer",
        "preview-bot[bot]",
    ]


async def test_labeled_webhook_sender_is_who_added_the_label(repo: FakeGitHub) -> None:
    repo.create_pull(OWNER, NAME, 8)
    repo.add_label(OWNER, NAME, 8, "preview", by="maintainer")
    repo.add_label(OWNER, NAME, 8, "any label at all", by="alice")
    latest = repo.event_payload("pull_request", "labeled", OWNER, NAME, 8)
    assert (latest["label"]["name"], latest["sender"]["login"]) == ("any label at all", "alice")
    earlier = repo.event_payload("pull_request", "labeled", OWNER, NAME, 8, label="preview")
    assert (earlier["label"]["name"], earlier["sender"]["login"]) == ("preview", "maintainer")
    repo.add_label(OWNER, NAME, 8, "mine")  # default: the PR author
    assert repo.event_payload("pull_request", "labeled", OWNER, NAME, 8)["sender"]["login"] == (
        "octocat"
    )
    repo.remove_label(OWNER, NAME, 8, "preview", by="bob")
    unlabeled = repo.event_payload("pull_request", "unlabeled", OWNER, NAME, 8)
    assert (unlabeled["label"]["name"], unlabeled["sender"]["login"]) == ("preview", "bob")


# -- reactions ---------------------------------------------------------------------------------
async def test_reactions_are_idempotent_per_user_and_content(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    repo.create_pull(OWNER, NAME, 4)
    comment = repo.add_comment(OWNER, NAME, 4, "/preview", user="reviewer")
    token = repo.mint_token()
    url = f"{REPO}/issues/comments/{comment.id}/reactions"
    status, first, _ = await _raw(repo, github_session, "POST", url, token, {"content": "eyes"})
    assert status == 201
    assert (first["content"], first["user"]["login"]) == ("eyes", "preview-bot[bot]")
    status, again, _ = await _raw(repo, github_session, "POST", url, token, {"content": "eyes"})
    assert status == 200  # the same user and content: the existing reaction
    assert again["id"] == first["id"]
    status, rocket, _ = await _raw(repo, github_session, "POST", url, token, {"content": "rocket"})
    assert status == 201 and rocket["id"] != first["id"]
    reaction, created = repo.react(OWNER, NAME, comment.id, "eyes", user="reviewer")
    assert created and reaction.user.login == "reviewer"
    assert repo.react(OWNER, NAME, comment.id, "eyes", user="reviewer")[1] is False

    assert repo.reactions(OWNER, NAME, comment.id) == [
        ("preview-bot[bot]", "eyes"),
        ("preview-bot[bot]", "rocket"),
        ("reviewer", "eyes"),
    ]
    gh = repo.client(github_session, token=token)
    listed = [r async for r in gh.getiter(url + "?per_page=2")]
    assert [(r["user"]["login"], r["content"]) for r in listed] == repo.reactions(
        OWNER, NAME, comment.id
    )
    eyes = await gh.getitem(url + "?content=eyes")
    assert [r["user"]["login"] for r in eyes] == ["preview-bot[bot]", "reviewer"]
    shown = await gh.getitem(REPO + "/issues/comments/{id}", {"id": comment.id})
    rollup = shown["reactions"]
    assert (rollup["total_count"], rollup["eyes"], rollup["rocket"], rollup["+1"]) == (3, 2, 1, 0)

    status, body, _ = await _raw(repo, github_session, "POST", url, token, {"content": "thumbs"})
    assert status == 422
    assert "content" in body["message"]
    violations = repo.take_violations()  # the contract checker saw the bad request too
    assert [v.kind for v in violations] == ["request"]
    status, _, _ = await _raw(
        repo,
        github_session,
        "POST",
        f"{REPO}/issues/comments/999999/reactions",
        token,
        {"content": "eyes"},
    )
    assert status == 404
    assert len(repo.reactions(OWNER, NAME, comment.id)) == 3


# -- faults that apply the request first -------------------------------------------------------
async def test_fail_after_apply_changes_state_then_answers_an_error(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    repo.create_pull(OWNER, NAME, 3)
    gh = repo.client(github_session)
    bucket = repo.rate_limit(repo.installation_for(OWNER).id)
    repo.fail_after_apply("POST", r"/issues/3/comments$")
    with pytest.raises(GitHubBroken) as lost:
        await gh.post(REPO + "/issues/3/comments", data={"body": "preview: pending"})
    assert lost.value.status_code == 502
    assert [c.body for c in repo.comments(OWNER, NAME, 3)] == ["preview: pending"]
    assert repo.comments(OWNER, NAME, 3)[0].via_app
    last = repo.requests[-1]
    assert (last.status, last.injected) == (502, "fail_after_apply")
    assert repo.count("POST", r"/issues/3/comments$", injected=True) == 1
    assert bucket.used == 1  # GitHub did the work: it counts
    # A retry of the lost write makes a second comment, as it would on GitHub.
    await gh.post(REPO + "/issues/3/comments", data={"body": "preview: pending"})
    assert len(repo.comments(OWNER, NAME, 3)) == 2
    assert repo.count("POST", r"/issues/3/comments$", injected=False) == 1

    # Only a request the fake serves uses the fault up: a 404 stays a 404.
    repo.fail_after_apply("DELETE", r"/labels/", status=500)
    with pytest.raises(BadRequest) as absent:
        await gh.delete(REPO + "/issues/3/labels/{name}", {"name": "preview"})
    assert absent.value.status_code == 404
    repo.add_label(OWNER, NAME, 3, "preview")
    with pytest.raises(GitHubBroken) as broken:
        await gh.delete(REPO + "/issues/3/labels/{name}", {"name": "preview"})
    assert broken.value.status_code == 500
    assert repo.pull(OWNER, NAME, 3).labels == []
    assert [e.event for e in repo.issue_events(OWNER, NAME, 3)] == ["labeled", "unlabeled"]


async def test_cut_after_apply_and_cut_next_drop_the_connection(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    pr = repo.create_pull(OWNER, NAME, 5)
    gh = repo.client(github_session)
    repo.cut_after_apply("POST", r"/issues/5/labels$")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await gh.post(REPO + "/issues/5/labels", data={"labels": ["preview"]})
    assert repo.pull(OWNER, NAME, 5).labels == ["preview"]  # applied, answer lost
    cut = repo.requests[-1]
    assert (cut.status, cut.injected, cut.method) == (0, "cut_after_apply", "POST")

    deployment = {
        "ref": pr.head_sha,
        "environment": "pr-5",
        "required_contexts": [],
        "auto_merge": False,
    }
    repo.cut_next("POST", r"/deployments$")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await gh.post(REPO + "/deployments", data=deployment)
    assert repo.deployments(OWNER, NAME) == []  # cut before it was applied
    assert repo.requests[-1].injected == "cut_next"
    created = await gh.post(REPO + "/deployments", data=deployment)  # a new connection works
    assert [d.id for d in repo.deployments(OWNER, NAME)] == [created["id"]]
    assert repo.count("POST", r"/deployments$") == 2
    assert repo.count("POST", r"/deployments$", injected=True) == 1
    assert repo.count(status=0) == 2
    stats = repo.contract_stats
    assert stats is not None and stats.skipped_reasons.get("injected fault", 0) >= 2


# -- CI: check runs and statuses of others -----------------------------------------------------
async def test_ci_check_runs_and_statuses(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    pr = repo.create_pull(OWNER, NAME, 9)
    started = repo.start_check(OWNER, NAME, pr.head_sha, "build")
    done = repo.complete_check(OWNER, NAME, pr.head_sha, "build", "success")
    assert done.id == started.id  # the started run was completed, not a second one
    repo.complete_check(OWNER, NAME, pr.head_sha, "lint", "failure")
    status = repo.set_status(OWNER, NAME, pr.head_sha, "ci/e2e", "pending")
    repo.set_status(OWNER, NAME, pr.head_sha, "ci/e2e", "success", target_url="https://ci.example")
    gh = repo.client(github_session)
    runs = await gh.getitem(REPO + "/commits/{ref}/check-runs", {"ref": "feature-9"})
    assert sorted((r["name"], r["conclusion"]) for r in runs["check_runs"]) == [
        ("build", "success"),
        ("lint", "failure"),
    ]
    assert {r["app"]["slug"] for r in runs["check_runs"]} == {"github-actions"}
    assert runs["check_runs"][0]["pull_requests"][0]["number"] == 9
    combined = await gh.getitem(REPO + "/commits/{ref}/status", {"ref": pr.head_sha})
    assert (combined["state"], combined["statuses"][0]["target_url"]) == (
        "success",
        "https://ci.example",
    )
    assert status.creator.login == "ci-bot"
    # The CI's runs are a check suite of their own, apart from the test App's.
    ours = await gh.post(REPO + "/check-runs", data={"name": "preview", "head_sha": pr.head_sha})
    assert ours["check_suite"]["id"] != runs["check_runs"][0]["check_suite"]["id"]
    assert ours["app"]["slug"] == "preview-bot"
    # Deployments verify every context: the failed lint blocks one.
    with pytest.raises(BadRequest) as blocked:
        await gh.post(
            REPO + "/deployments",
            data={"ref": pr.head_sha, "required_contexts": ["build", "ci/e2e", "lint"]},
        )
    assert blocked.value.status_code == 409
    made = await gh.post(
        REPO + "/deployments", data={"ref": pr.head_sha, "required_contexts": ["build", "ci/e2e"]}
    )
    assert made["sha"] == pr.head_sha


# -- behaviours the bot relies on ----------------------------------------------------------------
async def test_deployment_filters_and_payloads(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    a = repo.create_pull(OWNER, NAME, 11)
    b = repo.create_pull(OWNER, NAME, 12)
    gh = repo.client(github_session)

    async def deploy(ref: str, environment: str, payload: Any) -> int:
        made = await gh.post(
            REPO + "/deployments",
            data={
                "ref": ref,
                "environment": environment,
                "required_contexts": [],
                "auto_merge": False,
                "payload": payload,
            },
        )
        return int(made["id"])

    first = await deploy(a.head_sha, "pr-11", {"preview-bot": {"sha": a.head_sha}})
    second = await deploy("feature-11", "pr-11", '{"as": "string"}')
    third = await deploy(b.head_sha, "pr-12", {})
    fourth = await deploy(b.head_sha, "staging", {"n": [1, 2]})

    async def ids(query: str) -> list[int]:
        return [d["id"] for d in await gh.getitem(REPO + "/deployments" + query)]

    assert await ids("") == [fourth, third, second, first]
    assert await ids(f"?sha={a.head_sha}") == [second, first]
    assert await ids("?environment=pr-11") == [second, first]
    assert await ids("?ref=feature-11") == [second]
    assert await ids(f"?ref={b.head_sha}&environment=pr-12") == [third]
    assert await ids(f"?sha={b.head_sha}&environment=pr-11") == []
    got = {d["id"]: d["payload"] for d in await gh.getitem(REPO + "/deployments")}
    assert got[first] == {"preview-bot": {"sha": a.head_sha}}
    assert got[second] == '{"as": "string"}'  # a string payload comes back as that string
    assert got[fourth] == {"n": [1, 2]}
    one = await gh.getitem(REPO + "/deployments/{id}", {"id": first})
    assert one["payload"] == got[first]
    assert one["performed_via_github_app"]["slug"] == "preview-bot"


async def test_comments_by_the_app_and_by_people(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    repo.create_pull(OWNER, NAME, 14)
    repo.add_comment(OWNER, NAME, 14, "please deploy", user="alice")
    repo.add_comment(OWNER, NAME, 14, "an old note", user=repo.bot.login)
    gh = repo.client(github_session)
    await gh.post(REPO + "/issues/14/comments", data={"body": "preview: ready"})
    listed = await gh.getitem(REPO + "/issues/14/comments")
    who = [
        (c["user"]["login"], c["user"]["type"], (c["performed_via_github_app"] or {}).get("slug"))
        for c in listed
    ]
    assert who == [
        ("alice", "User", None),
        ("preview-bot[bot]", "Bot", "preview-bot"),
        ("preview-bot[bot]", "Bot", "preview-bot"),
    ]
    assert listed[0]["author_association"] == "NONE"
    assert listed[2]["performed_via_github_app"]["id"] == repo.app_id


async def test_collaborator_permission_maps_roles_as_github_does(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    roles = {"admin": "admin", "maintain": "write", "write": "write", "triage": "read"}
    roles["read"] = "read"
    for role in roles:
        repo.set_permission(OWNER, NAME, f"user-{role}", role)
    gh = repo.client(github_session)
    for role, permission in roles.items():
        got = await gh.getitem(REPO + "/collaborators/{user}/permission", {"user": f"user-{role}"})
        assert (got["permission"], got["role_name"], got["user"]["login"]) == (
            permission,
            role,
            f"user-{role}",
        )
    owner = await gh.getitem(REPO + "/collaborators/{user}/permission", {"user": OWNER})
    assert owner["permission"] == "admin"
    with pytest.raises(BadRequest) as unknown:
        await gh.getitem(REPO + "/collaborators/{user}/permission", {"user": "nobody-at-all"})
    assert unknown.value.status_code == 404


async def test_tree_by_branch_and_by_branch_colon_path(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    gh = repo.client(github_session)
    url = REPO + "/git/trees/{+tree}{?recursive}"
    whole = await gh.getitem(url, {"tree": "main", "recursive": 1})
    assert whole["truncated"] is False
    assert {e["path"] for e in whole["tree"] if e["type"] == "blob"} == set(FILES)
    sub = await gh.getitem(url, {"tree": "main:infra/argocd", "recursive": 1})
    assert sub["truncated"] is False
    assert sorted(e["path"] for e in sub["tree"] if e["type"] == "blob") == [
        "base/app.yaml",
        "overlays/preview/kustomization.yaml",
    ]
    flat = await gh.getitem(url, {"tree": "main:infra/argocd"})
    assert sorted(e["path"] for e in flat["tree"]) == ["base", "overlays"]
    head = repo.branch_sha(OWNER, NAME, "main")
    by_sha = await gh.getitem(url, {"tree": f"{head}:infra/argocd", "recursive": 1})
    assert by_sha["sha"] == sub["sha"]
    for missing in ("main:no/such/dir", "main:README.md", "nope:infra", "nope"):
        with pytest.raises(BadRequest) as caught:
            await gh.getitem(url, {"tree": missing, "recursive": 1})
        assert caught.value.status_code == 404, missing


async def test_open_pulls_etag_changes_when_a_listed_pull_changes(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    for n in (1, 2, 3):
        repo.create_pull(OWNER, NAME, n)
    cache: dict[str, Any] = {}
    gh = repo.client(github_session, cache=cache)
    url = REPO + "/pulls{?state,per_page}"
    query: dict[str, str | int] = {"state": "open", "per_page": 100}

    async def listing() -> list[tuple[int, bool, list[str]]]:
        got = await gh.getitem(url, query)
        return sorted((p["number"], p["draft"], [lb["name"] for lb in p["labels"]]) for p in got)

    changes: list[Callable[[], object]] = [
        lambda: repo.add_label(OWNER, NAME, 1, "preview"),
        lambda: repo.push(OWNER, NAME, 2, {"app.py": "2\n"}),
        lambda: repo.convert_to_draft(OWNER, NAME, 3),
        lambda: repo.close(OWNER, NAME, 2),
    ]
    await listing()
    for change in changes:
        await listing()  # unchanged: a 304
        before = repo.count("GET", r"/pulls$", status=200)
        change()
        await listing()
        assert repo.count("GET", r"/pulls$", status=200) == before + 1
    assert repo.count("GET", r"/pulls$", status=304) == len(changes)
    assert await listing() == [(1, False, ["preview"]), (3, True, [])]


# -- webhook payloads --------------------------------------------------------------------------
async def test_pull_request_and_comment_webhooks_for_new_actions(repo: FakeGitHub) -> None:
    repo.create_pull(OWNER, NAME, 21, draft=True)
    repo.ready_for_review(OWNER, NAME, 21, by="maintainer")
    ready = repo.event_payload("pull_request", "ready_for_review", OWNER, NAME, 21)
    assert (ready["pull_request"]["draft"], ready["sender"]["login"]) == (False, "maintainer")
    repo.convert_to_draft(OWNER, NAME, 21)
    draft = repo.event_payload("pull_request", "converted_to_draft", OWNER, NAME, 21)
    assert (draft["pull_request"]["draft"], draft["sender"]["login"]) == (True, "octocat")
    assert [e.event for e in repo.issue_events(OWNER, NAME, 21)] == [
        "ready_for_review",
        "convert_to_draft",
    ]
    with pytest.raises(WebhookSchemaError):  # ready_for_review needs a non-draft PR
        repo.event_payload("pull_request", "ready_for_review", OWNER, NAME, 21)

    ours = repo.add_comment(OWNER, NAME, 21, "preview: ready", user=repo.bot.login)
    created = repo.event_payload("issue_comment", "created", OWNER, NAME, 21, comment_id=ours.id)
    assert created["comment"]["user"]["type"] == "Bot"
    assert created["comment"]["performed_via_github_app"]["slug"] == "preview-bot"
    assert created["sender"]["login"] == "preview-bot[bot]"
    assert created["issue"]["pull_request"]["url"].endswith("/pulls/21")
    theirs = repo.event_payload(
        "issue_comment", "created", OWNER, NAME, 21, body="/preview", user="alice"
    )
    assert theirs["comment"]["performed_via_github_app"] is None
    assert (theirs["comment"]["body"], theirs["sender"]["login"]) == ("/preview", "alice")
    repo.edit_comment(OWNER, NAME, theirs["comment"]["id"], "/preview please")
    edited = repo.event_payload(
        "issue_comment", "edited", OWNER, NAME, 21, comment_id=theirs["comment"]["id"]
    )
    assert edited["changes"] == {"body": {"from": "/preview"}}
    assert edited["comment"]["body"] == "/preview please"


async def test_check_and_status_webhooks(repo: FakeGitHub) -> None:
    same = repo.create_pull(OWNER, NAME, 31)
    fork = repo.create_pull(OWNER, NAME, 32, fork=True, user="outsider")
    run = repo.complete_check(OWNER, NAME, same.head_sha, "build", "success")
    completed = repo.check_run_payload(OWNER, NAME, run.id)
    check = completed["check_run"]
    assert (check["head_sha"], check["name"], check["conclusion"]) == (
        same.head_sha,
        "build",
        "success",
    )
    assert [p["number"] for p in check["pull_requests"]] == [31]
    assert check["app"]["slug"] == "github-actions"
    assert check["check_suite"]["status"] == "completed"
    assert completed["installation"]["id"] == repo.installation_for(OWNER).id
    fork_run = repo.complete_check(OWNER, NAME, fork.head_sha, "build", "failure")
    assert repo.check_run_payload(OWNER, NAME, fork_run.id)["check_run"]["pull_requests"] == []

    e2e = repo.start_check(OWNER, NAME, same.head_sha, "e2e")
    started = repo.check_run_payload(OWNER, NAME, e2e.id, "created")
    assert (started["check_run"]["status"], started["check_run"]["conclusion"]) == (
        "in_progress",
        None,
    )
    with pytest.raises(ValueError, match="not completed"):
        repo.check_run_payload(OWNER, NAME, e2e.id)
    with pytest.raises(ValueError, match="in_progress, not completed"):
        repo.check_suite_payload(OWNER, NAME, same.head_sha)
    repo.complete_check(OWNER, NAME, same.head_sha, "e2e", "timed_out")
    suite = repo.check_suite_payload(OWNER, NAME, same.head_sha)["check_suite"]
    assert (suite["status"], suite["conclusion"], suite["head_sha"]) == (
        "completed",
        "timed_out",
        same.head_sha,
    )
    assert suite["head_branch"] == "feature-31"
    assert suite["latest_check_runs_count"] == 2
    assert [p["number"] for p in suite["pull_requests"]] == [31]

    status = repo.set_status(OWNER, NAME, same.head_sha, "ci/test", "failure")
    payload = repo.status_payload(OWNER, NAME, status.id)
    assert (payload["sha"], payload["context"], payload["state"]) == (
        same.head_sha,
        "ci/test",
        "failure",
    )
    assert [b["name"] for b in payload["branches"]] == ["feature-31"]
    assert payload["sender"]["login"] == "ci-bot"
    assert payload["commit"]["author"]["login"] == "octocat"

    headers, body = webhook_request("status", payload, "s3cret")
    assert headers["X-Hub-Signature-256"] == sign("s3cret", body)
    event = Event.from_http({k.lower(): v for k, v in headers.items()}, body, secret="s3cret")
    assert event.event == "status" and event.data["state"] == "failure"


async def test_installation_webhooks(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    repo.create_repo(OWNER, "api")
    inst = repo.installation_for(OWNER)
    created = repo.installation_payload("created", inst.id)
    assert created["installation"]["id"] == inst.id
    assert created["installation"]["account"]["login"] == OWNER
    assert [r["full_name"] for r in created["repositories"]] == ["acme/shop", "acme/api"]
    assert created["sender"]["login"] == OWNER

    removed = repo.remove_installation_repos(inst.id, ["api"])
    gone = repo.installation_repositories_payload("removed", inst.id, removed)
    assert gone["repository_selection"] == "selected"
    assert [r["full_name"] for r in gone["repositories_removed"]] == ["acme/api"]
    assert gone["repositories_added"] == []
    back = repo.installation_repositories_payload(
        "added", inst.id, repo.add_installation_repos(inst.id, ["api"])
    )
    assert [r["name"] for r in back["repositories_added"]] == ["api"]

    token = repo.mint_token(inst.id)
    uninstalled = repo.uninstall(inst.id)
    deleted = repo.installation_payload("deleted", uninstalled)
    assert deleted["installation"]["id"] == inst.id
    status, _, _ = await _raw(repo, github_session, "GET", REPO, token)
    assert status == 401  # its tokens are gone with it
    with pytest.raises(KeyError):
        repo.installation_for(OWNER)

    repo.create_repo("acme-org", "api", owner_type="Organization")
    org = repo.installation_payload("created", repo.installation_for("acme-org").id)
    assert org["installation"]["account"]["type"] == "Organization"
    assert org["sender"]["login"] == "octocat"
