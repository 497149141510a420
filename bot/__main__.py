"""The `preview-bot` command line: serve (or serve --local), simulate, check-config, render."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import urlparse

import yaml

from bot.comment import examples
from bot.config import Settings, SettingsError, load_settings
from bot.logs import setup_logging
from bot.model import SHA_RE, PullRequest, State
from bot.render import (
    names,
    render_application,
    render_namespace_component,
    render_overlay,
    worst_case_names,
)

log = logging.getLogger(__name__)

# Local mode's names, repeated so that `preview-bot serve` never imports bot.local (a unit test
# keeps them equal to bot.local's own).
LOCAL_DIR = ".preview-bot-local"
SIMULATE_ACTIONS = ("label", "push", "unlabel", "close", "reopen")

EXIT_SETTINGS = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="preview-bot",
        description="A GitHub App that gives each labeled pull request a live preview on "
        "Kubernetes through Argo CD.",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML settings file (also PREVIEW_BOT_CONFIG); environment variables override it",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the webhook server and the sync workers")
    serve.add_argument(
        "--host", default=None, help="address to bind (default 0.0.0.0; 127.0.0.1 with --local)"
    )
    serve.add_argument(
        "--port",
        type=int,
        default=None,
        help="port to bind (default 8000; with --local the last one used, 0 picks a free one)",
    )
    serve.add_argument(
        "--local",
        metavar="DIR",
        default=None,
        help="local mode: no GitHub App or cluster needed; a git repository, "
        "the PR comments and the Applications live under DIR",
    )
    serve.add_argument(
        "--repo",
        metavar="PATH",
        default=None,
        help="with --local: commit overlays to this existing git repository instead of DIR/repo",
    )
    simulate = sub.add_parser(
        "simulate", help="local mode: change a simulated PR and deliver its signed webhook"
    )
    simulate.add_argument(
        "action",
        choices=SIMULATE_ACTIONS,
        metavar="ACTION",
        help="label | push | unlabel | close | reopen",
    )
    simulate.add_argument("--pr", required=True, type=int, metavar="N", help="the PR number")
    simulate.add_argument(
        "--sha",
        default=None,
        help="push (or label of a new PR): use this commit of the local "
        "repository as the head instead of making one",
    )
    simulate.add_argument(
        "--url", default=None, help="webhook URL (default: the local server's, from DIR/local.json)"
    )
    simulate.add_argument(
        "--dir", default=LOCAL_DIR, help=f"the local mode directory (default {LOCAL_DIR})"
    )
    simulate.add_argument(
        "--print-only",
        action="store_true",
        help="print the payload instead of sending it; change nothing",
    )
    sub.add_parser("check-config", help="print the effective settings (secrets masked)")
    render = sub.add_parser(
        "render", help="print the overlay, Application and comment for a PR (no network)"
    )
    render.add_argument("--repo", required=True, metavar="OWNER/NAME")
    render.add_argument("--pr", required=True, type=int, metavar="N")
    render.add_argument("--sha", required=True, help="the PR's head commit (40 hex)")
    render.add_argument(
        "--branch", default=None, help="branch Argo CD reads (default: deploy_branch, else main)"
    )
    render.add_argument(
        "--state",
        default="deploying",
        choices=[*(s.value.replace(" ", "-") for s in State), "all"],
        help="which state of the comment to show (default deploying; all: every one)",
    )
    return parser


def _load(args: argparse.Namespace, require_github: bool = True) -> Settings:
    try:
        settings = load_settings(config_file=args.config, require_github=require_github)
    except SettingsError as exc:
        for line in exc.problems:
            print(f"preview-bot: setting {line}", file=sys.stderr)
        raise SystemExit(EXIT_SETTINGS) from exc
    if require_github:
        from bot.github_auth import load_key  # cryptography: only for commands with the App

        try:
            load_key(settings.github_private_key)
        except ValueError as exc:
            print(f"preview-bot: setting GITHUB_PRIVATE_KEY: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_SETTINGS) from exc
    # Names checked with the longest values GitHub allows, so no PR is ever refused by
    # Kubernetes for a name the templates make.
    names_problems = worst_case_names(settings)
    for line in names_problems:
        print(
            f"preview-bot: setting PREVIEW_BOT_APP_NAME_TEMPLATE / PREVIEW_BOT_NAMESPACE_TEMPLATE:"
            f" with the longest owner, repository and PR number, {line}",
            file=sys.stderr,
        )
    if names_problems:
        raise SystemExit(EXIT_SETTINGS)
    return settings


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _load(args)
    print(yaml.safe_dump(settings.masked(), sort_keys=False), end="")
    if settings.argocd_project == "default":
        print(
            "preview-bot: warning: PREVIEW_BOT_ARGOCD_PROJECT is `default`, an Argo CD project "
            "that may deploy anything anywhere: a PR's overlay could create cluster-wide "
            "objects. Use the chart's fenced `previews` project.",
            file=sys.stderr,
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    if args.local is not None:
        return _serve_local(args)
    if args.repo is not None:
        print("preview-bot: --repo only goes with --local", file=sys.stderr)
        return EXIT_SETTINGS
    settings = _load(args)
    setup_logging(settings.log_level)
    from bot.wiring import serve  # the production adapters: only `serve` needs them

    host = args.host if args.host is not None else "0.0.0.0"  # noqa: S104
    serve(settings, host, args.port if args.port is not None else 8000)
    return 0


def _serve_local(args: argparse.Namespace) -> int:
    from bot.local.layout import LocalError
    from bot.local.serve import run_local

    try:
        return run_local(args.local, args.repo, args.host, args.port, config_file=args.config)
    except SettingsError as exc:
        for line in exc.problems:
            print(f"preview-bot: setting {line}", file=sys.stderr)
        return EXIT_SETTINGS
    except LocalError as exc:
        print(f"preview-bot: {exc}", file=sys.stderr)
        return EXIT_SETTINGS


def cmd_simulate(args: argparse.Namespace) -> int:
    from bot.local.layout import DeliveryError, LocalError
    from bot.local.simulate import Request, simulate

    try:
        request = Request(args.action, args.pr, args.sha, args.url, args.print_only)
        return simulate(args.dir, request)
    except DeliveryError as exc:
        print(f"preview-bot simulate: {exc}", file=sys.stderr)
        return 1
    except LocalError as exc:
        print(f"preview-bot simulate: {exc}", file=sys.stderr)
        return EXIT_SETTINGS


def web_url(api_url: str) -> str:
    """github.com for api.github.com; https://HOST for GitHub Enterprise's https://HOST/api/v3."""
    parsed = urlparse(api_url)
    if parsed.netloc == "api.github.com":
        return "https://github.com"
    return f"{parsed.scheme}://{parsed.netloc}"


