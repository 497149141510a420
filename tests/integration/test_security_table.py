"""The security table: every bad input and hostile act of issue 11, tried against the running bot.

One bot on the rig (real intake over ASGI, the GitHub fake over HTTP, the test API server with
the Argo CD stand-in) takes each row in turn. Around each row the world is photographed: the
commits of every repository, the Applications (their metadata and spec), every comment,
every deployment, the delivery metric's series and the intake's buffered bytes. A row passes
when the bot refused what it was asked AND nothing changed but what the row allows (only ever
the bot's own comment on the row's own PR, saying why). The run ends with one line,
`N tried, N refused, 0 changed`; a failing row names itself.

The memory rows (slow hostile uploads against a real `preview-bot serve` process) live in
tests/integration/test_serve_limits.py: RSS must be measured on a process of its own.

Scope of the bot under test: every repository of `data-literate` (so names carry `{repo}`),
which lets the table try a repository whose name makes invalid Kubernetes names and a
same-named repository of another owner that collides on `dex-pr-N`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio

from bot.app import create_app
from bot.comment import COMMENT_MARKER, escape
from bot.kube import APPLICATIONS
from bot.model import A_INSTALLATION, A_PR, A_REPO, MANAGED_BY
from bot.webhooks import GITHUB_EVENTS, OTHER_EVENT, UNVERIFIED, Outcome, delivery_headers
from tests.rig.github.server import FakeGitHub
from tests.rig.harness import NAME, OWNER, SECRET, Harness, running_harness, skeleton_files
from tests.rig.kube import KubeRig

pytestmark = pytest.mark.rig

MAX_BODY = 256 * 1024  # GitHub's PR payloads are tens of KB; a small cap keeps the rows cheap
EVIL = "https://evil.example/steal"
HOSTILE_TEXT = f"oops | broken ](x) [click]({EVIL}) <b>hi</b> @admin"
CLOSED_LABELS = {
    "event": GITHUB_EVENTS | {OTHER_EVENT, UNVERIFIED},
    "outcome": {o.value for o in Outcome},
}
SERIES = re.compile(r"^(preview_bot_\w+)\{([^}]*)\}", re.M)
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@pytest_asyncio.fixture(loop_scope="session")
async def bot(github: FakeGitHub, kube: KubeRig, argocd_ns: str) -> AsyncIterator[Harness]:
    async with running_harness(
        github,
        kube,
        argocd_ns,
        repositories=(f"{OWNER}/*",),
        app_name_template="{repo}-pr-{number}",
        namespace_template="{repo}-pr-{number}",
        max_body_bytes=MAX_BODY,
    ) as h:
        yield h


# ---- the photograph --------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """What a hostile act could change, as seen from outside the bot."""

    commits: dict[str, tuple[str, ...]]  # repository -> its main branch, newest first
    apps: dict[str, str]  # Application name -> its metadata (no status) and spec, as JSON
    comments: dict[int, tuple[str, int, str, bool, str]]  # id -> (repo, PR, author, App?, body)
    deployments: dict[int, str]  # id -> its latest state
    series: frozenset[tuple[str, tuple[tuple[str, str], ...]]]  # /metrics series
    metrics_text: str
    buffered: int  # body bytes the intake holds
    in_flight: int


async def photograph(h: Harness) -> World:
    fake = h.fake
    repos = [r for r in fake.repos.values() if r.git is not None]
    commits = {
        r.full_name: tuple(c["sha"] for c in fake.log(r.owner.login, r.name, r.default_branch))
        for r in repos
    }
    comments = {
        c.id: (r.full_name, c.number, c.user.login, c.via_app and c.user is fake.bot, c.body)
        for r in fake.repos.values()
        for c in r.comments.values()
    }
    deployments = {d.id: str(d.latest_state) for r in repos for d in r.deployments.values()}
    listed = await h.argocd.api.list(APPLICATIONS.path(h.settings.argocd_namespace))
    apps = {}
    for app in listed["items"]:
        meta = {k: v for k, v in app["metadata"].items() if k in KEPT_METADATA}
        apps[app["metadata"]["name"]] = json.dumps([meta, app["spec"]], sort_keys=True)
    text = (await h.http.get("/metrics")).text
    series = frozenset(
        (m.group(1), tuple(sorted(LABEL.findall(m.group(2))))) for m in SERIES.finditer(text)
    )
    intake = h.bot.intake
    return World(
        commits, apps, comments, deployments, series, text, intake.buffered, intake.in_flight
    )


# What the bot (or anyone) would change on an Application; resourceVersion, managedFields and
# status move whenever the Argo CD stand-in writes a status, which is not the bot's doing.
KEPT_METADATA = {"name", "labels", "annotations", "finalizers", "deletionTimestamp"}


@dataclass
class Row:
    """One bad input or hostile act, and what the bot may do about it."""

    name: str
    act: Callable[[Harness], Awaitable[None]]  # does it, and asserts the refusal
    # The attacker's preparations, made before the world is photographed (a planted object).
    setup: Callable[[Harness], Awaitable[None]] | None = None
    comment_on: tuple[str, int] | None = None  # the one PR where the bot may comment
    taints: tuple[str, ...] = ()  # strings of the request that must never reach /metrics
    apps_may_change: tuple[str, ...] = ()  # Applications the stand-in (Argo CD) writes to
    deployments_may_change: bool = False  # the bot reports Argo CD's verdict on a deployment
    commenter: str | None = None  # whose new comment is the row's own act (a command)
    problems: list[str] = field(default_factory=list)


def changes(before: World, after: World, row: Row) -> list[str]:
    """What changed that the row does not allow, one sentence each."""
    out = [
        f"a commit on {repo}"
        for repo, log in after.commits.items()
        if before.commits.get(repo, ()) != log
    ]
    out += _app_changes(before, after, row)
    if before.deployments != after.deployments and not row.deployments_may_change:
        out.append("a deployment created or changed")
    out += _comment_changes(before, after, row)
    for metric, labels in after.series - before.series:
        bad = [(k, v) for k, v in labels if k in CLOSED_LABELS and v not in CLOSED_LABELS[k]]
        if bad:
            out.append(f"a new metric series {metric}{dict(labels)}")
    out += [f"{t!r} on /metrics" for t in row.taints if t in after.metrics_text]
    if after.buffered or after.in_flight:
        out.append(f"intake still holds {after.buffered} bytes, {after.in_flight} requests")
    return out


def _app_changes(before: World, after: World, row: Row) -> list[str]:
    out = []
    for name in sorted((set(before.apps) | set(after.apps)) - set(row.apps_may_change)):
        if name not in before.apps:
            out.append(f"Application {name} created")
        elif name not in after.apps:
            out.append(f"Application {name} deleted")
        elif before.apps[name] != after.apps[name]:
            out.append(f"Application {name} changed")
    return out


def _comment_changes(before: World, after: World, row: Row) -> list[str]:
    out = []
    for cid, (repo, number, author, ours, body) in after.comments.items():
        old = before.comments.get(cid)
        if old == (repo, number, author, ours, body):
            continue
        if ours and row.comment_on == (repo, number):
            continue
        if old is None and author == row.commenter:
            continue  # the row's own act: the command it gives
        what = "written" if old is None else "edited: " + _first_difference(old[4], body)
        out.append(f"comment {cid} by {author} on {repo}#{number} {what}")
    if set(before.comments) - set(after.comments):
        out.append("a comment deleted")
    return out


def _first_difference(before: str, after: str) -> str:
    pairs = zip(before.splitlines(), after.splitlines(), strict=False)
    return next((f"{a!r} -> {b!r}" for a, b in pairs if a != b), "lines added or removed")


# ---- helpers ---------------------------------------------------------------------------------


def signed(body: bytes, event: str = "pull_request", delivery: str | None = None) -> dict[str, str]:
    return delivery_headers(SECRET, event, body, delivery)


def pr_body(h: Harness, number: int, owner: str = OWNER, name: str = NAME) -> bytes:
    payload = h.fake.event_payload("pull_request", "opened", owner, name, number)
    return json.dumps(payload).encode()


async def post(h: Harness, body: bytes, headers: dict[str, Any]) -> tuple[int, str]:
    resp = await h.http.post("/webhook", content=body, headers=headers)
    await h.settle()
    outcome = resp.json().get("outcome", "") if resp.content else ""
    return resp.status_code, outcome


def expect(got: tuple[int, str], status: int, outcome: Outcome) -> None:
    assert got == (status, outcome.value), f"answered {got}, expected {status} {outcome.value}"


def bot_comment(h: Harness, number: int, owner: str = OWNER, name: str = NAME) -> str:
    """The body of the bot's one comment on the PR."""
    ours = [c for c in h.fake.comments(owner, name, number) if c.via_app]
    assert len(ours) == 1, f"{len(ours)} comments by the bot"
    return ours[0].body


