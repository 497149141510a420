"""The GitHub adapter under GitHub's limits and outages, on the fake over HTTP with a shared
fake clock: what was sent is read from the fake's request log, never from timings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import jwt
import pytest
import pytest_asyncio

from bot.config import Settings
from bot.errors import TemporaryError
from bot.github import GitHub, RepoClient
from bot.metrics import Metrics
from bot.model import PullRequest
from tests.rig.clock import FakeClock, until
from tests.rig.github.server import FakeGitHub
from tests.rig.harness import NAME, OWNER, skeleton_files
from tests.rig.net import Relay

pytestmark = pytest.mark.rig

OTHER = "other-org"


def settings_for(fake: FakeGitHub, url: str | None = None) -> Settings:
    return Settings(
        github_app_id=fake.app_id,
        github_private_key=fake.private_key_pem,
        github_webhook_secret="s",
        github_api_url=url or fake.url,
    )


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


class Rig:
    """Two installations (OWNER/NAME and OTHER/svc), one fake clock for the bot and the fake."""

    def __init__(self, fake: FakeGitHub, gh: GitHub, clock: FakeClock, metrics: Metrics) -> None:
        self.fake = fake
        self.gh = gh
        self.clock = clock
        self.metrics = metrics
        self.ia = fake.installation_for(OWNER).id
        self.ib = fake.installation_for(OTHER).id
        self.a: RepoClient = gh.repo(self.ia, f"{OWNER}/{NAME}")
        self.b: RepoClient = gh.repo(self.ib, f"{OTHER}/svc")

    def sent(self, installation: int | None = None, method: str | None = None) -> list[Any]:
        return [
            r
            for r in self.fake.requests
            if (installation is None or r.installation == installation)
            and (method is None or r.method == method)
            and not r.token_request
        ]


@pytest_asyncio.fixture(loop_scope="session")
async def rig(github: FakeGitHub) -> AsyncIterator[Rig]:
    github.create_repo(OWNER, NAME, files=skeleton_files())
    github.create_repo(OTHER, "svc", files={"README.md": "svc\n"})
    for n in (1, 2, 3):
        github.create_pull(OWNER, NAME, n)
    github.create_pull(OTHER, "svc", 1)
    clock = FakeClock()
    github.clock = clock.now
    metrics = Metrics()
    async with aiohttp.ClientSession() as session:
        gh = GitHub(session, settings_for(github), metrics, clock=clock)
        yield Rig(github, gh, clock, metrics)


async def refused(call: Callable[[], Any]) -> TemporaryError:
    with pytest.raises(TemporaryError) as caught:
        await call()
    return caught.value


# -- primary rate limit ----------------------------------------------------------------------
async def test_a_spent_budget_holds_its_installation_until_the_reset_and_no_other(
    rig: Rig,
) -> None:
    fake, clock = rig.fake, rig.clock
    await rig.a.get_pull(1)
    assert rig.gh.rate_remaining(rig.ia) == 4999 / 5000
    fake.set_rate_limit(rig.ia, remaining=1, reset_in=600)
    reset_at = clock.now() + 600
    await rig.a.get_pull(2)  # the window's last request: answered, and it says so
    assert rig.gh.rate_remaining(rig.ia) == 0
    assert sample(rig.metrics, "preview_bot_github_rate_remaining", installation=str(rig.ia)) == 0

    for _ in range(10):
        error = await refused(lambda: rig.a.get_pull(3))
        assert error.retry_after == 601  # the reset, and a second for the clocks' difference
    assert (await rig.b.get_pull(1)).number == 1  # another installation keeps working
    await rig.b.create_comment(1, "still here")
    clock.advance(600)
    assert (await refused(lambda: rig.a.get_pull(3))).retry_after == 1
    clock.advance(1)
    assert (await rig.a.get_pull(3)).number == 3

    times_a = [r.at for r in rig.sent(rig.ia)]
    assert times_a == [reset_at - 600, reset_at - 600, reset_at + 1]
    assert len(rig.sent(rig.ib)) == 2
    assert sample(rig.metrics, "preview_bot_github_pauses_total", kind="primary") == 1
    assert sample(rig.metrics, "preview_bot_github_refused_total", kind="primary") == 11


async def test_a_primary_limit_refusal_pauses_the_installation(rig: Rig) -> None:
    rig.fake.fail_rate_limited("GET", r"/pulls/1$", reset_in=120)
    error = await refused(lambda: rig.a.get_pull(1))
    assert error.retry_after == 121
    sent = len(rig.fake.requests)
    assert (await refused(lambda: rig.a.get_pull(2))).retry_after == 121
    assert len(rig.fake.requests) == sent


# -- secondary rate limit --------------------------------------------------------------------
async def test_a_secondary_limit_holds_the_whole_app_then_writes_take_turns(rig: Rig) -> None:
    fake, clock = rig.fake, rig.clock
    await rig.a.get_pull(1)
    await rig.b.get_pull(1)  # both tokens in hand
    start = clock.now()
    fake.fail_secondary_rate_limit("POST", r"/issues/1/comments$", retry_after=30)
    limited = await refused(lambda: rig.a.create_comment(1, "hello"))
    assert limited.retry_after == 30
    sent = len(fake.requests)
    for call in (lambda: rig.a.get_pull(2), lambda: rig.b.get_pull(1)):
        assert (await refused(call)).retry_after == 30
    new_installation = fake.add_installation("newcomer").id
    assert (await refused(lambda: rig.gh.api(new_installation))).retry_after == 30
    clock.advance(29)
    assert (await refused(lambda: rig.b.create_comment(1, "early"))).retry_after == 1
    assert len(fake.requests) == sent  # nothing at all went to GitHub during the pause
    clock.advance(1)

    # Afterwards writes go one at a time, a second apart (reads are not held).
    async def posts_reach(n: int) -> None:
        await until(lambda: len(rig.sent(rig.ib, "POST")) == n)

    writes = [asyncio.create_task(rig.b.create_comment(1, f"c{i}")) for i in range(4)]
    for posted in range(1, 5):
        await posts_reach(posted)  # the next one waits for the clock
        assert (await rig.b.get_pull(1)).number == 1
        clock.advance(1)
    await asyncio.gather(*writes)
    assert [r.at - start for r in rig.sent(rig.ib, "POST")] == [30, 31, 32, 33]
    assert sample(rig.metrics, "preview_bot_github_pauses_total", kind="secondary") == 1
    assert sample(rig.metrics, "preview_bot_github_refused_total", kind="secondary") == 4

    # After a quiet while, back to normal: concurrent writes go at once.
    clock.advance(rig.gh.transport.throttle.policy.slow_seconds)
    before = len(rig.sent(rig.ib, "POST"))
    await asyncio.gather(*(rig.b.create_comment(1, f"d{i}") for i in range(3)))
    assert {r.at for r in rig.sent(rig.ib, "POST")[before:]} == {clock.now()}


# -- installation tokens and the App's JWT -----------------------------------------------------
async def test_a_failing_token_endpoint_sees_one_request_at_a_time_and_backs_off(
    rig: Rig,
) -> None:
    fake, clock = rig.fake, rig.clock
    fake.fail_next("POST", r"/access_tokens$", 500, count=4)

    async def fifty() -> list[PullRequest | BaseException]:
        return await asyncio.gather(*(rig.a.get_pull(1) for _ in range(50)), return_exceptions=True)

    for attempt, wait in enumerate([1, 2, 4, 8], start=1):
        for _ in range(2):  # the failure itself, then callers arriving during the backoff
            results = await fifty()
            assert all(isinstance(r, TemporaryError) for r in results)
            assert {r.retry_after for r in results if isinstance(r, TemporaryError)} == {wait}
            assert fake.count("POST", r"/access_tokens$") == attempt
        clock.advance(wait)
    results = await fifty()
    assert all(isinstance(r, PullRequest) for r in results)
    assert fake.count("POST", r"/access_tokens$") == 5
    assert rig.gh.auth.jwt_mints == 1


async def test_one_jwt_for_many_token_requests_and_the_key_parsed_once(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, clock = rig.fake, rig.clock
    parses = 0
    real = jwt.algorithms.load_pem_private_key  # type: ignore[attr-defined]  # set with crypto

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal parses
        parses += 1
        return real(*args, **kwargs)

    # PyJWT parses a PEM string here on every signature; the bot hands it a key object.
    monkeypatch.setattr(jwt.algorithms, "load_pem_private_key", counting)
    installations = [fake.add_installation(f"org-{i}").id for i in range(12)]
    for inst in installations:
        await rig.gh.api(inst)
    assert fake.token_requests == 12
    assert rig.gh.auth.jwt_mints == 1
    assert len(fake.app_jwts) == 1
    clock.advance(419)  # still well inside the JWT's ten minutes
    more = [fake.add_installation(f"org-b{i}").id for i in range(3)]
    for inst in more:
        await rig.gh.api(inst)
    assert rig.gh.auth.jwt_mints == 1
    clock.advance(1)  # two minutes before it expires, a new one is minted
    await rig.gh.api(fake.add_installation("org-late").id)
    assert rig.gh.auth.jwt_mints == 2
    assert len(fake.app_jwts) == 2
    assert rig.gh.auth.key_parses == 1
    assert parses == 0


# -- outages -----------------------------------------------------------------------------------
async def test_an_unreachable_github_opens_the_breaker_and_costs_no_connections(
    github: FakeGitHub,
) -> None:
    github.create_repo(OWNER, NAME, files=skeleton_files())
    github.create_pull(OWNER, NAME, 1)
    inst = github.installation_for(OWNER).id
    host, port = github.url.removeprefix("http://").split(":")
    relay = Relay(host, int(port))
    await relay.start()
    clock = FakeClock()
    github.clock = clock.now
    metrics = Metrics()
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{relay.port}"
            gh = GitHub(session, settings_for(github, url), metrics, clock=clock)
            repo = gh.repo(inst, f"{OWNER}/{NAME}")
            await repo.get_pull(1)
            relay.cut()
            threshold = gh.transport.breaker(url).policy.threshold
            for _ in range(threshold):
                assert (await refused(lambda: repo.get_pull(1))).retry_after is None
            tried = relay.accepted
            for _ in range(20):
                assert (await refused(lambda: repo.get_pull(1))).retry_after == 10
            assert relay.accepted == tried  # open: not even a connection attempt
            clock.advance(10)
            await refused(lambda: repo.get_pull(1))  # the probe, into the outage
            # One request: aiohttp itself retries an idempotent one once on a dropped connection.
            assert relay.accepted - tried in (1, 2)
            tried = relay.accepted
            assert (await refused(lambda: repo.get_pull(1))).retry_after == 20  # longer now
            relay.up = True
            clock.advance(20)
            assert (await repo.get_pull(1)).number == 1  # the probe succeeds: closed again
            await asyncio.gather(*(repo.get_pull(1) for _ in range(5)))
            assert relay.accepted > tried
    finally:
        await relay.stop()
    assert sample(metrics, "preview_bot_github_pauses_total", kind="circuit") == 2
    assert sample(metrics, "preview_bot_github_refused_total", kind="circuit") == 21


# -- the conditional cache ---------------------------------------------------------------------
def numbers(page: Any) -> tuple[int, ...]:
    return tuple(int(p["number"]) for p in page)


async def test_an_unchanged_read_is_a_free_304_returning_the_kept_value(rig: Rig) -> None:
    fake = rig.fake
    first = await rig.a.get_pull(1)
    budget = fake.rate_limit(rig.ia).remaining
    again = await rig.a.get_pull(1)
    assert again is first
    assert fake.count("GET", r"/pulls/1$", status=304) == 1
    assert fake.rate_limit(rig.ia).remaining == budget
    fake.add_label(OWNER, NAME, 1, "preview")
    changed = await rig.a.get_pull(1)
    assert changed.labels == {"preview"}
    files = await rig.a.list_files("infra/argocd", "main")
    assert files is not None and "infra/argocd/overlays/preview/kustomization.yaml" in files
    assert await rig.a.list_files("infra/argocd", "main") == files
    assert fake.count("GET", r"/git/trees/", status=304) == 1
    path = "infra/argocd/overlays/preview/kustomization.yaml"
    sha = await rig.a.get_file_sha(path, "main")
    assert await rig.a.get_file_sha(path, "main") == sha
    assert fake.count("GET", r"/contents/", status=304) == 1


async def test_the_list_helper_reads_pages_conditionally(rig: Rig) -> None:
    fake = rig.fake
    url = "/repos/{+repo}/pulls{?state,per_page}"
    args = {"repo": f"{OWNER}/{NAME}", "state": "open", "per_page": 2}
    assert await rig.gh.get_cached_pages(rig.ia, url, args, numbers) == [3, 2, 1]  # newest first
    budget = fake.rate_limit(rig.ia).remaining
    assert await rig.gh.get_cached_pages(rig.ia, url, args, numbers) == [3, 2, 1]
    assert fake.count("GET", r"/pulls$", status=304) == 2
    assert fake.rate_limit(rig.ia).remaining == budget
    fake.close(OWNER, NAME, 2)
    assert await rig.gh.get_cached_pages(rig.ia, url, args, numbers) == [3, 1]


async def test_the_cache_is_bounded(github: FakeGitHub) -> None:
    github.create_repo(OWNER, NAME, files=skeleton_files())
    for n in range(1, 6):
        github.create_pull(OWNER, NAME, n)
    inst = github.installation_for(OWNER).id
    async with aiohttp.ClientSession() as session:
        gh = GitHub(session, settings_for(github), cache_size=3)
        repo = gh.repo(inst, f"{OWNER}/{NAME}")
        for n in range(1, 6):
            await repo.get_pull(n)
        assert len(gh.etags) == 3
        await repo.get_pull(5)  # recent: kept
        await repo.get_pull(1)  # the oldest: dropped, read in full again
    assert github.count("GET", r"/pulls/5$", status=304) == 1
    assert github.count("GET", r"/pulls/1$", status=200) == 2