def cmd_render(args: argparse.Namespace) -> int:
    settings = _load(args, require_github=False)
    problems = []
    if args.repo.count("/") != 1 or not all(args.repo.split("/")):
        problems.append(f"--repo: expected OWNER/NAME, got {args.repo!r}")
    if args.pr < 1:
        problems.append(f"--pr: expected a positive PR number, got {args.pr}")
    if not SHA_RE.match(args.sha):
        problems.append(f"--sha: expected the 40-hex-digit commit SHA, got {args.sha!r}")
    if problems:
        for line in problems:
            print(f"preview-bot: {line}", file=sys.stderr)
        return EXIT_SETTINGS
    repo_url = f"{web_url(settings.github_api_url)}/{args.repo}"
    branch = args.branch or settings.deploy_branch or "main"
    pr = PullRequest(
        repo=args.repo,
        number=args.pr,
        state="open",
        merged=False,
        labels=frozenset({settings.trigger_label}),
        head_sha=args.sha,
        head_repo=args.repo,
        default_branch=branch,
        html_url=f"{repo_url}/pull/{args.pr}",
        repo_html_url=repo_url,
    )
    n = names(settings, pr.repo, pr.number)
    app = render_application(settings, pr, branch, installation_id=0)
    print(f"# ---- overlay: {n.overlay_path} (branch {branch})")
    print(render_overlay(settings, pr), end="")
    for path, text in render_namespace_component(settings).items():
        print(f"# ---- shared Namespace component: {path} (written once per repository)")
        print(text, end="")
    print(f"# ---- Application {n.app} in namespace {settings.argocd_namespace}")
    print("# (spec.source.targetRevision is pinned to the overlay's commit when deployed)")
    print(yaml.safe_dump(app, sort_keys=False), end="")
    for state, comment in examples(settings, pr, datetime.now(UTC)).items():
        if args.state in ("all", state.value.replace(" ", "-")):
            print(f"# ---- PR comment, {state.value}")
            print(comment.body, end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {
        "serve": cmd_serve,
        "simulate": cmd_simulate,
        "check-config": cmd_check_config,
        "render": cmd_render,
    }
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
