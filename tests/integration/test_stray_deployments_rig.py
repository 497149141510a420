"""Stray deployments on the rig: a deployment made outside the bot in a running preview's
environment is marked inactive by the resync, once, and the preview's own stays as it was.

Each resync's GitHub requests are printed (304s cost no rate limit), so the price of the check
shows: an idle resync reads the deployments list as a free 304, a resync with a stray pays the
list and one status (a 200 of the list also follows any change of it, such as a deploy).
"""

from __future__ import annotations

import pytest

from bot.resync import STRAY_DESCRIPTION, ResyncReport
from tests.rig.harness import NAME, OWNER, Harness

pytestmark = pytest.mark.rig

ENV = "dex-pr-31"


async def resync(h: Harness, what: str) -> tuple[ResyncReport, int]:
    """One resync; prints its requests; returns its report and its rate-limited requests."""
    h.fake.reset_counts()
    report = await h.resync()
    seen = [(r.method, r.path, r.status) for r in h.fake.requests if not r.token_request]
    charged = sum(1 for _, _, status in seen if status != 304)
    print(f"\nresync {what}: {len(seen)} requests, {charged} rate-limited")
    for method, path, status in seen:
        print(f"  {method} {path} -> {status}")
    return report, charged


async def test_a_stray_deployment_is_marked_inactive_and_the_previews_own_is_kept(
    harness: Harness,
) -> None:
    h, fake = harness, harness.fake
    pr = fake.create_pull(OWNER, NAME, 31)
    fake.add_label(OWNER, NAME, 31, "preview")
    assert (await h.deliver("labeled", 31)).status_code == 202
    await h.settle()
    (own,) = h.deployments(31)
    own_state = own.latest_state
    assert own_state not in (None, "inactive")

    await resync(h, "after the deploy (the deployments list read for the first time)")
    report, charged = await resync(h, "idle, with a running preview")
    assert (report.queued, report.strays_marked) == (0, 0)
    assert fake.count("GET", r"/deployments$", status=304) == 1  # the list, unchanged: free
    assert charged <= 1  # the App's own installations list at most, as before

    stray = fake.add_deployment(OWNER, NAME, pr.head_sha, ENV, state="success")
    report, _ = await resync(h, "with a stray deployment")
    assert (report.strays_marked, report.strays_failed) == (1, 0)
    assert fake.count("POST", rf"/deployments/{stray.id}/statuses$") == 1
    assert fake.count("POST", r"/deployments/\d+/statuses$") == 1  # on the stray only
    assert (stray.latest_state, stray.statuses[-1].description) == ("inactive", STRAY_DESCRIPTION)
    assert stray.statuses[-1].via_app
    (own_now, _) = h.deployments(31)
    assert own_now.id == own.id and own_now.latest_state == own_state

    report, _ = await resync(h, "after the mark")
    assert report.strays_marked == 0 and fake.count(method="POST") == 0
    report, charged = await resync(h, "idle again")
    assert fake.count("GET", r"/deployments$", status=304) == 1 and charged <= 1


async def test_a_stray_older_than_a_redeploy_is_marked_too(harness: Harness) -> None:
    """Made by hand before a push redeployed the preview (no resync in between): older than the
    preview's deployment now, and still active, since the redeploy marks only the bot's own."""
    h, fake = harness, harness.fake
    pr = fake.create_pull(OWNER, NAME, 32)
    fake.add_label(OWNER, NAME, 32, "preview")
    assert (await h.deliver("labeled", 32)).status_code == 202
    await h.settle()
    stray = fake.add_deployment(OWNER, NAME, pr.head_sha, "dex-pr-32")
    fake.push(OWNER, NAME, 32, files={"app.py": "print('v2')\n"})
    assert (await h.deliver("synchronize", 32)).status_code == 202
    await h.settle()
    first, _, second = h.deployments(32)
    assert (first.latest_state, stray.latest_state) == ("inactive", None)

    report, _ = await resync(h, "with a stray older than the running deployment")
    assert report.strays_marked == 1 and stray.latest_state == "inactive"
    assert second.latest_state not in (None, "inactive")
