"""The bot's settings: one frozen object, loaded once at start from the environment and a YAML file.

Every setting has a name (the YAML key), an environment variable and a default. Loading never
happens at import time; `load_settings` returns the Settings or raises SettingsError carrying one
line per problem (which setting, what was wrong, what is expected), so the process can print them
all at once and exit with code 2.
"""

from __future__ import annotations

import os
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

CONFIG_ENV = "PREVIEW_BOT_CONFIG"
MASK = "********"


class SettingsError(Exception):
    """Invalid settings: `problems` holds one human-readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Spec:
    """How one setting is named, parsed and documented."""

    name: str
    env: str
    default: Any
    help: str
    kind: str = "str"  # str, int, float, bool, optional-str, template, url, optional-url, secret
    placeholders: frozenset[str] = frozenset()
    file_env: str | None = None  # an env var naming a file that holds the value (secrets)
    required: bool = False


# Placeholders a template may use. Checked at start: an unknown placeholder stops the process.
NAME_VARS = frozenset({"number", "owner", "repo"})
TAG_VARS = frozenset({"number", "owner", "repo", "sha", "short_sha"})
URL_VARS = frozenset({"number", "owner", "repo", "name", "namespace"})
PATH_VARS = frozenset({"number", "owner", "repo", "name"})

SPECS: tuple[Spec, ...] = (
    Spec(
        "github_app_id", "GITHUB_APP_ID", None, "The GitHub App's numeric id.", "int", required=True
    ),
    Spec(
        "github_private_key",
        "GITHUB_PRIVATE_KEY",
        None,
        "The App's private key (PEM). Or name a file with GITHUB_PRIVATE_KEY_FILE.",
        "secret",
        file_env="GITHUB_PRIVATE_KEY_FILE",
        required=True,
    ),
    Spec(
        "github_webhook_secret",
        "GITHUB_WEBHOOK_SECRET",
        None,
        "The webhook secret set on the App. Or name a file with GITHUB_WEBHOOK_SECRET_FILE.",
        "secret",
        file_env="GITHUB_WEBHOOK_SECRET_FILE",
        required=True,
    ),
    Spec(
        "github_api_url",
        "GITHUB_API_URL",
        "https://api.github.com",
        "GitHub's REST API root; set it for GitHub Enterprise Server (https://HOST/api/v3).",
        "url",
    ),
    Spec(
        "trigger_label",
        "PREVIEW_BOT_TRIGGER_LABEL",
        "preview",
        "The PR label that asks for a preview.",
    ),
    Spec(
        "app_name_template",
        "PREVIEW_BOT_APP_NAME_TEMPLATE",
        "dex-pr-{number}",
        "Name of the Argo CD Application (and the GitHub environment) of a PR.",
        "template",
        NAME_VARS,
    ),
    Spec(
        "namespace_template",
        "PREVIEW_BOT_NAMESPACE_TEMPLATE",
        "dex-pr-{number}",
        "Namespace the preview deploys into.",
        "template",
        NAME_VARS,
    ),
    Spec(
        "image_name",
        "PREVIEW_BOT_IMAGE_NAME",
        "ghcr.io/data-literate/dex",
        "Image whose tag the overlay pins (the `images[].name` of the base).",
    ),
    Spec(
        "image_tag_template",
        "PREVIEW_BOT_IMAGE_TAG_TEMPLATE",
        "sha-{short_sha}",
        "Image tag of a PR's head commit; {short_sha} is the first 8 hex of the head SHA.",
        "template",
        TAG_VARS,
    ),
    Spec(
        "preview_url_template",
        "PREVIEW_BOT_PREVIEW_URL_TEMPLATE",
        "https://dex-pr-{number}.preview.example.com",
        "URL of the running preview, shown in the comment and the deployment.",
        "template",
        URL_VARS,
    ),
    Spec(
        "preview_host_template",
        "PREVIEW_BOT_PREVIEW_HOST_TEMPLATE",
        None,
        "If set, the host of every Ingress rule in the preview becomes this host.",
        "optional-template",
        URL_VARS,
    ),
    Spec(
        "overlay_path_template",
        "PREVIEW_BOT_OVERLAY_PATH_TEMPLATE",
        "infra/argocd/previews/pr-{number}/kustomization.yaml",
        "Where the PR's kustomization is committed. Must not be inside the base.",
        "template",
        PATH_VARS,
    ),
    Spec(
        "overlay_base",
        "PREVIEW_BOT_OVERLAY_BASE",
        "../../overlays/preview",
        "The overlay's `resources` entry, relative to the overlay's directory.",
    ),
    Spec(
        "deploy_branch",
        "PREVIEW_BOT_DEPLOY_BRANCH",
        None,
        "Branch that receives overlay commits and that Argo CD reads; default: the "
        "repository's default branch.",
        "optional-str",
    ),
    Spec(
        "argocd_namespace",
        "PREVIEW_BOT_ARGOCD_NAMESPACE",
        "argocd",
        "Namespace of Argo CD's Applications.",
    ),
    Spec(
        "argocd_project",
        "PREVIEW_BOT_ARGOCD_PROJECT",
        "default",
        "Argo CD project of the preview Applications.",
    ),
    Spec(
        "argocd_url",
        "PREVIEW_BOT_ARGOCD_URL",
        None,
        "Base URL of the Argo CD UI; when set, the comment links to the Application.",
        "optional-url",
    ),
    Spec(
        "destination_server",
        "PREVIEW_BOT_DESTINATION_SERVER",
        "https://kubernetes.default.svc",
        "Cluster the previews deploy to, as Argo CD names it.",
        "url",
    ),
    Spec(
        "kubeconfig",
        "KUBECONFIG",
        None,
        "Kubeconfig file; unset means in-cluster configuration when running in a pod.",
        "optional-str",
    ),
    Spec(
        "queue_size",
        "PREVIEW_BOT_QUEUE_SIZE",
        1000,
        "Most PRs waiting for a sync; past it deliveries get 503 so GitHub shows the failure.",
        "int",
    ),
    Spec("workers", "PREVIEW_BOT_WORKERS", 4, "Syncs run at once (never two for one PR).", "int"),
    Spec(
        "delivery_cache_size",
        "PREVIEW_BOT_DELIVERY_CACHE_SIZE",
        100_000,
        "Most delivery ids remembered for dedupe.",
        "int",
    ),
    Spec(
        "delivery_ttl_seconds",
        "PREVIEW_BOT_DELIVERY_TTL_SECONDS",
        3600,
        "How long a delivery id is remembered.",
        "int",
    ),
    Spec(
        "retry_seconds",
        "PREVIEW_BOT_RETRY_SECONDS",
        5.0,
        "First backoff after a temporary failure (GitHub 5xx, network, API server); it "
        "doubles per attempt up to 5 minutes. Rate limits wait for their reset instead.",
        "float",
    ),
    Spec(
        "teardown_grace_seconds",
        "PREVIEW_BOT_TEARDOWN_GRACE_SECONDS",
        30.0,
        "How long a deleted Application may take to be pruned before the comment says "
        "teardown pending (it says destroyed as soon as the Application is gone).",
        "float",
    ),
    Spec(
        "resync_seconds",
        "PREVIEW_BOT_RESYNC_SECONDS",
        300,
        "Every so often each managed Application's PR is synced again, so a lost webhook "
        "(a missed close, push or unlabel) or a crash heals by itself.",
        "int",
    ),
    Spec("log_level", "PREVIEW_BOT_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR."),
)
SPECS_BY_NAME = {spec.name: spec for spec in SPECS}


@dataclass(frozen=True)
class Settings:
    """The effective settings. Secrets are kept out of repr."""

    github_app_id: int
    github_private_key: str = field(repr=False)
    github_webhook_secret: str = field(repr=False)
    github_api_url: str = "https://api.github.com"
    trigger_label: str = "preview"
    app_name_template: str = "dex-pr-{number}"
    namespace_template: str = "dex-pr-{number}"
    image_name: str = "ghcr.io/data-literate/dex"
    image_tag_template: str = "sha-{short_sha}"
    preview_url_template: str = "https://dex-pr-{number}.preview.example.com"
    preview_host_template: str | None = None
    overlay_path_template: str = "infra/argocd/previews/pr-{number}/kustomization.yaml"
    overlay_base: str = "../../overlays/preview"
    deploy_branch: str | None = None
    argocd_namespace: str = "argocd"
    argocd_project: str = "default"
    argocd_url: str | None = None
    destination_server: str = "https://kubernetes.default.svc"
    kubeconfig: str | None = None
    queue_size: int = 1000
    workers: int = 4
    delivery_cache_size: int = 100_000
    delivery_ttl_seconds: int = 3600
    retry_seconds: float = 5.0
    teardown_grace_seconds: float = 30.0
    resync_seconds: int = 300
    log_level: str = "INFO"

    def masked(self) -> dict[str, Any]:
        """The settings as a dict with secrets masked, for `check-config` and logs."""
        out: dict[str, Any] = {}
        for spec in SPECS:
            value = getattr(self, spec.name)
            out[spec.name] = MASK if spec.kind == "secret" and value else value
        return out


def template_fields(template: str) -> set[str]:
    """The placeholder names a str.format template uses; raises ValueError on bad syntax."""
    names: set[str] = set()
    for _, name, spec, conv in string.Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(f"placeholder {{{name}}} is not a plain name")
        if spec or conv:
            raise ValueError(f"placeholder {{{name}}} must not carry a format spec or conversion")
        names.add(name)
    return names


def _parse_int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError("expected an integer")
    if isinstance(raw, int):
        return raw
    text = str(raw).strip()
    if not text.lstrip("-").isdigit():
        raise ValueError("expected an integer")
    return int(text)


def _check_url(raw: str) -> str:
    parsed = urlparse(raw)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("expected an http(s) URL such as https://example.com")
    return raw.rstrip("/")


def _parse(spec: Spec, raw: Any) -> Any:
    """Turn one raw value (from YAML or the environment) into the typed value, or raise."""
    if spec.kind == "float":
        try:
            number = float(raw)
        except (TypeError, ValueError):
            raise ValueError("expected a number of seconds") from None
        if not 0 < number <= 3600:
            raise ValueError("expected a number of seconds between 0 and 3600")
        return number
    if spec.kind == "int":
        value = _parse_int(raw)
        if spec.name != "github_app_id" and value < 1:
            raise ValueError("expected a positive integer")
        if spec.name == "github_app_id" and value < 1:
            raise ValueError("expected the App's positive numeric id")
        return value
    if not isinstance(raw, str):
        raise ValueError(f"expected a string, got {type(raw).__name__}")
    if spec.kind in ("optional-str", "optional-template", "optional-url") and raw.strip() == "":
        return None
    if spec.kind in ("template", "optional-template"):
        if not raw.strip():
            raise ValueError("must not be empty")
        unknown = template_fields(raw) - spec.placeholders
        if unknown:
            allowed = ", ".join(f"{{{n}}}" for n in sorted(spec.placeholders))
            bad = ", ".join(f"{{{n}}}" for n in sorted(unknown))
            raise ValueError(f"unknown placeholder {bad}; allowed: {allowed}")
        return raw
    if spec.kind in ("url", "optional-url"):
        return _check_url(raw.strip())
    if spec.kind == "secret":
        if not raw.strip():
            raise ValueError("must not be empty")
        return raw
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def _read_file_setting(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"cannot read file {path}: {exc.strerror or exc}") from exc


def load_settings(
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    *,
    require_github: bool = True,
) -> Settings:
    """Build the Settings from a YAML file (if any) and the environment, which wins.

    Raises SettingsError listing every problem, one line each. `require_github=False` lets
    offline commands (render) run without the App's id and secrets.
    """
    env = dict(os.environ if environ is None else environ)
    problems: list[str] = []
    raw: dict[str, Any] = {}
    source: dict[str, str] = {}

    path = config_file if config_file is not None else env.get(CONFIG_ENV) or None
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise SettingsError(
                [f"config file {path}: cannot read it ({exc.strerror or exc})"]
            ) from exc
        except yaml.YAMLError as exc:
            raise SettingsError([f"config file {path}: not valid YAML ({exc})"]) from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise SettingsError(
                [f"config file {path}: expected a mapping of setting names to values"]
            )
        for key, value in loaded.items():
            if key not in SPECS_BY_NAME:
                known = ", ".join(sorted(SPECS_BY_NAME))
                problems.append(f"config file {path}: unknown setting {key!r}; known: {known}")
                continue
            raw[key] = value
            source[key] = f"{key} (config file {path})"

    for spec in SPECS:
        if spec.file_env and env.get(spec.file_env):
            if env.get(spec.env):
                problems.append(f"{spec.env} and {spec.file_env}: set one of them, not both")
                continue
            try:
                text = _read_file_setting(env[spec.file_env])
            except ValueError as exc:
                problems.append(f"{spec.file_env}: {exc}")
                continue
            # A secret file made with `echo` or an editor ends in a newline GitHub never sent:
            # keeping it would make every signature check fail.
            raw[spec.name] = text.rstrip("\r\n") if spec.name == "github_webhook_secret" else text
            source[spec.name] = spec.file_env
        elif spec.env in env:
            raw[spec.name] = env[spec.env]
            source[spec.name] = spec.env

    values: dict[str, Any] = {}
    for spec in SPECS:
        where = source.get(spec.name, spec.env)
        if spec.name not in raw or raw[spec.name] is None:
            if spec.required and not require_github:
                values[spec.name] = 0 if spec.kind == "int" else ""
            elif spec.required:
                alt = f" (or {spec.file_env})" if spec.file_env else ""
                problems.append(
                    f"{spec.env}{alt}: missing; expected {spec.help[0].lower()}{spec.help[1:]}"
                )
            continue
        try:
            values[spec.name] = _parse(spec, raw[spec.name])
        except ValueError as exc:
            problems.append(f"{where}: {exc}")

    problems.extend(_cross_checks(values))
    if problems:
        raise SettingsError(problems)
    return Settings(**values)


def _cross_checks(values: Mapping[str, Any]) -> list[str]:
    """Checks that involve more than one setting or need the whole picture."""
    problems: list[str] = []
    path = values.get("overlay_path_template", Settings.overlay_path_template)
    if isinstance(path, str):
        if path.startswith("/") or ".." in Path(path).parts:
            problems.append(
                "PREVIEW_BOT_OVERLAY_PATH_TEMPLATE: expected a path inside the "
                "repository, without a leading / or .."
            )
        if "{number}" not in path:
            problems.append(
                "PREVIEW_BOT_OVERLAY_PATH_TEMPLATE: must contain {number}, or every "
                "PR would share one overlay"
            )
    for name in ("app_name_template", "namespace_template"):
        tmpl = values.get(name)
        if isinstance(tmpl, str) and "{number}" not in tmpl:
            problems.append(
                f"{SPECS_BY_NAME[name].env}: must contain {{number}}, or every PR "
                "would share one preview"
            )
    level = values.get("log_level")
    if level is not None and str(level).upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        problems.append("PREVIEW_BOT_LOG_LEVEL: expected DEBUG, INFO, WARNING or ERROR")
    key = values.get("github_private_key")
    if isinstance(key, str) and key and "PRIVATE KEY-----" not in key:
        problems.append(
            "GITHUB_PRIVATE_KEY: expected a PEM private key "
            "(-----BEGIN RSA PRIVATE KEY----- ...), as GitHub hands it out"
        )
    return problems
