"""`preview-bot serve --local DIR`: prepare DIR, choose the cluster, run the production Bot on
local adapters, and print where everything is."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import secrets
import shlex
import shutil
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from bot import wiring
from bot.app import Server, create_app
from bot.config import Settings, load_settings
from bot.local.cluster import FileCluster
from bot.local.github import LocalGitHub
from bot.local.layout import DEFAULT_DIR, Layout, LocalConfig, LocalError
from bot.local.repo import LocalRepo, skeleton_infra
from bot.logs import setup_logging
from bot.parse import KUSTOMIZATION_NAMES
from bot.ports import ClusterPort
from bot.render import names
from bot.service import Bot

log = logging.getLogger(__name__)

# Local mode never talks to GitHub, so the App's id and key are placeholders no code reads.
UNUSED_APP_ID = 0
UNUSED_PRIVATE_KEY = "(unused in local mode: no GitHub App is involved)"
# Settings local mode ignores from the environment: it has no App, and its secret is its own.
_GITHUB_ENV = (
    "GITHUB_APP_ID",
    "GITHUB_PRIVATE_KEY",
    "GITHUB_PRIVATE_KEY_FILE",
    "GITHUB_WEBHOOK_SECRET",
    "GITHUB_WEBHOOK_SECRET_FILE",
)
CLUSTER_PROBE_SECONDS = 5.0


@dataclass
class ClusterChoice:
    """The cluster local mode uses, and what to tell the user about it."""

    port: ClusterPort
    description: str
    close: Callable[[], Awaitable[None]] | None = None


def _no_kubeconfig(kubeconfig: str | None) -> str | None:
    """Why there is no cluster configuration to try, if that is plain before trying.

    The client's own error for a missing file ("Expected key current-context") misleads.
    """
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return None  # in a pod: the service account is the configuration
    paths = [p for p in (kubeconfig or "").split(os.pathsep) if p]
    if any(Path(p).exists() for p in paths):
        return None
    if paths:
        return f"KUBECONFIG {kubeconfig} does not exist"
    default = Path("~/.kube/config").expanduser()
    return None if default.exists() else f"KUBECONFIG unset and no {default}"


async def connect_cluster(settings: Settings, cluster_dir: Path) -> ClusterChoice:
    """The kubeconfig's cluster when it answers and serves Application objects, else files."""
    files = FileCluster(cluster_dir, settings.argocd_namespace)
    where = f"files under {cluster_dir}/"
    why = _no_kubeconfig(settings.kubeconfig)
    if why is not None:
        return ClusterChoice(files, f"{where} ({why})")
    try:
        conn = await wiring.connect_cluster(settings, CLUSTER_PROBE_SECONDS)
    except Exception as exc:  # no kubeconfig, a broken one: any reason means "use files"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return ClusterChoice(files, f"{where} (no Kubernetes configuration: {reason})")
    if conn.problem is not None:
        await conn.close()
        return ClusterChoice(files, f"{where} ({conn.problem})")
    return ClusterChoice(
        conn.port,
        f"Argo CD Applications in namespace {settings.argocd_namespace} of the cluster at "
        f"{conn.host}",
        conn.close,
    )


