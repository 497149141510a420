"""GitHub requests per deploy, redeploy and teardown, as the real `preview-bot serve` makes them.

On the rig (bench/rig.py), one DEX-style repository, the story of tests/integration/
test_lifecycle.py told over HTTP to a bot process: PR 42 labeled (the repository's first
deploy: it also writes the shared Namespace component), pushed (redeploy), closed (teardown:
Application deleted, the stand-in plays Argo CD pruning it, overlay removed, comment says
destroyed); then further PRs, each labeled, pushed and closed (later deploys). Each step is
counted once the bot is idle again (no GitHub request for 2 s) and its effect is visible. The
figures are GitHub requests without token requests (one installation token serves every step;
they are shown apart), and 304 answers (conditional reads that cost no rate limit) apart.
Floors from issue 10: redeploy <= 6, teardown <= 5, a deploy <= 6 (a repository's first, one
more).

    .venv/bin/python bench/request_counts.py [--prs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from rig import LABEL, BotProcess, Rig, make_repository, rig, run  # noqa: E402

OWNER, NAME = "data-literate", "DEX"


def overlay(r: Rig, number: int) -> str | None:
    path = f"infra/argocd/previews/pr-{number}/kustomization.yaml"
    return r.fake.read_file(OWNER, NAME, "main", path)


def shows(r: Rig, app: str, sha: str) -> Callable[[], bool]:
    """The Application carries head `sha`."""
    return lambda: (app, sha) in r.seen


def gone(r: Rig, app: str, number: int) -> Callable[[], bool]:
    """The Application and the overlay are gone."""
    return lambda: app not in r.present and overlay(r, number) is None


class Counted:
    """One step's requests."""

    def __init__(self, r: Rig) -> None:
        # Not the readiness probe's unauthenticated `GET /` of the API root (no route in the
        # fake, which answers 404; it is not part of any step and costs no installation quota).
        requests = [q for q in r.fake.requests if q.route is not None]
        self.probes = len(r.fake.requests) - len(requests)
        self.tokens = sum(1 for q in requests if q.token_request)
        self.not_modified = sum(1 for q in requests if q.status == 304 and not q.token_request)
        self.total = len(requests) - self.tokens
        self.routes = Counter(
            f"{q.method} {q.route} {q.status}" for q in requests if not q.token_request
        )

    def charged(self) -> int:
        return self.total - self.not_modified

    def __str__(self) -> str:
        return (
            f"{self.total:2d} requests ({self.not_modified} of them 304, free; "
            f"+{self.tokens} token requests)"
        )


async def step(
    r: Rig, bot: BotProcess, event: str, number: int, done: Callable[[], bool]
) -> Counted:
    """Deliver `event` for PR `number`, wait until `done()` and quiet, count."""
    payload = r.fake.event_payload("pull_request", event, OWNER, NAME, number)
    status = await r.post(bot, "pull_request", payload)
    if status != 202:
        raise RuntimeError(f"{event} #{number}: the bot answered {status}")
    await r.quiet(2.0, done, limit=120)
    counted = Counted(r)
    r.fake.reset_counts()
    return counted


async def main(args: argparse.Namespace) -> None:
    async with rig() as r:
        fake = r.fake
        make_repository(fake, OWNER, NAME)
        bot = r.start_bot(
            f"{OWNER}/{NAME}",
            PREVIEW_BOT_RESYNC_SECONDS="3600",  # only the start-up resync (of an empty repo)
            PREVIEW_BOT_TEARDOWN_GRACE_SECONDS="5",
        )
        await r.wait_listening(bot)
        await r.quiet(2.0)
        fake.reset_counts()
        steps: dict[str, list[Counted]] = {}
        for i in range(args.prs + 1):
            n = 42 + i
            kind = "first deploy of the repository" if i == 0 else "deploy"
            app = f"dex-pr-{n}"
            pr = fake.create_pull(OWNER, NAME, n)
            fake.add_label(OWNER, NAME, n, LABEL)
            sha = pr.head_sha
            steps.setdefault(kind, []).append(await step(r, bot, "labeled", n, shows(r, app, sha)))
            sha = fake.push(OWNER, NAME, n)
            steps.setdefault("redeploy", []).append(
                await step(r, bot, "synchronize", n, shows(r, app, sha))
            )
            fake.close(OWNER, NAME, n)
            steps.setdefault("teardown", []).append(
                await step(
                    r,
                    bot,
                    "closed",
                    n,
                    gone(r, app, n),
                )
            )
        print(
            f"GitHub requests per step, token requests aside ({args.prs + 1} PRs in turn, "
            f"each labeled, pushed, closed; floors: deploy <= 6, a repository's first +1, "
            "redeploy <= 6, teardown <= 5)"
        )
        for kind, counted in steps.items():
            median = statistics.median(c.total for c in counted)
            charged = statistics.median(c.charged() for c in counted)
            print(
                f"{kind:>31}: median {median:g} ({charged:g} rate-limited); each: "
                + "; ".join(str(c) for c in counted)
            )
            if args.routes:
                for c in counted:
                    routes = ", ".join(f"{n} x {route}" for route, n in sorted(c.routes.items()))
                    print(f"{'':>33}{routes}")
        tokens = sum(c.tokens for cs in steps.values() for c in cs)
        probes = sum(c.probes for cs in steps.values() for c in cs)
        print(f"readiness probes (GET /, not counted above) during the story: {probes}")
        print(f"token requests over the whole story (the start-up resync took the token): {tokens}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--prs", type=int, default=3, help="PRs after the repository's first")
    parser.add_argument("--routes", action="store_true", help="list each step's requests")
    run(main(parser.parse_args()))
