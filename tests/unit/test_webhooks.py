"""bot.webhooks, pure: signatures, decoding, `/preview` command lines and classification."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from bot.model import MAX_COMMANDS, Command, Work, WorkKey
from bot.webhooks import (
    GITHUB_EVENTS,
    MAX_WORDS,
    BadDelivery,
    Classified,
    ResyncRequest,
    Rules,
    ShaHint,
    classify,
    decode,
    from_dict,
    metric_event,
    parse_commands,
    sign,
    signature_digest,
    verify_signature,
)
from tests.rig.artifacts import (
    official_example,
    validate_webhook,
    webhook_errors,
    webhook_examples,
    webhook_schema,
)

SECRET = "s3cret"
BODY = b'{"zen": "x"}'
SHA = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
RULES = Rules(
    trigger_label="preview",
    keep_label="preview:keep",
    exclude_labels=frozenset({"no-preview", "wip"}),
    required_checks=frozenset({"build", "ci/lint"}),
)


# ---- signatures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "valid"),
    [
        (sign(SECRET, BODY), True),
        (sign(SECRET, BODY).upper().replace("SHA256=", "sha256="), True),  # hex in any case
        (None, False),
        ("", False),
        (sign("other", BODY), False),
        (sign(SECRET, BODY)[len("sha256=") :], False),  # missing prefix
        ("sha1=" + sign(SECRET, BODY)[len("sha256=") :], False),  # another algorithm
        ("sha512=" + "0" * 128, False),
        ("SHA256=" + sign(SECRET, BODY)[len("sha256=") :], False),
        (sign(SECRET, BODY)[:-1], False),  # odd length
        (sign(SECRET, BODY) + "0", False),
        (sign(SECRET, BODY)[:-2], False),
        (sign(SECRET, BODY)[:-1] + "g", False),  # not hex
        (sign(SECRET, BODY)[:-1] + "\xe9", False),  # non-ASCII (latin-1 header bytes)
        ("sha256=" + "\u0663" * 64, False),  # Arabic-Indic digits: str.isdigit, not hex
        ("sha256=" + " " * 64, False),
        ("sha256=" + "ab " * 21 + "a", False),  # fromhex skips spaces: still refused
        ("sha256=" + "\x00" * 64, False),
        ("sha256=", False),
        ("=" * 71, False),
    ],
)
def test_signature_check_never_raises(header: str | None, valid: bool) -> None:
    assert verify_signature(SECRET, BODY, header) is valid
    assert verify_signature(SECRET.encode(), BODY, header) is valid
    if not valid and header != sign("other", BODY):
        assert signature_digest(header) is None


# ---- the closed set of event names -----------------------------------------------------------


def test_known_events_are_exactly_the_documented_ones() -> None:
    documented = {name.split("$")[0] for name in webhook_schema()["definitions"] if "$" in name}
    assert documented == GITHUB_EVENTS


@pytest.mark.parametrize(
    ("event", "label"),
    [("pull_request", "pull_request"), ("push", "push"), ("x" * 300, "other"), ("", "other")],
)
def test_metric_event_is_a_known_name_or_other(event: str, label: str) -> None:
    assert metric_event(event) == label


# ---- decoding ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"hunter2', "body is not valid JSON"),
        (b"", "body is not valid JSON"),
        (b'{"action": "opened"} hunter2', "body is not valid JSON"),
        (b'{"action": "\xff hunter2"}', "body is not valid JSON"),  # not UTF-8
        # Deeper than Python's recursion limit, inside a field classify never reads.
        (b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "body is not valid JSON"),
        (b'["hunter2"]', "payload does not have GitHub's shape: Expected `object`, got `array`"),
        (b'{"number": "hunter2"}', "at `$.number`"),
        (b'{"number": true}', "at `$.number`"),
        (b'{"number": 1.5}', "at `$.number`"),
        (b'{"repository": {"full_name": ["hunter2"]}}', "at `$.repository.full_name`"),
        (b'{"installation": ["hunter2"]}', "at `$.installation`"),
    ],
)
def test_malformed_bodies_are_bad_deliveries_with_safe_messages(body: bytes, message: str) -> None:
    with pytest.raises(BadDelivery) as caught:
        decode("pull_request", body)
    assert message in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_unhandled_events_are_not_parsed_at_all() -> None:
    assert decode("push", b"not json at all") is None
    assert decode("ping", b"{") is None


def test_decoding_keeps_only_what_classify_reads() -> None:
    body = json.dumps(official_example("pull_request", "labeled")).encode()
    payload = decode("pull_request", body)
    assert payload is not None
    assert payload.repository is not None
    assert payload.repository.full_name == "Codertocat/Hello-World"
    assert not hasattr(payload, "pull_request_review")
    # Nulls where a field could hold an object are taken as absent, not refused.
    nulls = decode("pull_request", b'{"action": null, "label": null, "sender": null}')
    assert nulls is not None and nulls.action is None


# ---- command lines -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "commands"),
    [
        ("/preview", ((),)),
        ("/preview approve", (("approve",),)),
        ("/Preview Keep", (("keep",),)),
        ("/preview   Approve  NOW  ", (("approve", "now"),)),
        ("/preview\tkeep", (("keep",),)),
        ("   /preview keep", (("keep",),)),  # up to 3 leading spaces
        ("    /preview keep", ()),  # 4: an indented code block
        ("\t/preview keep", ()),  # a tab: an indented code block
        ("/previews", ()),
        ("/preview-me", ()),
        ("please /preview", ()),
        ("- /preview", ()),
        ("`/preview`", ()),
        ("thanks!\n/preview keep", (("keep",),)),  # GitHub shows it on its own line
        ("/preview a\r\n/preview b\r/preview c", (("a",), ("b",), ("c",))),
        ("> /preview", ()),
        ("   > /preview", ()),
        (">/preview", ()),
        ("> quoted\n/preview", ()),  # a lazy continuation of the quote
        ("> quoted\n\n/preview", ((),)),
        ("> a\n> b\n\n/preview x\n> /preview y", (("x",),)),
        ("```\n/preview\n```\n/preview keep", (("keep",),)),
        ("~~~\n/preview\n~~~", ()),
        ("```sh\n/preview\n```", ()),
        ("   ```\n/preview\n   ```\n/preview z", (("z",),)),
        ("````\n```\n/preview\n````\n/preview z", (("z",),)),  # a shorter run closes nothing
        ("```\n/preview\n``` not a close\n/preview\n```\n/preview z", (("z",),)),
        ("~~~\n```\n/preview\n~~~\n/preview z", (("z",),)),  # ``` does not close ~~~
        ("```\n/preview", ()),  # an unclosed fence runs to the end
        ("``` a`b\n/preview", ((),)),  # a backtick in the info string: no fence
        ("    ```\n/preview", ((),)),  # an indented fence is code, not a fence
        ("/preview " + " ".join(f"w{i}" for i in range(20)), (tuple(f"w{i}" for i in range(8)),)),
        ("\n".join(["/preview"] * (MAX_COMMANDS + 5)), ((),) * MAX_COMMANDS),
        ("", ()),
        ("no command here", ()),
    ],
)
def test_command_lines(body: str, commands: tuple[tuple[str, ...], ...]) -> None:
    assert parse_commands(body) == commands
    assert all(len(words) <= MAX_WORDS for words in commands)


# ---- classification ------------------------------------------------------------------------

REPO = {"full_name": "o/r"}
INSTALLATION = {"id": 7}
USER = {"login": "alice", "type": "User"}


def pr(action: str, **extra: Any) -> dict[str, Any]:
    return {
        "action": action,
        "number": 5,
        "repository": REPO,
        "installation": INSTALLATION,
        "sender": USER,
        **extra,
    }


def comment(body: str, action: str = "created", **changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "action": action,
        "issue": {"number": 5, "pull_request": {"url": "x"}},
        "comment": {"id": 99, "body": body, "user": USER},
        "repository": REPO,
        "installation": INSTALLATION,
    }
    payload.update(changes)
    return payload


def check(event: str, action: str, numbers: list[int], name: str = "build") -> dict[str, Any]:
    head = {"head_sha": SHA, "name": name, "pull_requests": [{"number": n} for n in numbers]}
    return {"action": action, event: head, "repository": REPO, "installation": INSTALLATION}


def status(state: str = "success", context: str = "build", **changes: Any) -> dict[str, Any]:
    payload = {"sha": SHA, "state": state, "context": context, "repository": REPO}
    payload.update({"installation": INSTALLATION, **changes})
    return payload


def work(number: int = 5, actor: str | None = None, commands: tuple[Command, ...] = ()) -> Work:
    return Work(WorkKey("o/r", number), 7, "d-1", actor, commands)


def run(event: str, payload: dict[str, Any], rules: Rules = RULES) -> Classified:
    return classify(event, from_dict(event, payload), rules, "d-1")


@pytest.mark.parametrize(
    ("event", "payload", "works"),
    [
        ("pull_request", pr("opened"), (work(),)),
        ("pull_request", pr("synchronize"), (work(),)),
        ("pull_request", pr("closed"), (work(),)),
        ("pull_request", pr("reopened"), (work(),)),
        ("pull_request", pr("edited"), (work(),)),
        ("pull_request", pr("ready_for_review"), (work(),)),
        ("pull_request", pr("converted_to_draft"), (work(),)),
        # The trigger label: who added it rides along (the fork approval reads it).
        ("pull_request", pr("labeled", label={"name": "preview"}), (work(actor="alice"),)),
        ("pull_request", pr("unlabeled", label={"name": "preview"}), (work(),)),
        ("pull_request", pr("labeled", label={"name": "no-preview"}), (work(),)),
        ("pull_request", pr("unlabeled", label={"name": "wip"}), (work(),)),
        ("pull_request", pr("labeled", label={"name": "preview:keep"}), (work(),)),
        # The number from pull_request when the top-level one is missing.
        (
            "pull_request",
            {**pr("opened"), "number": None, "pull_request": {"number": 6}},
            (work(6),),
        ),
        (
            "issue_comment",
            comment("/preview approve\n/preview"),
            (work(commands=(Command(99, "alice", ("approve",)), Command(99, "alice", ()))),),
        ),
        ("check_run", check("check_run", "completed", [5]), (work(),)),
        ("check_run", check("check_run", "completed", [5, 6, 5]), (work(), work(6))),
        ("check_suite", check("check_suite", "completed", [5], name=""), (work(),)),
    ],
)
def test_deliveries_that_queue_work(
    event: str, payload: dict[str, Any], works: tuple[Work, ...]
) -> None:
    found = run(event, payload)
    assert found.works == works
    assert (found.sha_hint, found.resync) == (None, None)
    assert found.repo == "o/r"
    assert found.number == (works[0].key.number if len(works) == 1 else None)


@pytest.mark.parametrize(
    ("event", "payload", "reason"),
    [
        ("push", {"ref": "refs/heads/main"}, "event push is not handled"),
        ("pull_request", pr("assigned"), "pull_request action assigned is not handled"),
        ("pull_request", pr(""), "pull_request action (none) is not handled"),
        ("pull_request", pr("labeled", label={"name": "bug"}), "a label the bot does not watch"),
        ("pull_request", pr("unlabeled", label={"name": "Preview"}), "does not watch"),
        ("pull_request", pr("labeled"), "does not watch"),  # no label at all
        ("issue_comment", comment("/preview", action="edited"), "only new comments"),
        ("issue_comment", comment("/preview", action="deleted"), "only new comments"),
        (
            "issue_comment",
            comment("/preview", issue={"number": 5}),
            "a comment on an issue, not on a pull request",
        ),
        (
            "issue_comment",
            comment("/preview", issue={"number": 5, "pull_request": None}),
            "not on a pull request",
        ),
        ("issue_comment", comment("nice work"), "no /preview command"),
        ("issue_comment", comment("> /preview approve\n\nno"), "no /preview command"),
        ("issue_comment", comment("```\n/preview\n```"), "no /preview command"),
        (
            "issue_comment",
            comment(
                "/preview", comment={"id": 1, "body": "/preview", "user": {"login": "ci[bot]"}}
            ),
            "a comment by a bot",
        ),
        (
            "issue_comment",
            comment(
                "/preview", comment={"id": 1, "body": "/preview", "user": {**USER, "type": "Bot"}}
            ),
            "a comment by a bot",
        ),
        ("check_run", check("check_run", "created", [5]), "only a completed check matters"),
        ("check_run", check("check_run", "rerequested", [5]), "only a completed check"),
        ("check_run", check("check_run", "requested_action", [5]), "only a completed check"),
        ("check_suite", check("check_suite", "requested", [5]), "only a completed check"),
        ("check_run", check("check_run", "completed", [5], name="lint"), "not a required check"),
        ("status", status(state="pending"), "a pending status cannot make a head ready"),
        ("status", status(context="other"), "not a required status"),
        ("installation", {"action": "new_permissions_accepted"}, "changes no repository"),
        ("installation_repositories", {"action": "x", "installation": {"id": 1}}, "changes no"),
    ],
)
def test_deliveries_that_are_ignored(event: str, payload: dict[str, Any], reason: str) -> None:
    found = run(event, payload)
    assert found.works == ()
    assert (found.sha_hint, found.resync) == (None, None)
    assert reason in found.reason


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("check_run", check("check_run", "completed", [5])),
        ("check_suite", check("check_suite", "completed", [5])),
        ("status", status()),
    ],
)
def test_check_events_matter_only_with_required_checks(event: str, payload: dict[str, Any]) -> None:
    found = run(event, payload, Rules("preview"))
    assert found.works == () and found.sha_hint is None
    assert "no required checks are configured" in found.reason


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("check_run", check("check_run", "completed", [5], name="docker")),
        ("check_suite", check("check_suite", "completed", [5])),
        ("status", status(context="ci/docker")),
    ],
)
def test_with_the_image_gate_any_finished_check_looks_at_heads_waiting_for_the_image(
    event: str, payload: dict[str, Any]
) -> None:
    # CI may have pushed the image: only heads the bot knows wait on this SHA are synced.
    found = run(event, payload, Rules("preview", image_check=True))
    assert found.works == ()
    assert found.sha_hint == ShaHint("o/r", SHA, 7)


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("status", status()),
        ("status", status(state="failure", context="ci/lint")),
        ("status", status(state="error")),
        ("check_run", check("check_run", "completed", [])),  # a fork's PR: none listed
        ("check_suite", check("check_suite", "completed", [])),
        (
            "check_run",
            {
                **check("check_run", "completed", []),
                "check_run": {"head_sha": SHA, "name": "build"},
            },
        ),
    ],
)
def test_a_bare_head_sha_becomes_a_hint(event: str, payload: dict[str, Any]) -> None:
    found = run(event, payload)
    assert found.sha_hint == ShaHint("o/r", SHA, 7)
    assert found.works == () and found.resync is None


@pytest.mark.parametrize(
    ("event", "action"),
    [
        ("installation", "created"),
        ("installation", "deleted"),
        ("installation", "suspend"),
        ("installation", "unsuspend"),
        ("installation_repositories", "added"),
        ("installation_repositories", "removed"),
    ],
)
def test_installation_changes_ask_for_a_resync(event: str, action: str) -> None:
    found = run(event, {"action": action, "installation": {"id": 3}})
    assert found.resync == ResyncRequest(3, f"{event} {action}")
    assert found.works == () and found.sha_hint is None


@pytest.mark.parametrize(
    ("event", "payload", "message"),
    [
        ("pull_request", {**pr("opened"), "installation": None}, "installation.id"),
        ("pull_request", {**pr("opened"), "repository": {"full_name": "nope"}}, "full_name"),
        ("pull_request", {**pr("opened"), "repository": None}, "full_name"),
        ("pull_request", {**pr("opened"), "number": 0}, "lacks a PR number"),
        ("pull_request", {**pr("opened"), "number": None}, "lacks a PR number"),
        ("issue_comment", comment("/preview", comment=None), "comment.id"),
        ("issue_comment", comment("/preview", comment={"id": 1, "body": "/preview"}), "user"),
        ("issue_comment", comment("/preview", issue={"pull_request": {}}), "PR number"),
        (
            "check_run",
            {"action": "completed", "repository": REPO, "installation": {"id": 1}},
            "lacks check_run",
        ),
        (
            "check_run",
            {
                **check("check_run", "completed", []),
                "check_run": {"name": "build", "head_sha": "abc"},
            },
            "40-hex",
        ),
        ("check_run", check("check_run", "completed", [0]), "PR number"),
        ("status", status(sha=None), "40-hex"),
        ("status", status(installation=None), "installation.id"),
        ("installation", {"action": "deleted"}, "installation.id"),
    ],
)
def test_handled_deliveries_lacking_what_their_work_needs(
    event: str, payload: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadDelivery, match=message):
        run(event, payload)


def test_official_examples_classify_as_documented() -> None:
    """GitHub's own payloads, schema-checked, made relevant the way the manifest test does."""
    labeled = official_example("pull_request", "labeled")
    labeled["label"]["name"] = "preview"
    found = run("pull_request", labeled)
    assert found.works == (
        Work(
            WorkKey("Codertocat/Hello-World", 2), labeled["installation"]["id"], "d-1", "Codertocat"
        ),
    )
    on_pr = copy.deepcopy(official_example("issue_comment", "created"))
    on_pr["issue"]["pull_request"] = {
        "url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/1",
        "html_url": "https://github.com/Codertocat/Hello-World/pull/1",
        "diff_url": "https://github.com/Codertocat/Hello-World/pull/1.diff",
        "patch_url": "https://github.com/Codertocat/Hello-World/pull/1.patch",
    }
    on_pr["comment"]["body"] = "Looks good.\n/preview approve"
    on_pr["installation"] = {"id": 5, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uNQ=="}
    validate_webhook("issue_comment", on_pr)
    found = run("issue_comment", on_pr)
    (queued,) = found.works
    assert queued.commands == (Command(on_pr["comment"]["id"], "Codertocat", ("approve",)),)
    run_done = official_example("check_run", "completed")
    run_done["installation"] = {"id": 5, "node_id": "x"}
    assert "not a required check" in run("check_run", run_done).reason
    named = Rules("preview", required_checks=frozenset({run_done["check_run"]["name"]}))
    assert [w.key.number for w in run("check_run", run_done, named).works] == [2]
    suite = valid_example("check_suite", "completed", lambda e: e["check_suite"]["pull_requests"])
    suite["installation"] = {"id": 5, "node_id": "x"}
    assert [w.key.number for w in run("check_suite", suite).works] == [2]
    state = valid_example("status", None)
    state.update(installation={"id": 5, "node_id": "x"}, context="build")
    assert run("status", state).sha_hint == ShaHint(
        state["repository"]["full_name"], state["sha"], 5
    )
    installed = valid_example("installation", "created")
    assert run("installation", installed).resync == ResyncRequest(
        installed["installation"]["id"], "installation created"
    )


def valid_example(
    event: str, action: str | None, where: Callable[[dict[str, Any]], bool] = bool
) -> dict[str, Any]:
    """A copy of the first official example of event/action that fits GitHub's schema (some
    examples are older than the schema) and `where`."""
    for example in webhook_examples()[event]:
        if example.get("action") != action or not where(example):
            continue
        if not webhook_errors(event, example):
            return copy.deepcopy(example)
    raise LookupError(f"no schema-valid example of {event} {action}")
