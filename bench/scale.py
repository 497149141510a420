"""1,000 previews over 10 repositories: cold resync, idle resync, delivery latency, memory.

On the rig (bench/rig.py: the real API server, the GitHub fake over HTTP, the Argo CD stand-in),
the real `preview-bot serve` process:
1. **Cold resync**: the repositories already have their open, labeled PRs (their webhooks were
   lost), the bot starts with nothing deployed; its start-up resync deploys every one. Wall time
   from start to the last Application written and the last GitHub request, GitHub requests
   (token requests included, and 304s counted apart: a 304 costs no rate limit), the bot's peak
   RSS (VmHWM).
2. **Idle resync**: once everything has settled, the GitHub requests of one periodic resync of
   the unchanged repositories, per repository (goal <= 1 rate-limited request).
3. **Latency**: with 50 ms added to every GitHub response, one push per PR on a sample of PRs,
   each announced by its `synchronize` webhook at a steady rate: delivery -> the Application
   carries the new head (seen by a watch on the API server), p50/p99.
4. **Memory**: the bot's RSS with every preview managed (goal < 100 MiB), and its peak.

    .venv/bin/python bench/scale.py [--repos 10] [--prs 100] [--samples 40] [--rate 4]

Applications are named `{repo}-pr-{number}` (the bot requires the repository in the name when
it serves several). The machine is shared: times are
noisy; request counts and memory are not.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from rig import TEMPLATES, BotProcess, Rig, app_name, make_repository, open_labeled_pulls, rig, run  # noqa: E402

OWNER = "bench"
DELAY = 0.05  # added to every GitHub response in the latency part


def numbers(prs: int) -> range:
    return range(1, prs + 1)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


async def next_resync(r: Rig, bot: BotProcess, period: int) -> None:
    """Until the bot logs the end of its next resync."""
    done = bot.count("resync: ")
    await r.wait_for(lambda: bot.count("resync: ") > done, period + 300, "the next resync")


def requests_summary(r: Rig) -> str:
    total = len(r.fake.requests)
    tokens = r.fake.token_requests
    not_modified = r.fake.count(status=304, include_tokens=True)
    return f"{total} GitHub requests ({tokens} token requests, {not_modified} answered 304)"


async def main(args: argparse.Namespace) -> None:
    setup_started = time.monotonic()
    async with rig() as r:
        fake = r.fake
        # One installation covers the 10 repositories. At GitHub's default 5,000 requests an
        # hour per installation, a cold start of 1,000 previews (about 6 requests each) spends
        # the hour's budget after ~800 and the rest wait for the reset (as they must): the
        # bench uses the GitHub Enterprise Cloud installation limit, 15,000, by default.
        fake.rate_limit_per_hour = args.rate_limit
        pulls: dict[str, list[int]] = {}
        for index in range(args.repos):
            name = f"app{index}"
            make_repository(fake, OWNER, name)
            pulls[name] = list(numbers(args.prs))
            open_labeled_pulls(fake, OWNER, name, iter(pulls[name]))
        total = args.repos * args.prs
        print(
            f"rig ready in {time.monotonic() - setup_started:.0f}s: {args.repos} repositories, "
            f"{total} open labeled PRs, nothing deployed"
        )

        # ---- 1. cold resync
        fake.reset_counts()
        started = time.monotonic()
        bot = r.start_bot(
            f"{OWNER}/*",
            PREVIEW_BOT_RESYNC_SECONDS=str(args.resync),
            PREVIEW_BOT_LOG_LEVEL="INFO",
            **TEMPLATES,
        )
        heads = {
            app_name(name, n): fake.pull(OWNER, name, n).head_sha
            for name, ns in pulls.items()
            for n in ns
        }

        def all_deployed() -> bool:
            return all((app, sha) in r.seen for app, sha in heads.items())

        await r.wait_listening(bot)
        start_rss = bot.rss()
        last_request = await r.quiet(3.0, all_deployed, limit=args.limit)
        deployed_at = max(r.seen[(app, sha)] for app, sha in heads.items())
        cold_wall = last_request - started
        print(
            f"cold resync: {total} previews deployed in {deployed_at - started:.1f}s (last "
            f"Application written), {cold_wall:.1f}s to the last GitHub request; "
            f"{requests_summary(r)}, {len(fake.requests) / total:.1f} per preview; bot RSS "
            f"{start_rss:.0f} MiB once listening, peak {bot.peak():.0f} MiB"
        )
        errors = [x for x in bot.lines() if x.get("level") in ("warning", "error")]
        if errors:
            print(f"  ({len(errors)} warnings/errors logged, first: {errors[0].get('msg')!r})")
        print(f"  rate limit: {args.rate_limit} requests an hour for the installation")

        # ---- 2. idle resync: wait for a periodic resync to start and finish with nothing to do
        print(f"idle: waiting for the next periodic resync (every {args.resync}s)")
        await next_resync(r, bot, args.resync)  # then the next one starts args.resync later
        fake.reset_counts()
        await next_resync(r, bot, args.resync)
        await r.quiet(2.0)
        idle = len(fake.requests)
        idle_304 = fake.count(status=304, include_tokens=True)
        idle_tokens = fake.token_requests
        charged = idle - idle_304
        print(
            f"idle resync of {args.repos} unchanged repositories: {idle} GitHub requests "
            f"({idle_304} answered 304, free; {idle_tokens} token requests): "
            f"{idle / args.repos:.1f} per repository, {charged / args.repos:.1f} rate-limited "
            f"per repository (goal <= 1)"
        )
        routes = Counter(f"{q.method} {q.route} -> {q.status}" for q in fake.requests)
        for route, count in sorted(routes.items()):
            print(f"  {count:4d} x {route}")
        if fake.unimplemented:  # a route the fake does not know (route None above)
            print(f"  not implemented by the fake: {sorted(set(fake.unimplemented))}")
        rss_managed = bot.rss()
        print(
            f"memory: bot RSS {rss_managed:.0f} MiB with {total} managed previews "
            f"(goal < 100 MiB), peak {bot.peak():.0f} MiB"
        )

        # ---- 3. latency of delivery -> Application written, 50 ms added per GitHub response.
        # Pushed right after a resync so the next one (args.resync away) finds nothing to do
        # before the webhooks arrive.
        await next_resync(r, bot, args.resync)
        sample = [(name, ns[i]) for i in range(args.prs) for name, ns in pulls.items()]
        sample = sample[: args.samples]
        pushed = {(name, n): fake.push(OWNER, name, n) for name, n in sample}
        fake.delay_next(None, r".", DELAY, count=10**9)
        sent: dict[tuple[str, int], float] = {}
        statuses = []
        for name, n in sample:
            payload = fake.event_payload("pull_request", "synchronize", OWNER, name, n)
            sent[(name, n)] = time.monotonic()
            statuses.append(await r.post(bot, "pull_request", payload))
            await asyncio.sleep(1 / args.rate)

        def redeployed() -> bool:
            return all((app_name(*pr), sha) in r.seen for pr, sha in pushed.items())

        await r.wait_for(redeployed, 120, "redeploys")
        latencies = [(r.seen[(app_name(*pr), sha)] - sent[pr]) * 1000 for pr, sha in pushed.items()]
        print(
            f"latency, delivery -> Application written, {DELAY * 1000:.0f} ms added to every "
            f"GitHub response, {len(sample)} synchronize deliveries at {args.rate}/s: "
            f"p50 {statistics.median(latencies):.0f} ms, p99 {percentile(latencies, 99):.0f} ms, "
            f"max {max(latencies):.0f} ms (answers: {sorted(set(statuses))})"
        )
        print(f"memory at the end: bot RSS {bot.rss():.0f} MiB, peak {bot.peak():.0f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repos", type=int, default=10)
    parser.add_argument("--prs", type=int, default=100, help="open labeled PRs per repository")
    parser.add_argument("--samples", type=int, default=40, help="deliveries timed for latency")
    parser.add_argument("--rate", type=float, default=4.0, help="deliveries per second")
    parser.add_argument("--resync", type=int, default=30, help="the bot's resync_seconds")
    parser.add_argument(
        "--rate-limit", type=int, default=15_000, help="the installation's requests per hour"
    )
    parser.add_argument("--limit", type=float, default=1800.0, help="give up after (seconds)")
    run(main(parser.parse_args()))
