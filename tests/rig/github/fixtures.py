"""pytest plugin: one GitHub fake per session, reset for each test that uses `github`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import pytest_asyncio

from tests.rig.github.server import FakeGitHub

_SESSION: dict[str, object] = {}


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def github_server() -> AsyncIterator[FakeGitHub]:
    """The fake, listening on 127.0.0.1 in the session's event loop (started once)."""
    started = time.perf_counter()
    fake = FakeGitHub()
    await fake.start()
    elapsed = time.perf_counter() - started
    _SESSION["fake"] = fake
    _SESSION["startup"] = elapsed
    load = fake.contract_stats.load_seconds if fake.contract_stats else 0.0
    print(
        f"\n[github fake] {fake.url} started in {elapsed:.2f} s "
        f"(OpenAPI contract loaded in {load:.2f} s)"
    )
    yield fake
    await fake.stop()


@pytest.fixture
def github(github_server: FakeGitHub) -> Iterator[FakeGitHub]:
    """A fresh fake for this test; fails it on contract violations, fake crashes and calls to
    endpoints the fake does not implement (use `take_violations()` when a test wants some)."""
    github_server.reset()
    yield github_server
    problems = github_server.problems()
    if problems:
        pytest.fail(
            "the GitHub fake saw problems in this test:\n  " + "\n  ".join(problems), pytrace=False
        )


@pytest_asyncio.fixture(loop_scope="session")
async def github_session() -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp session for gidgethub clients talking to the fake."""
    async with aiohttp.ClientSession() as session:
        yield session


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    fake = _SESSION.get("fake")
    if not isinstance(fake, FakeGitHub):
        return
    line = f"github fake: started in {float(str(_SESSION['startup'])):.2f} s"
    stats = fake.contract_stats
    if stats is not None:
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(stats.skipped_reasons.items()))
        line += (
            f"; contract checks: {stats.requests_checked} requests + "
            f"{stats.responses_checked} responses validated, {stats.ms_per_check:.1f} ms "
            f"per validation, {stats.cache_hits} repeats answered from cache"
            f"; {stats.responses_skipped} responses not checkable ({skipped or 'none'})"
        )
    terminalreporter.write_line(line)