async def labeled(
    h: Harness, number: int, by: str, owner: str = OWNER, name: str = NAME
) -> tuple[int, str]:
    h.fake.add_label(owner, name, number, "preview", by=by)
    payload = h.fake.event_payload("pull_request", "labeled", owner, name, number)
    body = json.dumps(payload).encode()
    return await post(h, body, signed(body))


# ---- the intake: refused before anything is read or queued ---------------------------------


async def unsigned(h: Harness) -> None:
    body = pr_body(h, 10)
    headers = signed(body)
    del headers["X-Hub-Signature-256"], headers["X-Hub-Signature"]
    expect(await post(h, body, headers), 401, Outcome.REJECTED)


async def tampered(h: Harness) -> None:
    body = pr_body(h, 10)
    headers = signed(body)
    expect(await post(h, body.replace(b'"opened"', b'"closed"'), headers), 401, Outcome.REJECTED)


async def sha1_only(h: Harness) -> None:
    body = pr_body(h, 10)
    headers = signed(body)
    del headers["X-Hub-Signature-256"]  # a valid sha1 signature stays
    expect(await post(h, body, headers), 401, Outcome.REJECTED)


def with_signature(value: bytes) -> Callable[[Harness], Awaitable[None]]:
    async def act(h: Harness) -> None:
        body = pr_body(h, 10)
        headers: dict[str, Any] = signed(body)
        headers["X-Hub-Signature-256"] = value
        expect(await post(h, body, headers), 401, Outcome.REJECTED)

    return act


