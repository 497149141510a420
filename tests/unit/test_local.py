"""Local mode's pieces: payload shapes, the file-backed GitHub and cluster, DIR set-up, simulate."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot import __main__ as cli
from bot.comment import Author, read_comment
from bot.config import Settings
from bot.errors import PermanentError
from bot.local.cluster import FileCluster
from bot.local.github import LocalGitHub
from bot.local.layout import DEFAULT_DIR, DEFAULT_REPOSITORY, Layout, LocalConfig, LocalError
from bot.local.payloads import ACTIONS, PullState, SimulatedRepo, build_payload
from bot.local.repo import LocalRepo, skeleton_infra
from bot.local.serve import UNUSED_APP_ID, connect_cluster, local_settings, prepare
from bot.local.simulate import Command, Request, check, moves_head, simulate, transition
from bot.model import DeploymentStatus
from bot.webhooks import verify_signature
from tests.rig.artifacts import validate_webhook, webhook_examples

SETTINGS = Settings(github_app_id=1, github_private_key="unused", github_webhook_secret="s")
SHA_A, SHA_B = "a" * 40, "b" * 40


# ---- payloads ----------------------------------------------------------------------------------


def _pull(**changes: Any) -> PullState:
    base = PullState(
        number=7,
        title="t",
        head_ref="pr-7",
        head_sha=SHA_A,
        base_ref="main",
        base_sha=SHA_B,
        created_at="2026-01-01T00:00:00Z",
        updated_at="2026-01-01T00:00:01Z",
        labels=["preview"],
    )
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def _payload(action: str) -> dict[str, Any]:
    pr = (
        _pull(state="closed", closed_at="2026-01-01T00:00:02Z") if action == "closed" else (_pull())
    )
    return build_payload(action, pr, SimulatedRepo(DEFAULT_REPOSITORY, "main", "preview"), SHA_B)


def _official(action: str) -> dict[str, Any]:
    found = [
        e
        for e in webhook_examples()["pull_request"]
        if e["action"] == action and "installation" in e
    ]
    return found[0]


@pytest.mark.parametrize("action", list(ACTIONS.values()))
def test_every_simulated_payload_fits_githubs_schema(action: str) -> None:
    validate_webhook("pull_request", json.loads(json.dumps(_payload(action))))


@pytest.mark.parametrize("action", list(ACTIONS.values()))
def test_payload_keys_come_in_the_official_examples_order(action: str) -> None:
    ours, official = _payload(action), _official(action)
    assert list(ours) == [k for k in official if k != "organization"]
    assert list(ours["pull_request"]) == list(official["pull_request"])
    assert list(ours["repository"]) == list(official["repository"])
    assert list(ours["sender"]) == list(official["sender"])
    assert list(ours["pull_request"]["head"]) == list(official["pull_request"]["head"])


def test_payload_carries_the_simulated_state() -> None:
    payload = _payload("synchronize")
    pr = payload["pull_request"]
    assert (payload["before"], payload["after"]) == (SHA_B, SHA_A)
    assert pr["head"]["sha"] == SHA_A and pr["head"]["ref"] == "pr-7"
    assert [label["name"] for label in pr["labels"]] == ["preview"]
    assert payload["repository"]["full_name"] == DEFAULT_REPOSITORY
    assert payload["installation"]["id"] == 1
    assert pr["html_url"] == f"https://github.com/{DEFAULT_REPOSITORY}/pull/7"


# ---- the file-backed GitHub --------------------------------------------------------------------


@pytest.fixture
def local_github(tmp_path: Path) -> LocalGitHub:
    layout, config, repo = prepare(tmp_path / "dir")
    return LocalGitHub(layout, repo, config.repository, SETTINGS)


def test_observer_keeps_the_newest_pull_request(local_github: LocalGitHub) -> None:
    newer = _payload("labeled")
    older = json.loads(json.dumps(newer))
    older["pull_request"]["updated_at"] = "2025-01-01T00:00:00Z"
    older["pull_request"]["state"] = "closed"
    local_github.observe_delivery("pull_request", newer)
    local_github.observe_delivery("pull_request", older)  # late and out of order: ignored
    other = json.loads(json.dumps(newer))
    other["repository"]["full_name"] = "someone/else"
    local_github.observe_delivery("pull_request", other)
    stored = json.loads(local_github.layout.pr_json(7).read_text())
    assert stored["state"] == "open"


async def test_get_pull_reads_what_deliveries_said(local_github: LocalGitHub) -> None:
    repo = local_github.repo(1, DEFAULT_REPOSITORY)
    with pytest.raises(PermanentError):
        await repo.get_pull(7)
    local_github.observe_delivery("pull_request", _payload("labeled"))
    pr = await repo.get_pull(7)
    assert (pr.number, pr.state, pr.head_sha, pr.labels) == (
        7,
        "open",
        SHA_A,
        frozenset({"preview"}),
    )
    assert not pr.is_fork
    with pytest.raises(PermanentError):
        await local_github.repo(1, "someone/else").get_pull(7)


async def test_comment_and_deployments_are_kept_and_shown(local_github: LocalGitHub) -> None:
    gh = local_github.repo(1, DEFAULT_REPOSITORY)
    local_github.observe_delivery("pull_request", _payload("labeled"))
    body = (
        "<!-- preview-bot:comment -->\n<!-- preview-bot:state "
        '{"state": "deploying", "fingerprint": "f1"} -->\n### 🚧 Preview deploying\n'
    )
    cid = await gh.create_comment(7, body)
    found = next(
        iter([read_comment(c, Author(0, "preview-bot[bot]")) async for c in gh.comments(7)])
    )
    assert found is not None and (found.id, found.state, found.fingerprint) == (
        cid,
        "deploying",
        "f1",
    )
    assert await gh.edit_comment(cid, body.replace("f1", "f2")) is True
    assert await gh.edit_comment(cid + 100, body) is False
    dep = await gh.create_deployment(SHA_A, "dex-pr-7", "Preview deploying")
    assert await gh.set_deployment_status(dep, DeploymentStatus("in_progress", "d", "https://x"))
    assert await gh.active_deployments("dex-pr-7") == [dep]
    assert await gh.set_deployment_status(dep, DeploymentStatus("inactive", "gone"))
    assert await gh.active_deployments("dex-pr-7") == []
    assert await gh.set_deployment_status(dep + 1, DeploymentStatus("inactive", "x")) is False
    md = local_github.layout.pr_md(7).read_text()
    assert md.index("comment 1 created") < md.index("comment 1 edited")
    assert "deployment 1 created: aaaaaaaa to environment dex-pr-7" in md
    assert "deployment 1 status inactive: gone" in md
    state = json.loads(local_github.layout.state.read_text())
    assert state["next_id"] == {"comment": 2, "deployment": 2, "check_run": 1}


async def test_commits_update_a_checked_out_branchs_files(local_github: LocalGitHub) -> None:
    gh, repo = local_github.repo(1, DEFAULT_REPOSITORY), local_github.git
    path = "infra/argocd/previews/pr-7/kustomization.yaml"
    blob, _ = await gh.put_file(path, "main", "a: 1\n", "add", None)
    assert (repo.path / path).read_text() == "a: 1\n"  # what the user sees on disk
    assert repo.out("status", "--porcelain") == ""  # and git agrees nothing is pending
    assert await gh.delete_file(path, "main", "remove", blob)
    assert not (repo.path / path).parent.exists()
    assert repo.out("status", "--porcelain") == ""
    log = repo.out("log", "--format=%an|%s", "main").splitlines()
    assert log[:2] == ["preview-bot|remove", "preview-bot|add"]


# ---- the file-backed cluster -------------------------------------------------------------------


async def test_apply_keeps_argocds_status_and_counts_spec_generations(tmp_path: Path) -> None:
    files = FileCluster(tmp_path, "argocd")
    app: dict[str, Any] = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": "dex-pr-7", "namespace": "argocd", "annotations": {"a": "1"}},
        "spec": {"project": "default"},
    }
    await files.apply(app)
    path = tmp_path / "dex-pr-7.yaml"
    assert path.read_text().startswith("# An Argo CD Application")
    edited = path.read_text() + "status:\n  health:\n    status: Healthy\n"
    path.write_text(edited)  # the user plays Argo CD
    await files.apply(app)
    got = yaml.safe_load(path.read_text())  # the whole object, as `kubectl get -o yaml` shows
    assert got is not None
    assert got["status"] == {"health": {"status": "Healthy"}}
    assert got["metadata"]["generation"] == 1
    seen = await files.get("dex-pr-7")  # and what the bot reads of it
    assert seen is not None and seen.status.health == "Healthy"
    await files.apply({**app, "spec": {"project": "other"}})
    got = yaml.safe_load(path.read_text())
    assert got is not None and got["metadata"]["generation"] == 2
    with pytest.raises(ValueError, match="namespace"):
        await files.apply({**app, "metadata": {**app["metadata"], "namespace": "elsewhere"}})


async def test_a_hand_written_status_speaks_for_the_pin_it_was_written_under(
    tmp_path: Path,
) -> None:
    files = FileCluster(tmp_path, "argocd")
    app: dict[str, Any] = {
        "metadata": {"name": "dex-pr-7", "namespace": "argocd"},
        "spec": {"source": {"targetRevision": "c1"}},
    }
    await files.apply(app)
    path = tmp_path / "dex-pr-7.yaml"
    path.write_text(path.read_text() + "status: {sync: {status: Synced}}\n")
    seen = await files.get("dex-pr-7")
    assert seen is not None and seen.status.revision == "c1"  # no revision: the pinned one
    await files.apply({**app, "spec": {"source": {"targetRevision": "c2"}}})  # a push
    seen = await files.get("dex-pr-7")
    assert seen is not None and seen.status.revision == "c1"  # not yet about c2
    assert seen.status.sync == "Synced"


async def test_without_a_kubeconfig_applications_go_to_files(tmp_path: Path) -> None:
    settings = Settings(
        github_app_id=1,
        github_private_key="k",
        github_webhook_secret="s",
        kubeconfig=str(tmp_path / "missing"),
    )
    choice = await connect_cluster(settings, tmp_path / "cluster")
    assert isinstance(choice.port, FileCluster)
    assert "does not exist" in choice.description
    assert choice.close is None  # nothing to close: no API client was made


# ---- DIR set-up and settings -------------------------------------------------------------------


def test_first_run_makes_a_repository_and_a_secret_later_runs_reuse_them(tmp_path: Path) -> None:
    layout, config, repo = prepare(tmp_path / "d", port=0)
    assert repo.out("log", "--format=%s", "main").splitlines() == [
        "Initial commit: DEX-style infra tree (base + overlays/preview)"
    ]
    assert (repo.path / "infra/argocd/overlays/preview/kustomization.yaml").is_file()
    assert not list(repo.path.rglob("__init__.py"))
    config.save(layout)
    again = prepare(tmp_path / "d")[1]
    assert again.secret == config.secret and len(config.secret) == 40
    assert again.repo_dir(layout) == repo.path == (tmp_path / "d" / "repo").resolve()
    assert again.repo_path is None  # DIR can move: the repository is found relative to it


def test_a_dir_inside_another_repository_still_gets_its_own(tmp_path: Path) -> None:
    outer = LocalRepo.create(tmp_path / "project", skeleton_infra())
    (outer.path / ".preview-bot-local" / "repo").mkdir(parents=True)  # empty, inside `outer`
    _, _, repo = prepare(outer.path / ".preview-bot-local")
    assert repo.path == (outer.path / ".preview-bot-local" / "repo").resolve()
    assert repo.toplevel() == repo.path
    assert len(outer.out("log", "--format=%H").splitlines()) == 1  # the project is untouched


def test_an_existing_repository_lends_its_github_name(tmp_path: Path) -> None:
    mine = LocalRepo.create(tmp_path / "mine", skeleton_infra())
    mine.run("remote", "add", "origin", "git@github.com:acme/shop.git")
    _, config, repo = prepare(tmp_path / "d", repo_path=mine.path)
    assert (config.repository, repo.path) == ("acme/shop", mine.path)
    assert config.repo_path == str(mine.path)
    with pytest.raises(LocalError, match="not a git repository"):
        prepare(tmp_path / "e", repo_path=tmp_path)


def test_local_settings_need_no_app_and_use_the_local_secret() -> None:
    env = {
        "GITHUB_APP_ID": "nope",
        "GITHUB_WEBHOOK_SECRET": "theirs",
        "PREVIEW_BOT_TRIGGER_LABEL": "deploy-me",
    }
    settings = local_settings("ours", environ=env)
    assert settings.github_webhook_secret == "ours"
    assert settings.github_app_id == UNUSED_APP_ID
    assert "unused" in settings.github_private_key
    assert settings.trigger_label == "deploy-me"


# ---- simulate ----------------------------------------------------------------------------------


class Recorder(BaseHTTPRequestHandler):
    """A stand-in webhook endpoint that records deliveries and answers `status`."""

    status = 202
    received: list[tuple[dict[str, str], bytes]] = []  # noqa: RUF012 - shared on purpose

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"outcome":"queued"}')

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def server() -> Iterator[tuple[str, type[Recorder]]]:
    handler = type("Handler", (Recorder,), {"received": [], "status": 202})
    httpd = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/webhook", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def local_dir(tmp_path: Path, server: tuple[str, type[Recorder]]) -> Path:
    layout, config, _ = prepare(tmp_path / "d")
    config.save(layout)
    return layout.root


def _sim(local_dir: Path, url: str, command: str, number: int = 7, **kw: Any) -> tuple[int, str]:
    out = io.StringIO()
    code = simulate(local_dir, Request(command, number, url=url, **kw), out)
    return code, out.getvalue()


def test_label_push_close_deliver_signed_payloads(
    local_dir: Path, server: tuple[str, type[Recorder]]
) -> None:
    url, handler = server
    config = LocalConfig.load(Layout(local_dir))
    assert config is not None
    repo = LocalRepo(config.repo_dir(Layout(local_dir)))
    for command in ("label", "push", "close"):
        assert _sim(local_dir, url, command)[0] == 0
    actions = []
    for headers, body in handler.received:
        assert verify_signature(config.secret, body, headers["x-hub-signature-256"])
        assert headers["x-github-event"] == "pull_request"
        payload = json.loads(body)
        validate_webhook("pull_request", payload)
        actions.append(payload["action"])
    assert actions == ["labeled", "synchronize", "closed"]
    first, second = (json.loads(b)["pull_request"]["head"]["sha"] for _, b in handler.received[:2])
    assert repo.branch_sha("pr-7") == second != first
    assert repo.out("rev-parse", f"{second}^") == first  # push added one commit on the branch
    changed = repo.out("diff", "--name-only", "main", second).splitlines()
    assert changed == ["app/pr-7.txt"]  # an application change, never infra


def test_a_refused_delivery_changes_nothing(
    local_dir: Path, server: tuple[str, type[Recorder]]
) -> None:
    url, handler = server
    handler.status = 401
    code, out = _sim(local_dir, url, "label")
    assert code == 1 and "HTTP 401" in out
    assert not Layout(local_dir).simulated(7).exists()
    config = LocalConfig.load(Layout(local_dir))
    assert config is not None
    assert LocalRepo(config.repo_dir(Layout(local_dir))).branch_sha("pr-7") is None


def test_print_only_prints_the_payload_and_changes_nothing(
    local_dir: Path, server: tuple[str, type[Recorder]]
) -> None:
    url, handler = server
    code, out = _sim(local_dir, url, "label", print_only=True)
    assert code == 0 and json.loads(out)["action"] == "labeled"
    assert handler.received == []
    assert not Layout(local_dir).simulated(7).exists()


@pytest.mark.parametrize(
    ("command", "kw", "message"),
    [
        ("push", {}, "does not exist yet"),
        ("close", {}, "does not exist yet"),
        ("push", {"sha": "abc"}, "40-hex"),
        ("label", {"sha": "0123456789" * 4}, "is not a commit"),
        ("close", {"sha": "a" * 40}, "--sha goes with push"),
        ("merge", {}, "unknown action"),
    ],
)
def test_bad_input_is_refused_clearly(
    local_dir: Path,
    server: tuple[str, type[Recorder]],
    command: str,
    kw: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(LocalError, match=message):
        _sim(local_dir, server[0], command, **kw)
    assert server[1].received == []


def test_impossible_transitions_are_refused(
    local_dir: Path, server: tuple[str, type[Recorder]]
) -> None:
    url = server[0]
    assert _sim(local_dir, url, "label")[0] == 0
    with pytest.raises(LocalError, match="already carries"):
        _sim(local_dir, url, "label")
    with pytest.raises(LocalError, match="is open"):
        _sim(local_dir, url, "reopen")
    assert _sim(local_dir, url, "close")[0] == 0
    with pytest.raises(LocalError, match="closed"):
        _sim(local_dir, url, "push")
    assert _sim(local_dir, url, "reopen")[0] == 0
    assert _sim(local_dir, url, "unlabel")[0] == 0
    with pytest.raises(LocalError, match="does not carry"):
        _sim(local_dir, url, "unlabel")


def test_simulate_needs_a_local_directory(tmp_path: Path) -> None:
    with pytest.raises(LocalError, match="start the local server first"):
        simulate(tmp_path / "nothing", Request("label", 7))


# ---- simulate's pure transition (no files, no git, no network) ---------------------------------


def test_the_command_line_knows_local_modes_names() -> None:
    # __main__ repeats them so that `preview-bot serve` never imports bot.local.
    assert tuple(ACTIONS) == cli.SIMULATE_ACTIONS
    assert cli.LOCAL_DIR == DEFAULT_DIR


def test_transitions_of_a_simulated_pr() -> None:
    label = Command("label", 7, "preview")
    check(label, None)
    assert moves_head(label, None)
    pr = transition(label, None, SHA_A, ("main", SHA_B), "2026-01-01T00:00:00Z")
    assert (pr.head_ref, pr.head_sha, pr.labels, pr.state) == ("pr-7", SHA_A, ["preview"], "open")
    push = Command("push", 7, "preview")
    check(push, pr)
    assert moves_head(push, pr) and not moves_head(Command("close", 7, "preview"), pr)
    pushed = transition(push, pr, SHA_B, ("main", SHA_B), "2026-01-01T00:00:01Z")
    assert (pushed.head_sha, pushed.commits, pr.head_sha) == (SHA_B, 2, SHA_A)  # pr unchanged
    closed = transition(Command("close", 7, "preview"), pushed, None, ("main", ""), "t")
    assert (closed.state, closed.closed_at, closed.base_sha) == ("closed", "t", SHA_B)
    with pytest.raises(LocalError, match="already closed"):
        check(Command("close", 7, "preview"), closed)
    with pytest.raises(LocalError, match="already is the head"):
        check(Command("push", 7, "preview", SHA_B), pushed)
    unlabeled = transition(Command("unlabel", 7, "preview"), pushed, None, ("main", SHA_B), "t")
    assert unlabeled.labels == [] and pushed.labels == ["preview"]
