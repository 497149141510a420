"""The GitHub fake itself, exercised through gidgethub as the bot will use it."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from gidgethub import BadRequest, GitHubBroken, InvalidField, RateLimitExceeded
from gidgethub.aiohttp import GitHubAPI
from gidgethub.apps import get_installation_access_token
from gidgethub.sansio import Event

from bot.webhooks import sign
from tests.rig.github import FakeGitHub, WebhookSchemaError, webhook_request

pytestmark = pytest.mark.rig

OWNER, NAME = "acme", "shop"
REPO = f"/repos/{OWNER}/{NAME}"
FILES = {
    "README.md": "# shop\n",
    "infra/argocd/overlays/preview/kustomization.yaml": "resources: []\n",
}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def repo(github: FakeGitHub) -> FakeGitHub:
    github.create_repo(OWNER, NAME, files=FILES)
    return github


async def _app_client(
    fake: FakeGitHub, session: aiohttp.ClientSession, cache: dict[str, Any] | None = None
) -> GitHubAPI:
    """A client the way the bot builds one: App JWT -> installation token over HTTP."""
    app = GitHubAPI(session, "preview-bot-tests", base_url=fake.url)
    inst = fake.installation_for(OWNER)
    token = await get_installation_access_token(
        app, installation_id=str(inst.id), app_id=str(fake.app_id), private_key=fake.private_key_pem
    )
    return GitHubAPI(
        session, "preview-bot-tests", oauth_token=token["token"], base_url=fake.url, cache=cache
    )


# -- App authentication ------------------------------------------------------------------------
async def test_app_jwt_gives_installation_token(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    gh = await _app_client(repo, github_session)
    assert repo.token_requests == 1
    data = await gh.getitem(REPO)
    assert data["full_name"] == f"{OWNER}/{NAME}"
    assert data["default_branch"] == "main"
    assert repo.count() == 1  # token requests are not counted by default
    assert repo.count(include_tokens=True) == 2
    assert repo.requests[-1].installation == repo.installation_for(OWNER).id


async def test_jwt_signed_by_another_key_is_rejected(
    repo: FakeGitHub, github_session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    other = FakeGitHub(contract=False, workdir=tmp_path)  # another App, another key
    app = GitHubAPI(github_session, "preview-bot-tests", base_url=repo.url)
    with pytest.raises(BadRequest) as caught:
        await get_installation_access_token(
            app,
            installation_id=str(repo.installation_for(OWNER).id),
            app_id=str(repo.app_id),
            private_key=other.private_key_pem,
        )
    assert caught.value.status_code == 401


async def test_expired_token_gives_401(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    repo.token_lifetime = 1
    gh = await _app_client(repo, github_session)
    await gh.getitem(REPO)
    repo.expire_tokens()
    with pytest.raises(BadRequest) as caught:
        await gh.getitem(REPO)
    assert caught.value.status_code == 401
    # A fresh token works again and is counted as a token request.
    gh = await _app_client(repo, github_session)
    await gh.getitem(REPO)
    assert repo.token_requests == 2


async def test_token_lifetime_is_reported(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    repo.token_lifetime = 120
    app = GitHubAPI(github_session, "preview-bot-tests", base_url=repo.url)
    token = await get_installation_access_token(
        app,
        installation_id=str(repo.installation_for(OWNER).id),
        app_id=str(repo.app_id),
        private_key=repo.private_key_pem,
    )
    expires = time.mktime(time.strptime(token["expires_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert 100 < expires - time.time() <= 121
    assert token["repository_selection"] == "all"
    assert token["permissions"]["contents"] == "write"


async def test_missing_permission_and_foreign_repo(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    narrow = repo.add_installation(
        "other-org", permissions={"metadata": "read", "contents": "read"}
    )
    repo.create_repo("other-org", "site", files={"README.md": "hi"})
    gh = repo.client(github_session, installation_id=narrow.id)
    await gh.getitem("/repos/other-org/site/contents/README.md")
    with pytest.raises(BadRequest) as caught:
        await gh.put(
            "/repos/other-org/site/contents/{+path}",
            {"path": "x.txt"},
            data={"message": "m", "content": _b64("x")},
        )
    assert caught.value.status_code == 403  # "Resource not accessible by integration"
    with pytest.raises(BadRequest) as caught:
        await gh.getitem(REPO)  # another account's repository is invisible
    assert caught.value.status_code == 404


# -- git data ----------------------------------------------------------------------------------
async def test_git_data_round_trip(
    repo: FakeGitHub, github_session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    gh = repo.client(github_session)
    head = (await gh.getitem(REPO + "/git/ref/{+ref}", {"ref": "heads/main"}))["object"]["sha"]
    base_tree = (await gh.getitem(REPO + "/git/commits/{sha}", {"sha": head}))["tree"]["sha"]
    blob = await gh.post(
        REPO + "/git/blobs", data={"content": "kind: Kustomization\n", "encoding": "utf-8"}
    )
    tree = await gh.post(
        REPO + "/git/trees",
        data={
            "base_tree": base_tree,
            "tree": [
                {
                    "path": "infra/argocd/previews/pr-42/kustomization.yaml",
                    "mode": "100644",
                    "type": "blob",
                    "sha": blob["sha"],
                },
                {
                    "path": "infra/argocd/previews/pr-42/values.yaml",
                    "mode": "100644",
                    "type": "blob",
                    "content": "replicas: 1\n",
                },
                {"path": "README.md", "mode": "100644", "type": "blob", "sha": None},
            ],
        },
    )
    commit = await gh.post(
        REPO + "/git/commits",
        data={"message": "preview: pr-42", "tree": tree["sha"], "parents": [head]},
    )
    ref = await gh.patch(
        REPO + "/git/refs/{+ref}", {"ref": "heads/main"}, data={"sha": commit["sha"]}
    )
    assert ref["object"]["sha"] == commit["sha"]

    files = repo.files(OWNER, NAME, "main")
    assert files == {
        "infra/argocd/overlays/preview/kustomization.yaml": "resources: []\n",
        "infra/argocd/previews/pr-42/kustomization.yaml": "kind: Kustomization\n",
        "infra/argocd/previews/pr-42/values.yaml": "replicas: 1\n",
    }
    out = repo.checkout(OWNER, NAME, "main", tmp_path / "wt")
    assert (out / "infra/argocd/previews/pr-42/values.yaml").read_text() == "replicas: 1\n"
    assert not (out / "README.md").exists()
    # Real objects: plain git can clone the repository and agrees on every sha.
    clone = tmp_path / "clone"
    await asyncio.to_thread(
        subprocess.run,
        ["git", "clone", "-q", str(repo.repo(OWNER, NAME).store.path), str(clone)],
        check=True,
    )
    done = await asyncio.to_thread(
        subprocess.run,
        ["git", "-C", str(clone), "rev-parse", "HEAD", "HEAD^{tree}"],
        check=True,
        capture_output=True,
        text=True,
    )
    rev = done.stdout.split()
    assert rev == [commit["sha"], tree["sha"]]

    recursive = await gh.getitem(REPO + "/git/trees/{sha}?recursive=1", {"sha": tree["sha"]})
    paths = {e["path"] for e in recursive["tree"]}
    assert "infra/argocd/previews/pr-42" in paths
    assert "infra/argocd/previews/pr-42/values.yaml" in paths
    got_blob = await gh.getitem(REPO + "/git/blobs/{sha}", {"sha": blob["sha"]})
    assert base64.b64decode(got_blob["content"]) == b"kind: Kustomization\n"
    log = repo.log(OWNER, NAME, "main")
    assert [c["message"] for c in log] == ["preview: pr-42", "Initial commit"]
    assert log[0]["files"]["README.md"] == "D"


async def test_update_ref_must_fast_forward(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    gh = repo.client(github_session)
    start = repo.branch_sha(OWNER, NAME, "main")
    assert start is not None
    ref = await gh.post(REPO + "/git/refs", data={"ref": "refs/heads/previews", "sha": start})
    assert ref["ref"] == "refs/heads/previews"
    ours = (
        await gh.post(
            REPO + "/git/commits",
            data={
                "message": "ours",
                "tree": repo.repo(OWNER, NAME).store.read_commit(start).tree,
                "parents": [start],
            },
        )
    )["sha"]
    # Someone else moves the branch first: our commit no longer descends from its head.
    repo.commit_as_other_actor(OWNER, NAME, "previews", {"other.txt": "x"}, "theirs")
    with pytest.raises(InvalidField) as caught:
        await gh.patch(REPO + "/git/refs/{+ref}", {"ref": "heads/previews"}, data={"sha": ours})
    assert "Update is not a fast forward" in str(caught.value)
    await gh.patch(
        REPO + "/git/refs/{+ref}", {"ref": "heads/previews"}, data={"sha": ours, "force": True}
    )
    assert repo.branch_sha(OWNER, NAME, "previews") == ours
    with pytest.raises(InvalidField):
        await gh.post(REPO + "/git/refs", data={"ref": "refs/heads/previews", "sha": start})
    await gh.delete(REPO + "/git/refs/{+ref}", {"ref": "heads/previews"})
    assert repo.branch_sha(OWNER, NAME, "previews") is None


async def test_contents_put_delete_one_commit_each(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    gh = repo.client(github_session)
    path = "infra/argocd/previews/pr-7/kustomization.yaml"
    url = REPO + "/contents/{+path}"
    created = await gh.put(
        url, {"path": path}, data={"message": "add pr-7", "content": _b64("a: 1\n")}
    )
    assert created["content"]["path"] == path
    assert len(repo.log(OWNER, NAME, "main")) == 2
    got = await gh.getitem(url + "{?ref}", {"path": path, "ref": "main"})
    assert base64.b64decode(got["content"]).decode() == "a: 1\n"
    assert got["sha"] == created["content"]["sha"]

    updated = await gh.put(
        url,
        {"path": path},
        data={"message": "update pr-7", "content": _b64("a: 2\n"), "sha": got["sha"]},
    )
    assert repo.read_file(OWNER, NAME, "main", path) == "a: 2\n"
    assert len(repo.log(OWNER, NAME, "main")) == 3
    assert updated["commit"]["parents"][0]["sha"] == created["commit"]["sha"]

    with pytest.raises(BadRequest) as stale:  # the sha we read is no longer current
        await gh.put(
            url,
            {"path": path},
            data={"message": "stale", "content": _b64("a: 3\n"), "sha": got["sha"]},
        )
    assert stale.value.status_code == 409
    with pytest.raises(InvalidField):  # updating an existing file needs its sha
        await gh.put(url, {"path": path}, data={"message": "no sha", "content": _b64("x")})
    assert len(repo.log(OWNER, NAME, "main")) == 3

    # A sha for a path that does not exist is ignored, as GitHub does: the file is created.
    other = await gh.put(
        url,
        {"path": "notes.txt"},
        data={"message": "notes", "content": _b64("n\n"), "sha": got["sha"]},
    )
    assert other["content"]["path"] == "notes.txt"
    await gh.delete(
        url, {"path": "notes.txt"}, data={"message": "rm notes", "sha": other["content"]["sha"]}
    )
    assert len(repo.log(OWNER, NAME, "main")) == 5

    listing = await gh.getitem(url, {"path": "infra/argocd/previews"})
    assert [e["name"] for e in listing] == ["pr-7"]
    await gh.delete(
        url, {"path": path}, data={"message": "remove pr-7", "sha": updated["content"]["sha"]}
    )
    log = repo.log(OWNER, NAME, "main")
    assert len(log) == 6
    assert log[0]["files"] == {path: "D"}
    assert repo.read_file(OWNER, NAME, "main", path) is None
    with pytest.raises(BadRequest) as missing:
        await gh.getitem(url, {"path": path})
    assert missing.value.status_code == 404


# -- caching, pagination, rate limits ----------------------------------------------------------
async def test_etag_304_costs_no_rate_limit(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    repo.create_pull(OWNER, NAME, 42, labels=["preview"])
    cache: dict[str, Any] = {}
    gh = repo.client(github_session, cache=cache)
    first = await gh.getitem(REPO + "/pulls/42")
    bucket = repo.rate_limit(repo.installation_for(OWNER).id)
    remaining = bucket.remaining
    second = await gh.getitem(REPO + "/pulls/42")
    assert second == first
    assert repo.count(status=304) == 1
    assert bucket.remaining == remaining
    repo.add_label(OWNER, NAME, 42, "another")  # the resource changes: a full 200 again
    third = await gh.getitem(REPO + "/pulls/42")
    assert [label["name"] for label in third["labels"]] == ["preview", "another"]
    assert bucket.remaining == remaining - 1


async def test_link_pagination_through_getiter(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    repo.create_pull(OWNER, NAME, 5)
    for i in range(45):
        repo.add_comment(OWNER, NAME, 5, f"comment {i}")
    gh = repo.client(github_session)
    bodies = [c["body"] async for c in gh.getiter(REPO + "/issues/5/comments?per_page=20")]
    assert bodies == [f"comment {i}" for i in range(45)]
    assert repo.count("GET", r"/issues/5/comments") == 3
    # Like GitHub, the next links address the repository by id.
    assert repo.requests[-1].raw_path.startswith("/repositories/")
    for n in range(6, 40):
        repo.create_pull(OWNER, NAME, n)
    repo.close(OWNER, NAME, 6)
    open_prs = [p["number"] async for p in gh.getiter(REPO + "/pulls?state=open&per_page=10")]
    assert sorted(open_prs) == [5, *range(7, 40)]


async def test_rate_limit_headers_and_exhaustion(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    gh = repo.client(github_session)
    await gh.getitem(REPO)
    inst = repo.installation_for(OWNER).id
    assert gh.rate_limit is not None
    assert gh.rate_limit.limit == 5000
    assert gh.rate_limit.remaining == 4999
    repo.set_rate_limit(inst, remaining=1, reset_in=600)
    await gh.getitem(REPO)
    with pytest.raises(RateLimitExceeded):
        await gh.getitem(REPO)


# -- fault injection ---------------------------------------------------------------------------
async def test_fault_injection(repo: FakeGitHub, github_session: aiohttp.ClientSession) -> None:
    repo.create_pull(OWNER, NAME, 3)
    gh = repo.client(github_session)
    repo.fail_next("GET", r"/pulls/3$", 502, count=2)
    for _ in range(2):
        with pytest.raises(GitHubBroken):
            await gh.getitem(REPO + "/pulls/3")
    assert (await gh.getitem(REPO + "/pulls/3"))["number"] == 3

    repo.fail_rate_limited("POST", r"/issues/3/comments")
    with pytest.raises(RateLimitExceeded) as primary:
        await gh.post(REPO + "/issues/3/comments", data={"body": "hi"})
    assert primary.value.rate_limit.remaining == 0

    repo.fail_secondary_rate_limit(None, r"/issues/3/comments", retry_after=7, status=429)
    with pytest.raises(BadRequest) as secondary:
        await gh.post(REPO + "/issues/3/comments", data={"body": "hi"})
    assert secondary.value.status_code == 429
    assert secondary.value.headers["retry-after"] == "7"

    repo.fail_next(
        "PUT",
        r"/contents/",
        409,
        body={"message": "is at abc but expected def", "documentation_url": "x", "status": "409"},
    )
    with pytest.raises(BadRequest) as conflict:
        await gh.put(
            REPO + "/contents/{+path}",
            {"path": "a.txt"},
            data={"message": "m", "content": _b64("a")},
        )
    assert conflict.value.status_code == 409
    assert repo.read_file(OWNER, NAME, "main", "a.txt") is None  # the fault served nothing

    repo.delay_next("GET", r"/pulls/3$", 0.3)
    started = time.perf_counter()
    await gh.getitem(REPO + "/pulls/3")
    assert time.perf_counter() - started >= 0.3
    assert len(repo.comments(OWNER, NAME, 3)) == 0
    stats = repo.contract_stats
    assert stats is not None
    assert stats.skipped_reasons.get("injected fault", 0) >= 5


# -- contract checks ---------------------------------------------------------------------------
async def test_contract_violations_are_caught(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    repo.create_pull(OWNER, NAME, 9)
    gh = repo.client(github_session)
    deployment = await gh.post(
        REPO + "/deployments",
        data={
            "ref": "feature-9",
            "environment": "pr-9",
            "required_contexts": [],
            "transient_environment": True,
            "production_environment": False,
        },
    )
    with pytest.raises(InvalidField):  # GitHub answers a schema violation with 422
        await gh.post(
            REPO + "/deployments/{id}/statuses", {"id": deployment["id"]}, data={"state": "bogus"}
        )
    with pytest.raises(InvalidField):
        await gh.post(REPO + "/issues/9/comments", data={"body": 42})
    found = repo.take_violations()
    assert [v.kind for v in found] == ["request", "request"]
    assert "'bogus' is not one of" in found[0].message
    assert "42 is not of type 'string'" in found[1].message
    assert repo.comments(OWNER, NAME, 9) == []
    assert repo.deployments(OWNER, NAME)[0].statuses == []


async def test_unknown_endpoints_are_reported(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    gh = repo.client(github_session)
    with pytest.raises(BadRequest) as caught:
        await gh.getitem(REPO + "/branches/main")
    assert caught.value.status_code == 404
    # The `github` fixture fails a test that leaves these behind; this one expects it.
    assert repo.problems() == [f"[not implemented by the fake] GET {REPO}/branches/main"]
    repo.unimplemented.clear()


def test_contract_catches_a_response_that_breaks_the_schema(github: FakeGitHub) -> None:
    checker = github.contract
    assert checker is not None
    from multidict import MultiDict

    problems = checker.check_response(
        "GET",
        "/repos/{owner}/{repo}/pulls/{pull_number}",
        {"owner": "a", "repo": "b", "pull_number": "1"},
        200,
        {},
        json.dumps({"number": "one"}).encode(),
        "application/json",
    )
    assert problems
    assert (
        checker.check_request(
            "GET",
            "/repos/{owner}/{repo}/contents/{path}",
            {"owner": "a", "repo": "b", "path": "a/b c.yaml"},
            MultiDict(ref="main"),
            {},
            b"",
            "",
        )
        == []
    )
    assert checker.errata  # the patched errors of @octokit/openapi are listed


# -- pull requests, comments, labels, permissions --------------------------------------------
async def test_pull_request_shape_and_life_cycle(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    pr = repo.create_pull(OWNER, NAME, 12, labels=["preview"], files={"app.py": "print(1)\n"})
    fork = repo.create_pull(OWNER, NAME, 13, fork=True, user="outsider")
    gh = repo.client(github_session)
    data = await gh.getitem(REPO + "/pulls/12")
    assert data["head"]["sha"] == pr.head_sha
    assert data["head"]["ref"] == "feature-12"
    assert data["base"]["repo"]["default_branch"] == "main"
    assert data["labels"][0]["name"] == "preview"
    assert data["state"] == "open" and data["merged"] is False
    forked = await gh.getitem(REPO + "/pulls/13")
    assert forked["head"]["repo"]["fork"] is True
    assert forked["head"]["repo"]["full_name"] == f"outsider/{NAME}"
    assert forked["head"]["sha"] == fork.head_sha

    new_head = repo.push(OWNER, NAME, 12, {"app.py": "print(2)\n"})
    assert (await gh.getitem(REPO + "/pulls/12"))["head"]["sha"] == new_head
    assert repo.read_file(OWNER, NAME, new_head, "app.py") == "print(2)\n"
    repo.close(OWNER, NAME, 12, merged=True)
    merged = await gh.getitem(REPO + "/pulls/12")
    assert merged["state"] == "closed" and merged["merged"] is True
    assert repo.read_file(OWNER, NAME, "main", "app.py") == "print(2)\n"

    labels = await gh.post(REPO + "/issues/13/labels", data={"labels": ["preview"]})
    assert [label["name"] for label in labels] == ["preview"]
    await gh.delete(REPO + "/issues/13/labels/{name}", {"name": "preview"})
    assert repo.pull(OWNER, NAME, 13).labels == []
    with pytest.raises(BadRequest) as missing:
        await gh.delete(REPO + "/issues/13/labels/{name}", {"name": "preview"})
    assert missing.value.status_code == 404

    repo.set_permission(OWNER, NAME, "maintainer", "write")
    perm = await gh.getitem(REPO + "/collaborators/{user}/permission", {"user": "maintainer"})
    assert perm["permission"] == "write"
    perm = await gh.getitem(REPO + "/collaborators/{user}/permission", {"user": "outsider"})
    assert perm["permission"] == "read"


async def test_one_comment_kept_up_to_date(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    repo.create_pull(OWNER, NAME, 4)
    repo.add_comment(OWNER, NAME, 4, "LGTM", user="reviewer")
    gh = repo.client(github_session)
    created = await gh.post(REPO + "/issues/4/comments", data={"body": "preview: pending"})
    assert created["user"]["login"] == "preview-bot[bot]"
    assert created["performed_via_github_app"]["slug"] == "preview-bot"
    edited = await gh.patch(
        REPO + "/issues/comments/{id}", {"id": created["id"]}, data={"body": "preview: ready"}
    )
    assert edited["body"] == "preview: ready"
    again = await gh.getitem(REPO + "/issues/comments/{id}", {"id": created["id"]})
    assert again["body"] == "preview: ready"
    bodies = [c.body for c in repo.comments(OWNER, NAME, 4)]
    assert bodies == ["LGTM", "preview: ready"]


# -- deployments, checks, statuses -------------------------------------------------------------
async def test_deployments_and_auto_inactive(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    pr = repo.create_pull(OWNER, NAME, 21)
    gh = repo.client(github_session)

    async def deploy(transient: bool) -> dict[str, Any]:
        d: dict[str, Any] = await gh.post(
            REPO + "/deployments",
            data={
                "ref": pr.head_sha,
                "environment": "pr-21",
                "required_contexts": [],
                "auto_merge": False,
                "transient_environment": transient,
                "production_environment": False,
                "payload": {"pr": 21},
            },
        )
        await gh.post(
            REPO + "/deployments/{id}/statuses",
            {"id": d["id"]},
            data={
                "state": "success",
                "environment_url": "https://pr-21.preview.example",
                "log_url": "https://argo.example/app/pr-21",
            },
        )
        return d

    first = await deploy(transient=False)
    second = await deploy(transient=False)
    statuses = await gh.getitem(REPO + "/deployments/{id}/statuses", {"id": first["id"]})
    assert [s["state"] for s in statuses] == ["inactive", "success"]  # newest first
    latest = await gh.getitem(REPO + "/deployments/{id}/statuses", {"id": second["id"]})
    assert latest[0]["environment_url"] == "https://pr-21.preview.example"
    assert latest[0]["target_url"] == latest[0]["log_url"]
    # Transient deployments are never auto-inactivated: the bot must do it itself.
    third = await deploy(transient=True)
    fourth = await deploy(transient=True)
    assert repo.repo(OWNER, NAME).deployments[third["id"]].latest_state == "success"
    assert repo.repo(OWNER, NAME).deployments[second["id"]].latest_state == "inactive"
    listed = await gh.getitem(REPO + "/deployments?environment=pr-21&sha=" + pr.head_sha)
    assert [d["id"] for d in listed] == [fourth["id"], third["id"], second["id"], first["id"]]
    assert listed[0]["payload"] == {"pr": 21}


async def test_deployment_verifies_commit_contexts(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    pr = repo.create_pull(OWNER, NAME, 22)
    gh = repo.client(github_session)
    run = await gh.post(
        REPO + "/check-runs",
        data={"name": "preview", "head_sha": pr.head_sha, "status": "in_progress"},
    )
    assert run["conclusion"] is None
    with pytest.raises(BadRequest) as conflict:  # required_contexts defaults to all contexts
        await gh.post(REPO + "/deployments", data={"ref": pr.head_sha, "environment": "pr-22"})
    assert conflict.value.status_code == 409
    assert "Commit status checks failed" in str(conflict.value)
    await gh.patch(
        REPO + "/check-runs/{id}",
        {"id": run["id"]},
        data={"conclusion": "success", "output": {"title": "ok", "summary": "done"}},
    )
    await gh.post(
        REPO + "/statuses/{sha}",
        {"sha": pr.head_sha},
        data={"state": "success", "context": "ci/test"},
    )
    deployment = await gh.post(
        REPO + "/deployments", data={"ref": pr.head_sha, "environment": "pr-22"}
    )
    assert deployment["sha"] == pr.head_sha
    runs = await gh.getitem(REPO + "/commits/{ref}/check-runs", {"ref": pr.head_sha})
    assert runs["total_count"] == 1
    assert runs["check_runs"][0]["status"] == "completed"
    assert runs["check_runs"][0]["pull_requests"][0]["number"] == 22


async def test_deployment_auto_merges_a_branch_behind_default(
    repo: FakeGitHub, github_session: aiohttp.ClientSession
) -> None:
    repo.create_pull(OWNER, NAME, 23)
    repo.commit_as_other_actor(OWNER, NAME, "main", {"NEWS.md": "news\n"})
    gh = repo.client(github_session)
    answer = await gh.post(
        REPO + "/deployments", data={"ref": "feature-23", "required_contexts": []}
    )
    assert "Auto-merged main into feature-23" in answer["message"]
    assert repo.read_file(OWNER, NAME, "feature-23", "NEWS.md") == "news\n"
    assert repo.deployments(OWNER, NAME) == []


# -- webhooks ----------------------------------------------------------------------------------
async def test_webhook_payloads_from_state_validate(repo: FakeGitHub) -> None:
    pr = repo.create_pull(OWNER, NAME, 31, labels=["preview"])
    opened = repo.event_payload("pull_request", "opened", OWNER, NAME, 31)
    assert opened["pull_request"]["head"]["sha"] == pr.head_sha
    assert opened["installation"]["id"] == repo.installation_for(OWNER).id
    assert opened["repository"]["full_name"] == f"{OWNER}/{NAME}"
    assert "user_view_type" not in opened["sender"]  # only fields GitHub sends

    labeled = repo.event_payload("pull_request", "labeled", OWNER, NAME, 31, sender="maintainer")
    assert labeled["label"]["name"] == "preview"
    assert labeled["sender"]["login"] == "maintainer"

    before = pr.head_sha
    after = repo.push(OWNER, NAME, 31, {"x.txt": "1"})
    sync = repo.event_payload("pull_request", "synchronize", OWNER, NAME, 31)
    assert (sync["before"], sync["after"]) == (before, after)
    assert sync["pull_request"]["head"]["sha"] == after

    repo.remove_label(OWNER, NAME, 31, "preview")
    unlabeled = repo.event_payload("pull_request", "unlabeled", OWNER, NAME, 31)
    assert unlabeled["label"]["name"] == "preview"
    assert unlabeled["pull_request"]["labels"] == []

    repo.edit_pull(OWNER, NAME, 31, title="New title")
    edited = repo.event_payload("pull_request", "edited", OWNER, NAME, 31)
    assert edited["changes"] == {"title": {"from": "Pull request 31"}}

    comment = repo.event_payload("issue_comment", "created", OWNER, NAME, 31, body="/preview")
    assert comment["issue"]["pull_request"]["url"].endswith(f"{REPO}/pulls/31")
    assert comment["comment"]["body"] == "/preview"

    with pytest.raises(WebhookSchemaError):  # closed needs a closed pull request
        repo.event_payload("pull_request", "closed", OWNER, NAME, 31)
    repo.close(OWNER, NAME, 31, merged=True)
    closed = repo.event_payload("pull_request", "closed", OWNER, NAME, 31)
    assert closed["pull_request"]["merged"] is True
    repo.create_pull(OWNER, NAME, 32)
    repo.close(OWNER, NAME, 32)
    repo.reopen(OWNER, NAME, 32)
    reopened = repo.event_payload("pull_request", "reopened", OWNER, NAME, 32)
    assert reopened["pull_request"]["state"] == "open"

    github = repo
    github.create_repo("acme-org", "api", owner_type="Organization")
    github.create_pull("acme-org", "api", 1, labels=["preview"])
    org = github.event_payload("pull_request", "labeled", "acme-org", "api", 1)
    assert org["organization"]["login"] == "acme-org"

    headers, body = webhook_request("pull_request", opened, "s3cret")
    assert headers["X-Hub-Signature-256"] == sign("s3cret", body)
    event = Event.from_http({k.lower(): v for k, v in headers.items()}, body, secret="s3cret")
    assert event.data["number"] == 31
