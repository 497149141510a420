"""Previews that don't outlive their use, on the rig with a fake clock: expiry, its warning,
keep, activity resetting the clock, and the per-repository cap with its queue.

The bot (its syncs, its resync, its GitHub adapter) and the GitHub fake (label, comment and
token times) share one FakeClock, so a week passes with `h.advance` and no sleeping. The
resync is what enforces the TTL (no per-preview timer), so each step runs it as the periodic
loop would. Every step checks the PR's one comment and that nothing else changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.comment import parse_comment_state
from bot.model import A_HEAD_SHA
from tests.rig.harness import NAME, OWNER, Harness

pytestmark = pytest.mark.rig

HOUR = 3600
DAY = 24 * HOUR
WEEK = 7 * DAY  # the default PREVIEW_BOT_TTL
EXPIRED = (
    "Torn down because it had no activity for 7d. Re-add the `preview` label or run "
    "`/preview` to bring it back."
)


def when(epoch: float) -> str:
    """A time as the comment writes it."""
    return f"{datetime.fromtimestamp(epoch, UTC):%Y-%m-%d %H:%M} UTC"


def expires_line(epoch: float, warn: bool = False) -> str:
    mark = "⚠️" if warn else "⌛"
    return f"{mark} Expires {when(epoch)} unless there is activity"


def our_comment(h: Harness, number: int) -> tuple[str, str]:
    """The PR's one bot comment: (the state its hidden marker names, its body)."""
    (comment,) = [c for c in h.comments(number) if c.via_app]
    state, _ = parse_comment_state(comment.body)
    return state or "?", comment.body


@dataclass(frozen=True)
class World:
    """Everything a TTL step could change besides the comment, to show it did not."""

    commits: tuple[str, ...]
    labels: dict[int, tuple[str, ...]]
    apps: dict[int, Any]  # number -> (spec, head sha) of its Application, None when absent
    deployments: dict[int, tuple[tuple[int, str | None], ...]]
    comments: dict[int, int]


async def world(h: Harness, *numbers: int) -> World:
    apps: dict[int, Any] = {}
    for n in numbers:
        app = await h.app(n)
        apps[n] = None if app is None else (app["spec"], app["metadata"]["annotations"][A_HEAD_SHA])
    return World(
        commits=tuple(c["sha"] for c in h.commits()),
        labels={n: tuple(h.fake.pull(OWNER, NAME, n).labels) for n in numbers},
        apps=apps,
        deployments={n: tuple((d.id, d.latest_state) for d in h.deployments(n)) for n in numbers},
        comments={n: len(h.comments(n)) for n in numbers},
    )


def writes(h: Harness) -> list[tuple[str, str]]:
    """What the bot changed on GitHub since the last reset_counts (method, path)."""
    return [
        (r.method, r.path) for r in h.fake.requests if r.method != "GET" and not r.token_request
    ]


def comment_id(h: Harness, number: int) -> int:
    (comment,) = [c for c in h.comments(number) if c.via_app]
    return int(comment.id)


def now(h: Harness) -> float:
    assert h.clock is not None
    return h.clock.now()


async def label(h: Harness, number: int, **pull: Any) -> None:
    """A maintainer labels the PR (created first when new) and GitHub says so."""
    if number not in h.fake.repo(OWNER, NAME).pulls:
        h.fake.create_pull(OWNER, NAME, number, **pull)
    h.fake.add_label(OWNER, NAME, number, "preview")
    resp = await h.deliver("labeled", number)
    assert resp.status_code == 202, resp.text
    await h.settle()


async def healthy(h: Harness, number: int) -> None:
    """Argo CD reports the preview synced and healthy on its pinned revision."""
    app = await h.app(number)
    assert app is not None
    await h.standin.set_status(
        f"dex-pr-{number}",
        sync="Synced",
        health="Healthy",
        revision=app["spec"]["source"]["targetRevision"],
        operation_phase="Succeeded",
    )
    await h.settle()


async def gone(h: Harness, number: int) -> None:
    """Argo CD prunes the deleted Application; the watch brings the last sync."""
    await h.standin.wait_gone(f"dex-pr-{number}")
    await h.settle()


# ---- expiry and its warning -------------------------------------------------------------------