def _digest(body: bytes) -> str:
    return hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


async def missing_prefix(h: Harness) -> None:
    body = pr_body(h, 10)
    headers = signed(body)
    headers["X-Hub-Signature-256"] = _digest(body)  # the right digest, without `sha256=`
    expect(await post(h, body, headers), 401, Outcome.REJECTED)


REPLAYED = "replayed-delivery-1"


async def replayed_setup(h: Harness) -> None:
    """PR 19's `opened` delivery, taken once while it had no label."""
    h.fake.create_pull(OWNER, NAME, 19)
    body = pr_body(h, 19)
    first = await post(h, body, signed(body, delivery=REPLAYED))
    assert first[0] == 202, first


async def replayed(h: Harness) -> None:
    """A writer labels PR 19 meanwhile, so a replay taken as new would deploy it."""
    h.fake.add_label(OWNER, NAME, 19, "preview", by="octocat")
    body = pr_body(h, 19)
    expect(await post(h, body, signed(body, delivery=REPLAYED)), 202, Outcome.DUPLICATE)


async def oversized_declared(h: Harness) -> None:
    body = b'{"pad": "' + b" " * MAX_BODY + b'"}'
    expect(await post(h, body, signed(body)), 413, Outcome.REJECTED)


async def oversized_streamed(h: Harness) -> None:
    body = b'{"pad": "' + b" " * MAX_BODY + b'"}'

    async def chunks() -> AsyncIterator[bytes]:  # chunked: no Content-Length to refuse early
        for i in range(0, len(body), 16 * 1024):
            yield body[i : i + 16 * 1024]

    resp = await h.http.post("/webhook", content=chunks(), headers=signed(body))
    assert "content-length" not in resp.request.headers
    expect((resp.status_code, resp.json()["outcome"]), 413, Outcome.REJECTED)