def local_settings(
    secret: str, config_file: str | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Production's settings (file and environment), minus the App, plus the local secret.

    Raises SettingsError like load_settings.
    """
    env = {
        k: v
        for k, v in (os.environ if environ is None else environ).items()
        if k not in _GITHUB_ENV
    }
    settings = load_settings(env, config_file, require_github=False)
    return dataclasses.replace(
        settings,
        github_app_id=UNUSED_APP_ID,
        github_private_key=UNUSED_PRIVATE_KEY,
        github_webhook_secret=secret,
    )


def prepare(
    root: Path, repo_path: Path | None = None, host: str | None = None, port: int | None = None
) -> tuple[Layout, LocalConfig, LocalRepo]:
    """Create DIR on the first run (secret, repository), or check and reuse it."""
    layout = Layout(root)
    if root.exists() and not root.is_dir():
        raise LocalError(f"{root} is not a directory")
    for sub in (layout.prs, layout.cluster, layout.github):
        sub.mkdir(parents=True, exist_ok=True)
    config = LocalConfig.load(layout) or LocalConfig(secret=secrets.token_hex(20))
    if repo_path is not None:
        top = LocalRepo(repo_path.resolve()).toplevel()
        if top is None:
            raise LocalError(f"--repo {repo_path}: not a git repository")
        repo = LocalRepo(top)
        config.repository = _github_name(repo) or config.repository
        config.repo_path = str(repo.path)
    elif config.repo_path:
        repo = LocalRepo(Path(config.repo_path))  # the --repo of an earlier run
        if not repo.is_repo():
            raise LocalError(
                f"{config.repo_path} (from {layout.config}) is no longer a git "
                "repository: pass --repo, or remove repo_path from that file"
            )
    else:
        repo = LocalRepo(layout.default_repo.resolve())
        if not repo.is_repo():
            if repo.path.exists() and any(repo.path.iterdir()):
                raise LocalError(f"{repo.path} exists but is not a git repository")
            repo = LocalRepo.create(repo.path, skeleton_infra())
    config.branch = repo.current_branch() or config.branch
    if repo.branch_sha(config.branch) is None:
        raise LocalError(f"{repo.path}: branch {config.branch} has no commit yet")
    if host is not None:
        config.host = host
    if port is not None:
        config.port = port
    return layout, config, repo


def _github_name(repo: LocalRepo) -> str | None:
    """owner/name of the repository's GitHub origin, so Applications name the real repository."""
    done = repo.run("remote", "get-url", "origin", check=False)
    found = re.search(
        r"github\.com[:/]([^/\s]+)/([^/\s]+?)(?:\.git)?/?$", done.stdout.decode().strip()
    )
    return f"{found.group(1)}/{found.group(2)}" if done.returncode == 0 and found else None


def build_local_app(
    settings: Settings,
    layout: Layout,
    config: LocalConfig,
    repo: LocalRepo,
    banner: Callable[[str], None] | None = None,
) -> tuple[Server, Bot]:
    """The production app and Bot on local adapters; `banner` gets the start-up text."""
    if not settings.repositories:
        # Local mode serves one repository: unless told otherwise, that one is the scope.
        settings = dataclasses.replace(settings, repositories=(config.repository,))
    bot = Bot(settings)
    github = LocalGitHub(layout, repo, config.repository, settings)
    bot.intake.observers.append(github.observe_delivery)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        cluster = await connect_cluster(settings, layout.cluster)
        bot.start(github, cluster.port)
        log.info("local mode ready; Applications go to %s", cluster.description)
        if banner is not None:
            banner(start_text(settings, layout, config, repo, cluster.description))
        try:
            yield
        finally:
            await bot.stop()
            if cluster.close is not None:
                await cluster.close()

    return create_app(bot.intake, lifespan), bot


def _prog() -> str:
    """How the user runs preview-bot here, for the commands we suggest."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "preview-bot":
        found = shutil.which("preview-bot")
        return (
            "preview-bot" if found and Path(found).resolve() == argv0.resolve() else (shown(argv0))
        )
    return "preview-bot" if shutil.which("preview-bot") else f"{Path(sys.executable).name} -m bot"


def _kubectl() -> str:
    """The venv's kubectl (kustomize v5) when there is one: an old kubectl on PATH fails."""
    venv = Path(sys.executable).parent / "kubectl"
    return shown(venv) if venv.exists() else "kubectl"


def shown(path: Path) -> str:
    """A path as short as it can be said from the current directory (symlinks kept)."""
    relative = os.path.relpath(os.path.abspath(path))
    return shlex.quote(str(path) if relative.startswith("..") else relative)


def start_text(
    settings: Settings, layout: Layout, config: LocalConfig, repo: LocalRepo, cluster: str
) -> str:
    """What `serve --local` prints at start: where things are, and what to try next."""
    d = shown(layout.root)
    prog = _prog()
    n = names(settings, config.repository, 7)
    sim = f"{prog} simulate"
    dir_arg = "" if layout.root.resolve() == Path(DEFAULT_DIR).resolve() else f" --dir {d}"
    app_file = f"{shown(layout.cluster)}/{n.app}.yaml"
    head = repo.branch_sha(config.branch)
    warning = []
    if head is None or not any(
        name in KUSTOMIZATION_NAMES for name in repo.children(head, n.base_dir)
    ):
        warning = [
            f"  WARNING     {config.branch} has no kustomization in {n.base_dir}/: every "
            "preview will fail until it does (bot/skeleton/infra shows one)"
        ]
    return "\n".join(
        [
            "",
            "preview-bot local mode: the production bot, with GitHub played by files.",
            f"  webhook     POST {config.url}",
            f"  secret      {config.secret}   (kept in {shown(layout.config)})",
            f"  repository  {shown(repo.path)}{' (created now)' if repo.created else ''}: "
            f"{config.repository}, overlays committed on {config.branch}",
            f"  cluster     {cluster}",
            f"  PR state    {shown(layout.prs)}/pr-N.json (from deliveries), pr-N.md "
            "(the comment, its history, deployments)",
            *warning,
            "",
            "Next, in another terminal:",
            f"  {sim} label --pr 7{dir_arg}   # open PR 7 with the `{settings.trigger_label}` "
            "label: deploy",
            f"  {sim} push  --pr 7{dir_arg}   # a new commit on pr-7: redeploy with the new tag",
            f"  {sim} close --pr 7{dir_arg}   # close it: everything is removed",
            "and look at:",
            f"  git -C {shown(repo.path)} log --stat {config.branch}",
            f"  {_kubectl()} kustomize {shown(repo.path)}/{n.overlay_dir}",
            f"  cat {app_file}",
            f"  cat {shown(layout.pr_md(7))}",
            "",
        ]
    )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise LocalError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; pass another --port"
        ) from exc
    return sock


def run_local(
    directory: Path | str = DEFAULT_DIR,
    repo: Path | str | None = None,
    host: str | None = None,
    port: int | None = None,
    config_file: str | None = None,
) -> int:
    """`preview-bot serve --local DIR`: prepare DIR, print where things are, serve until ^C.

    Raises LocalError (bad DIR/--repo/port) and SettingsError (bad settings) for the CLI.
    """
    layout, config, local_repo = prepare(Path(directory), Path(repo) if repo else None, host, port)
    settings = local_settings(config.secret, config_file)
    setup_logging(settings.log_level)
    sock = _bind(config.host, config.port)
    config.port = int(sock.getsockname()[1])  # --port 0 picks a free port
    config.trigger_label = settings.trigger_label
    config.save(layout)

    def banner(text: str) -> None:
        print(text, flush=True)

    app, _ = build_local_app(settings, layout, config, local_repo, banner)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()
    return 0
