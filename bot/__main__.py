"""The `preview-bot` command line: serve, check-config, render."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Sequence

import uvicorn
import yaml
from starlette.applications import Starlette

from bot.app import Intake, create_app
from bot.config import Settings, SettingsError, load_settings
from bot.logs import setup_logging
from bot.metrics import Metrics
from bot.queue import KeyedQueue, run_worker
from bot.webhooks import Work

log = logging.getLogger("bot")

EXIT_SETTINGS = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="preview-bot",
        description="A GitHub App that gives each labeled pull request a live preview on "
        "Kubernetes through Argo CD.",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="YAML settings file (also PREVIEW_BOT_CONFIG); "
        "environment variables override it",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the webhook server and the sync workers")
    serve.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")  # noqa: S104
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    sub.add_parser("check-config", help="print the effective settings (secrets masked)")
    return parser


def _load(args: argparse.Namespace) -> Settings:
    try:
        return load_settings(config_file=args.config)
    except SettingsError as exc:
        for line in exc.problems:
            print(f"preview-bot: setting {line}", file=sys.stderr)
        raise SystemExit(EXIT_SETTINGS) from exc


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _load(args)
    print(yaml.safe_dump(settings.masked(), sort_keys=False), end="")
    return 0


async def _log_only(work: Work) -> None:
    log.info("sync requested", extra={"repo": work.key.repo, "pr": work.key.number,
                                      "delivery": work.delivery})


def build_app(settings: Settings) -> Starlette:
    """The production app: intake + workers, started and stopped with the server."""
    queue = KeyedQueue(settings.queue_size)
    intake = Intake(settings, queue, Metrics())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        workers = [
            asyncio.create_task(run_worker(queue, _log_only)) for _ in range(settings.workers)
        ]
        intake.health.started = True
        log.info("preview-bot ready", extra={"status": "started"})
        try:
            yield
        finally:
            intake.health.stopping = True
            queue.close()
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    return create_app(intake, lifespan)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _load(args)
    setup_logging(settings.log_level)
    app = build_app(settings)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"serve": cmd_serve, "check-config": cmd_check_config}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
