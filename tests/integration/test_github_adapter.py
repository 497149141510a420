"""The GitHub adapter against the fake: token caching, ETags, rate limits and outages."""

from __future__ import annotations

import aiohttp
import pytest

from bot.config import Settings
from bot.errors import TemporaryError
from bot.github import GitHub
from tests.rig.clock import FakeClock
from tests.rig.github.server import FakeGitHub
from tests.rig.harness import NAME, OWNER, Harness, skeleton_files

pytestmark = pytest.mark.rig


def settings_for(fake: FakeGitHub) -> Settings:
    return Settings(
        github_app_id=fake.app_id,
        github_private_key=fake.private_key_pem,
        github_webhook_secret="s",
        github_api_url=fake.url,
    )


async def test_one_token_per_installation_until_it_nears_expiry(github: FakeGitHub) -> None:
    github.create_repo(OWNER, NAME, files=skeleton_files())
    pr = github.create_pull(OWNER, NAME, 1)
    inst = github.installation_for(OWNER).id
    async with aiohttp.ClientSession() as session:
        gh = GitHub(session, settings_for(github))
        for _ in range(5):
            assert (await gh.repo(inst, f"{OWNER}/{NAME}").get_pull(1)).head_sha == pr.head_sha
        assert github.token_requests == 1
        # Reads are conditional: the repeats were answered 304, which costs no rate limit.
        assert github.count(status=304) == 4
        # A token within five minutes of expiry is renewed before use.
        github.token_lifetime = 120
        gh2 = GitHub(session, settings_for(github))
        await gh2.repo(inst, f"{OWNER}/{NAME}").get_pull(1)
        await gh2.repo(inst, f"{OWNER}/{NAME}").get_pull(1)
        assert github.token_requests == 3


async def test_a_revoked_token_is_dropped_and_the_next_call_gets_a_new_one(
    github: FakeGitHub,
) -> None:
    github.create_repo(OWNER, NAME, files=skeleton_files())
    github.create_pull(OWNER, NAME, 1)
    inst = github.installation_for(OWNER).id
    async with aiohttp.ClientSession() as session:
        gh = GitHub(session, settings_for(github))
        await gh.repo(inst, f"{OWNER}/{NAME}").get_pull(1)
        github.expire_tokens()
        with pytest.raises(TemporaryError, match="401"):
            await gh.repo(inst, f"{OWNER}/{NAME}").get_pull(1)
        await gh.repo(inst, f"{OWNER}/{NAME}").get_pull(1)
        assert github.token_requests == 2


async def test_rate_limits_become_retries_at_the_reset(github: FakeGitHub) -> None:
    github.create_repo(OWNER, NAME, files=skeleton_files())
    github.create_pull(OWNER, NAME, 1)
    inst = github.installation_for(OWNER).id
    clock = FakeClock()
    github.clock = clock.now
    async with aiohttp.ClientSession() as session:
        gh = GitHub(session, settings_for(github), clock=clock)
        github.fail_rate_limited("GET", r"/pulls/1$", reset_in=40)
        with pytest.raises(TemporaryError) as primary:
            await gh.repo(inst, f"{OWNER}/{NAME}").get_pull(1)
        assert primary.value.retry_after is not None
        assert 30 <= primary.value.retry_after <= 45
        clock.advance(primary.value.retry_after)  # no request goes before the reset
        github.fail_secondary_rate_limit("GET", r"/pulls/1$", retry_after=17)
        with pytest.raises(TemporaryError) as secondary:
            await gh.repo(inst, f"{OWNER}/{NAME}").get_pull(1)
        assert secondary.value.retry_after == 17
        clock.advance(17)
        github.fail_next("GET", r"/pulls/1$", 503)
        with pytest.raises(TemporaryError) as broken:
            await gh.repo(inst, f"{OWNER}/{NAME}").get_pull(1)
        assert broken.value.retry_after is None  # the configured backoff applies


async def test_a_secondary_rate_limit_mid_deploy_is_retried_to_completion(
    harness: Harness,
) -> None:
    h = harness
    h.fake.create_pull(OWNER, NAME, 3)
    h.fake.add_label(OWNER, NAME, 3, "preview")
    h.fake.fail_secondary_rate_limit("POST", r"/deployments$", retry_after=1)
    await h.deliver("labeled", 3)
    await h.settle()
    assert len(h.deployments(3)) == 1
    assert len(h.comments(3)) == 1
    assert await h.app(3) is not None


async def test_check_states_read_every_page_and_cost_nothing_while_unchanged(
    github: FakeGitHub,
) -> None:
    github.create_repo(OWNER, NAME, files=skeleton_files())
    pr = github.create_pull(OWNER, NAME, 1)
    inst = github.installation_for(OWNER).id
    for i in range(120):  # more check runs than one page holds
        github.complete_check(OWNER, NAME, pr.head_sha, f"lint-{i}", "success")
    github.complete_check(OWNER, NAME, pr.head_sha, "build", "failure")
    github.set_status(OWNER, NAME, pr.head_sha, "ci/legacy", "pending")
    async with aiohttp.ClientSession() as session:
        repo = GitHub(session, settings_for(github)).repo(inst, f"{OWNER}/{NAME}")
        states = await repo.check_states(pr.head_sha)
        assert len(states) == 122
        assert states["build"][0] == "failure" and states["lint-119"][0] == "success"
        assert states["ci/legacy"][0] == "pending"
        github.reset_counts()
        assert await repo.check_states(pr.head_sha) == states
        # The status, then the two pages of check runs: all unchanged, all free.
        assert github.count() == 3 and github.count(status=304) == 3
        github.complete_check(OWNER, NAME, pr.head_sha, "build", "success")
        assert (await repo.check_states(pr.head_sha))["build"][0] == "success"