async def test_an_idle_preview_is_warned_then_torn_down_and_the_label_brings_it_back(
    timed_harness: Harness,
) -> None:
    h = timed_harness
    start = now(h)
    await label(h, 60)
    await healthy(h, 60)
    state, body = our_comment(h, 60)
    assert state == "ready"
    assert expires_line(start + WEEK) in body

    # Six days later the resync finds nothing due: no sync, nothing written.
    h.advance(6 * DAY - 1)
    before = await world(h, 60)
    h.fake.reset_counts()
    report = await h.resync()
    assert report.queued == 0
    assert writes(h) == []
    assert our_comment(h, 60)[1] == body

    # 24 hours before the end: the comment warns, with the exact time; nothing else moves.
    h.advance(1)
    h.fake.reset_counts()
    report = await h.resync()
    assert report.queued == 1
    state, warned = our_comment(h, 60)
    assert state == "ready"
    assert expires_line(start + WEEK, warn=True) in warned
    assert writes(h) == [("PATCH", f"/repos/{OWNER}/{NAME}/issues/comments/{comment_id(h, 60)}")]
    assert await world(h, 60) == before

    # A second resync inside the warning window rewrites nothing.
    h.fake.reset_counts()
    await h.resync()
    assert writes(h) == []

    # The week is over: torn down, the label removed, the comment says why and how back.
    h.advance(DAY)
    await h.resync()
    await gone(h, 60)
    assert await h.app(60) is None
    assert h.overlay(60) is None
    assert "preview" not in h.fake.pull(OWNER, NAME, 60).labels
    assert all(d.latest_state == "inactive" for d in h.deployments(60))
    state, body = our_comment(h, 60)
    assert state == "destroyed"
    assert EXPIRED in body
    assert "Expires" not in body

    # GitHub tells of the label the bot removed: nothing more to do.
    after = await world(h, 60)
    h.fake.reset_counts()
    await h.deliver("unlabeled", 60, label="preview")
    await h.settle()
    assert writes(h) == []
    assert await world(h, 60) == after

    # Re-adding the label brings it back, with a new week from then.
    h.advance(HOUR)
    back = now(h)
    await label(h, 60)
    assert await h.app(60) is not None
    state, body = our_comment(h, 60)
    assert state == "deploying"
    assert expires_line(back + WEEK) in body
    assert len(h.comments(60)) == 1


# ---- keep ------------------------------------------------------------------------------------


async def test_keep_by_command_or_label_exempts_until_the_keep_label_goes(
    timed_harness: Harness,
) -> None:
    h = timed_harness
    for n in (61, 62):
        await label(h, n)
        await healthy(h, n)
    h.advance(6 * DAY + HOUR)  # both in their warning day
    await h.resync()
    assert expires_line(now(h) - 6 * DAY - HOUR + WEEK, warn=True) in our_comment(h, 61)[1]

    # `/preview keep` on one, the keep label on the other.
    await h.command(61, "/preview keep")
    h.fake.add_label(OWNER, NAME, 62, "preview:keep")
    await h.deliver("labeled", 62, label="preview:keep")
    await h.settle()
    (keep_cmd,) = [c for c in h.comments(61) if not c.via_app]
    assert [r.content for r in keep_cmd.reactions] == ["eyes", "+1"]
    for n in (61, 62):
        state, body = our_comment(h, n)
        assert state == "ready"
        assert "📌 Kept: no time-to-live applies" in body
        assert "Expires" not in body

    # A month later nothing is due, nothing is written, both still run.
    before = await world(h, 61, 62)
    h.advance(30 * DAY)
    h.fake.reset_counts()
    report = await h.resync()
    assert report.queued == 0
    assert writes(h) == []
    assert await world(h, 61, 62) == before

    # Taking the keep label off is activity too: a new week from then, not an instant
    # teardown for the month the keep covered.
    h.fake.remove_label(OWNER, NAME, 62, "preview:keep")
    await h.deliver("unlabeled", 62, label="preview:keep")
    await h.settle()
    state, body = our_comment(h, 62)
    assert state == "ready"
    assert expires_line(now(h) + WEEK) in body
    assert "📌 Kept" not in body
    assert await world(h, 62) == World(
        before.commits,
        {62: ("preview",)},
        {62: before.apps[62]},
        {62: before.deployments[62]},
        {62: 1},
    )


# ---- activity --------------------------------------------------------------------------------


