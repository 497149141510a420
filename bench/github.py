"""GitHub adapter costs: an installation-token request with the PEM parsed per call (gidgethub's
`apps` helpers) against the key parsed once and the JWT cached; and the memory a cache of
1,000 pull requests holds as gidgethub keeps them (parsed bodies) against ours (ETag + the
PullRequest the sync uses).

Runs the GitHub fake in-process on 127.0.0.1 (no contract checks, so the fake costs little).

    .venv/bin/python bench/github.py [--tokens 200] [--pulls 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import aiohttp
from gidgethub import apps as gh_apps
from gidgethub.aiohttp import GitHubAPI

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.config import Settings  # noqa: E402
from bot.github import GitHub  # noqa: E402
from bot.github_http import Held  # noqa: E402
from bot.parse import pull_from_api  # noqa: E402
from tests.rig.github.server import FakeGitHub  # noqa: E402


def ms(samples: list[float]) -> str:
    return f"median {statistics.median(samples) * 1000:.2f} ms"


async def token_costs(fake: FakeGitHub, n: int) -> None:
    installations = [fake.add_installation(f"org-{i}").id for i in range(2 * n)]
    async with aiohttp.ClientSession() as session:
        app = GitHubAPI(session, "bench", base_url=fake.url)
        before = []
        for inst in installations[:n]:
            started = time.perf_counter()
            await gh_apps.get_installation_access_token(
                app,
                installation_id=str(inst),
                app_id=str(fake.app_id),
                private_key=fake.private_key_pem,
            )
            before.append(time.perf_counter() - started)
        settings = Settings(
            github_app_id=fake.app_id,
            github_private_key=fake.private_key_pem,
            github_webhook_secret="s",
            github_api_url=fake.url,
        )
        gh = GitHub(session, settings)
        after = []
        for inst in installations[n:]:
            started = time.perf_counter()
            await gh.auth.token(inst)
            after.append(time.perf_counter() - started)
    cpu_before = []
    for _ in range(n):
        started = time.process_time()
        gh_apps.get_jwt(app_id=str(fake.app_id), private_key=fake.private_key_pem)
        cpu_before.append(time.process_time() - started)
    print(f"token request, PEM parsed per call (gidgethub.apps): {ms(before)} (n={n})")
    print(
        f"token request, key parsed once, JWT cached:          {ms(after)} "
        f"({gh.auth.jwt_mints} JWT minted, {gh.auth.key_parses} key parse)"
    )
    print(f"  of which gidgethub.apps.get_jwt alone (CPU):        {ms(cpu_before)}")
    print(f"  ratio after/before: {statistics.median(after) / statistics.median(before):.2f}x")


def held_bytes(make: Callable[[], object], n: int) -> int:
    gc.collect()
    tracemalloc.start()
    kept = [make() for _ in range(n)]
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    return size


async def cache_memory(fake: FakeGitHub, n: int) -> None:
    fake.create_repo("acme", "shop", files={"README.md": "x\n"})
    pr = fake.create_pull("acme", "shop", 1, labels=["preview"], body="A change. " * 40)
    async with aiohttp.ClientSession() as session:
        gh = fake.client(session, installation_id=fake.installation_for("acme").id)
        body = json.dumps(await gh.getitem("/repos/acme/shop/pulls/1")).encode()
    etag = '"' + "0" * 40 + '"'
    # gidgethub's cache value per URL: (etag, last-modified, the parsed body, next page).
    theirs = held_bytes(lambda: (etag, None, json.loads(body), None), n)
    ours = held_bytes(lambda: Held(etag, pull_from_api(json.loads(body)), None), n)
    print(
        f"cache of {n} pull requests ({len(body) / 1024:.1f} KB JSON each, #{pr.number} of the "
        f"fake): gidgethub's {theirs / 2**20:.1f} MiB, ours {ours / 2**20:.2f} MiB "
        f"({theirs / ours:.0f}x less)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--pulls", type=int, default=1000)
    args = parser.parse_args()
    fake = FakeGitHub(contract=False)
    await fake.start()
    try:
        await token_costs(fake, args.tokens)
        await cache_memory(fake, args.pulls)
    finally:
        await fake.stop()


if __name__ == "__main__":
    asyncio.run(main())