async def malformed(h: Harness) -> None:
    body = b'{"action": "opened", "number": 10, "pull_request": {'
    expect(await post(h, body, signed(body)), 400, Outcome.REJECTED)


async def wrong_type(h: Harness) -> None:
    body = b"payload=" + pr_body(h, 10)
    headers = signed(body)
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    expect(await post(h, body, headers), 415, Outcome.REJECTED)


UNKNOWN_EVENT = "x_evil_event_4f1d"


async def unknown_event(h: Harness) -> None:
    body = pr_body(h, 10)
    expect(await post(h, body, signed(body, UNKNOWN_EVENT)), 202, Outcome.IGNORED)
    assert 'event="other"' in (await h.http.get("/metrics")).text


async def out_of_scope_setup(h: Harness) -> None:
    h.fake.create_repo("acme", "dex", files=skeleton_files())
    h.fake.set_permission("acme", "dex", "octocat", "write")
    h.fake.create_pull("acme", "dex", 1)


async def out_of_scope(h: Harness) -> None:
    """A writer labels a PR of a repository the App is installed on but the scope leaves out."""
    expect(await labeled(h, 1, "octocat", "acme", "dex"), 202, Outcome.OUT_OF_SCOPE)


async def disconnect_mid_body(h: Harness) -> None:
    """A client that goes away halfway through its body (called on the ASGI app directly: an
    HTTP client cannot be made to vanish mid-request in-process)."""
    body = pr_body(h, 10)
    headers = [(k.lower().encode(), v.encode()) for k, v in signed(body).items()]
    headers.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/webhook",
        "raw_path": b"/webhook",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("bot", 80),
    }
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": body[: len(body) // 2], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(dict(message))

    await create_app(h.bot.intake)(scope, receive, send)
    await h.settle()
    (start,) = [m for m in sent if m["type"] == "http.response.start"]
    assert start["status"] == 400, start
    assert b"disconnected" in b"".join(m.get("body", b"") for m in sent)


# ---- the bot: hostile acts by people and other bots ----------------------------------------


async def fork_pr(h: Harness) -> None:
    h.fake.create_pull(OWNER, NAME, 11, fork=True, user="forker")
    await labeled(h, 11, "forker")
    assert "comes from a fork" in bot_comment(h, 11)
    assert "/preview approve" in bot_comment(h, 11)


PLANTED_RECORD = {"approver": "octocat", "comment_state": "ready"}


async def planted_comment_setup(h: Harness) -> None:
    """Mallory's comment wears the bot's markers and claims a writer approved."""
    pr = h.fake.create_pull(OWNER, NAME, 12, user="mallory")
    record = {**PLANTED_RECORD, "approved_sha": pr.head_sha}
    hidden = {"state": "ready", "fingerprint": "0" * 16, "record": record}
    planted = (
        f"{COMMENT_MARKER}\n<!-- preview-bot:state {json.dumps(hidden)} -->\n"
        f"### Preview ready -> {EVIL}\n"
    )
    h.fake.add_comment(OWNER, NAME, 12, planted, user="mallory")


async def planted_comment(h: Harness) -> None:
    """Mallory labels her PR: had the bot taken her comment for its own it would read the
    approval in it and deploy, or edit her comment."""
    await labeled(h, 12, "mallory")
    (mine,) = [c for c in h.comments(12) if c.user.login == "mallory"]
    assert mine.previous_body is None, "the planted comment was edited"
    assert "cannot write to this repository" in bot_comment(h, 12)


async def triage_label(h: Harness) -> None:
    h.fake.set_permission(OWNER, NAME, "trina", "triage")
    h.fake.create_pull(OWNER, NAME, 13)
    await labeled(h, 13, "trina")
    assert "added by `@trina`, who cannot write" in bot_comment(h, 13)


async def reader_command(h: Harness) -> None:
    h.fake.set_permission(OWNER, NAME, "rita", "read")
    h.fake.create_pull(OWNER, NAME, 14)
    await h.command(14, "/preview", user="rita")
    assert "commands need write access" in bot_comment(h, 14)