async def test_a_push_and_a_preview_command_reset_the_clock(timed_harness: Harness) -> None:
    h = timed_harness
    await label(h, 63)
    h.advance(5 * DAY)

    # A push redeploys; the week starts again from the push.
    sha = h.fake.push(OWNER, NAME, 63, files={"app.py": "print('v2')\n"})
    await h.deliver("synchronize", 63)
    await h.settle()
    pushed = now(h)
    state, body = our_comment(h, 63)
    assert (state, f"/commit/{sha})" in body) == ("deploying", True)
    assert expires_line(pushed + WEEK) in body
    await healthy(h, 63)

    # Into its warning day, then `/preview` from a maintainer: a new week, the warning gone,
    # and nothing deployed again (the head did not change).
    h.advance(6 * DAY + HOUR)
    await h.resync()
    assert expires_line(pushed + WEEK, warn=True) in our_comment(h, 63)[1]
    before = await world(h, 63)
    h.fake.reset_counts()
    await h.command(63, "/preview")
    state, body = our_comment(h, 63)
    assert state == "ready"
    assert expires_line(now(h) + WEEK) in body
    assert "⚠️" not in body
    assert await world(h, 63) == replace_comments(before, 63, 2)  # + the command itself
    # Written: the two reactions on the command (seen, done) and the comment, nothing else.
    (cmd,) = [c for c in h.comments(63) if not c.via_app]
    assert [r.content for r in cmd.reactions] == ["eyes", "+1"]
    comments = f"/repos/{OWNER}/{NAME}/issues/comments"
    assert sorted(writes(h)) == [
        ("PATCH", f"{comments}/{comment_id(h, 63)}"),
        ("POST", f"{comments}/{cmd.id}/reactions"),
        ("POST", f"{comments}/{cmd.id}/reactions"),
    ]

    # The old deadline passes: nothing happens.
    h.advance(2 * HOUR)
    h.fake.reset_counts()
    report = await h.resync()
    assert report.queued == 0
    assert writes(h) == []
    assert await h.app(63) is not None


def replace_comments(w: World, number: int, count: int) -> World:
    return World(w.commits, w.labels, w.apps, w.deployments, {**w.comments, number: count})


# ---- the cap and its queue -------------------------------------------------------------------


def queued_line(position: int, in_use: int, limit: int) -> str:
    return f"🕒 Queued: position {position}, {in_use} of {limit} previews in use."


async def test_the_cap_queues_by_label_time_and_the_queue_moves_on_teardown_and_restart(
    timed_harness: Harness,
) -> None:
    h = timed_harness
    await h.restart(max_previews=2)
    # Labeled in this order, a minute apart: 21, 22 run; 30 then 24 wait (label time, not
    # PR number, decides).
    for n in (21, 22, 30, 24):
        await label(h, n)
        h.advance(60)
    assert [await h.app(n) is not None for n in (21, 22, 30, 24)] == [True, True, False, False]
    assert our_comment(h, 30)[0] == our_comment(h, 24)[0] == "queued"
    assert queued_line(1, 2, 2) in our_comment(h, 30)[1]
    assert queued_line(2, 2, 2) in our_comment(h, 24)[1]
    assert (h.overlay(30), h.overlay(24), h.deployments(30), h.deployments(24)) == (
        None,
        None,
        [],
        [],
    )

    # 21 closes: once Argo CD has pruned it, the next resync deploys 30 and moves 24 up.
    # 30 and 24 sync side by side there, so 24 may count the slot 30 is taking as free
    # ("position 2, 1 of 2"): the resync after settles it.
    h.fake.close(OWNER, NAME, 21)
    await h.deliver("closed", 21)
    await h.settle()
    await gone(h, 21)
    await h.resync()
    await h.resync()
    assert our_comment(h, 21)[0] == "destroyed"
    assert await h.app(30) is not None
    assert our_comment(h, 30)[0] == "deploying"
    assert queued_line(1, 2, 2) in our_comment(h, 24)[1]
    assert await h.app(24) is None

    # Another PR joins the queue behind 24.
    await label(h, 26)
    assert queued_line(2, 2, 2) in our_comment(h, 26)[1]

    # A restart: the fresh bot remembers nothing; the queue it derives from GitHub and the
    # cluster is the same one, so its first resync writes nothing.
    before = await world(h, 22, 30, 24, 26)
    await h.restart()
    h.fake.reset_counts()
    await h.resync()
    assert writes(h) == []
    assert await world(h, 22, 30, 24, 26) == before

    # While the bot is down 22 is closed and the delivery is lost: the next bot's resync
    # tears it down, then 24 deploys and 26 moves up.
    await h.stop()
    h.fake.close(OWNER, NAME, 22)
    await h.start()
    await h.resync()
    await gone(h, 22)
    await h.resync()
    await h.resync()
    assert our_comment(h, 22)[0] == "destroyed"
    assert await h.app(24) is not None
    assert our_comment(h, 24)[0] == "deploying"
    assert queued_line(1, 2, 2) in our_comment(h, 26)[1]
    for n in (22, 30, 24, 26):
        assert len(h.comments(n)) == 1