async def bot_command(h: Harness) -> None:
    other = "helper-bot[bot]"
    h.fake.user(other, "Bot")
    h.fake.set_permission(OWNER, NAME, other, "write")  # even a bot that may write
    h.fake.create_pull(OWNER, NAME, 15)
    payload = h.fake.event_payload(
        "issue_comment", "created", OWNER, NAME, 15, body="/preview", user=other
    )
    body = json.dumps(payload).encode()
    expect(await post(h, body, signed(body, "issue_comment")), 202, Outcome.IGNORED)


async def invalid_names_setup(h: Harness) -> None:
    h.fake.create_repo(OWNER, "_dex", files=skeleton_files())
    h.fake.set_permission(OWNER, "_dex", "octocat", "write")
    h.fake.create_pull(OWNER, "_dex", 16)


async def invalid_names(h: Harness) -> None:
    """`_dex` is a valid GitHub name; `{repo}-pr-N` makes it `-dex-pr-N`, which is not."""
    await labeled(h, 16, "octocat", OWNER, "_dex")
    text = bot_comment(h, 16, OWNER, "_dex")
    assert "Kubernetes would refuse its names" in text
    assert "-dex-pr-16" in text and "DNS-1123" in text


def foreign_app(name: str, repo: str, number: int, installation: int, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {MANAGED_BY: "preview-bot"},
            "annotations": {A_REPO: repo, A_PR: str(number), A_INSTALLATION: str(installation)},
        },
        "spec": {
            "project": "default",
            "source": {"repoURL": "https://example.com/x.git", "path": "x", "targetRevision": "m"},
            "destination": {"server": "https://kubernetes.default.svc", "namespace": "elsewhere"},
        },
    }


async def collision_setup(h: Harness) -> None:
    """`acme-private/dex` (another owner's private repository, same name) already has
    `dex-pr-17`."""
    ns = h.settings.argocd_namespace
    inst = h.fake.installation_for(OWNER).id
    await h.argocd.api.create(
        APPLICATIONS.path(ns), foreign_app("dex-pr-17", "acme-private/dex", 17, inst, ns)
    )


async def collision(h: Harness) -> None:
    """DEX's PR 17 wants `dex-pr-17`: it must leave it alone and never say whose it is."""
    h.fake.create_pull(OWNER, NAME, 17)
    await labeled(h, 17, "octocat")
    text = bot_comment(h, 17)
    assert "belongs to another repository" in text
    assert "acme" not in text.lower()


async def foreign_application_setup(h: Harness) -> None:
    """An Application that wears the bot's label for a repository out of scope, whose PR is
    closed: trusting it would mean deleting it."""
    # The resync would rightly deploy the labeled PRs the intake rows aimed at: unlabel them.
    for number in (10, 19):
        h.fake.remove_label(OWNER, NAME, number, "preview")
    h.fake.create_repo("acme-private", "secret", files=skeleton_files(), private=True)
    h.fake.create_pull("acme-private", "secret", 3)
    h.fake.close("acme-private", "secret", 3)
    inst = h.fake.installation_for("acme-private", "secret").id
    ns = h.settings.argocd_namespace
    await h.argocd.api.create(
        APPLICATIONS.path(ns), foreign_app("secret-pr-3", "acme-private/secret", 3, inst, ns)
    )
    await h.settle()


async def foreign_application(h: Harness) -> None:
    """The watch sees the foreign Application change; the resync lists it."""
    h.fake.reset_counts()
    await h.standin.set_status("secret-pr-3", sync="Synced", health="Healthy", revision="a" * 40)
    await h.settle()
    await h.bot.resync_once()
    await h.settle()
    assert await h.standin.find("secret-pr-3") is not None
    touched = [r.path for r in h.fake.requests if "acme-private" in r.path]
    assert not touched, touched


# Git refuses `:` and `[` in a ref name; `|`, `]`, `(` and `@` pass.
ESCAPE_BRANCH = "evil|x](evil.example/b)@admin"


async def escaped_text(h: Harness) -> None:
    """Argo CD's message and the branch name are outside text: in the comment they cannot
    close the table, make a link or @mention anyone."""
    ns_app = "dex-pr-18"
    await h.standin.set_status(
        ns_app,
        sync="OutOfSync",
        health="Degraded",
        operation_phase="Failed",
        message=HOSTILE_TEXT,
        revision=(await h.standin.get(ns_app))["spec"]["source"]["targetRevision"],
    )
    await h.settle()
    text = bot_comment(h, 18)
    assert escape(HOSTILE_TEXT) in text
    for raw in ("@admin", f"]({EVIL})", " | broken", "<b>", "](evil.example/b)"):
        assert raw not in text, f"{raw!r} came out unescaped"


async def escaped_text_setup(h: Harness) -> None:
    """PR 18 from a hostile-looking branch, deployed by a writer (not part of the row)."""
    h.fake.create_pull(OWNER, NAME, 18, head_branch=ESCAPE_BRANCH)
    await labeled(h, 18, "octocat")
    assert await h.app(18) is not None


def table(h: Harness) -> list[Row]:
    dex = (f"{OWNER}/{NAME}",)
    return [
        Row("unsigned request", unsigned),
        Row("tampered body", tampered),
        Row("sha1-only signature", sha1_only),
        Row("non-ASCII signature", with_signature(b"sha256=" + "é".encode() * 32)),
        Row("odd-length signature", with_signature(b"sha256=" + b"a" * 63)),
        Row("signature without sha256= prefix", missing_prefix),
        Row("replayed delivery id", replayed, setup=replayed_setup),
        Row("oversized body (Content-Length)", oversized_declared),
        Row("oversized body (chunked)", oversized_streamed),
        Row("malformed JSON", malformed),
        Row("wrong content type", wrong_type),
        Row("unknown X-GitHub-Event", unknown_event, taints=(UNKNOWN_EVENT,)),
        Row("repository out of scope", out_of_scope, setup=out_of_scope_setup),
        Row("client disconnecting mid-body", disconnect_mid_body),
        Row("fork PR", fork_pr, comment_on=(*dex, 11)),
        Row(
            "planted comment with the bot's markers",
            planted_comment,
            setup=planted_comment_setup,
            comment_on=(*dex, 12),
        ),
        Row("label from a triage-only user", triage_label, comment_on=(*dex, 13)),
        Row("command from a reader", reader_command, comment_on=(*dex, 14), commenter="rita"),
        Row("command from another bot", bot_command, commenter="helper-bot[bot]"),
        Row(
            "name Kubernetes refuses",
            invalid_names,
            setup=invalid_names_setup,
            comment_on=(f"{OWNER}/_dex", 16),
        ),
        Row(
            "Application name taken by another repository",
            collision,
            setup=collision_setup,
            comment_on=(*dex, 17),
        ),
        Row(
            "foreign Application out of scope",
            foreign_application,
            setup=foreign_application_setup,
        ),
        Row(
            "markdown, |, link and @mention in outside text",
            escaped_text,
            setup=escaped_text_setup,
            comment_on=(*dex, 18),
            apps_may_change=("dex-pr-18",),
            deployments_may_change=True,
        ),
    ]


async def test_security_table(bot: Harness) -> None:
    h = bot
    # The intake rows aim at PR 10, labeled by a writer: any delivery let through deploys it.
    h.fake.create_pull(OWNER, NAME, 10)
    h.fake.add_label(OWNER, NAME, 10, "preview", by="octocat")
    rows = table(h)
    failed: list[str] = []
    for row in rows:
        if row.setup is not None:
            await row.setup(h)
        before = await photograph(h)
        try:
            await row.act(h)
        except AssertionError as exc:
            row.problems.append(f"not refused: {exc}")
        after = await photograph(h)
        row.problems += changes(before, after, row)
        if row.problems:
            failed.append(f"{row.name}: " + "; ".join(row.problems))
    refused = sum(1 for r in rows if not any(p.startswith("not refused") for p in r.problems))
    changed = sum(1 for r in rows if any(not p.startswith("not refused") for p in r.problems))
    print(f"\nsecurity table: {len(rows)} tried, {refused} refused, {changed} changed")
    assert not failed, "\n".join(failed)
