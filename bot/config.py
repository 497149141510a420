"""The bot's settings: one frozen object, loaded once at start from the environment and a YAML file.

Every setting is one field of `Settings`, declared with `setting(...)`: its default (none for a
required setting), environment variable, help and Kind live there and nowhere else; `SPECS` is
derived from those fields for the loader, the docs table and the chart schema. Loading never
happens at import time; `load_settings` returns the Settings or raises SettingsError carrying one
line per problem (which setting, what was wrong, what is expected), so the process can print them
all at once and exit with code 2.
"""

from __future__ import annotations

import enum
import os
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple, TypedDict, TypeVar, Unpack, dataclass_transform, overload
from urllib.parse import urlparse

import yaml

from bot.scope import may_match_many

CONFIG_ENV = "PREVIEW_BOT_CONFIG"
MASK = "********"
# A Kind.DURATION value: a number of seconds, or a number with a unit (s, m, h, d). The chart's
# values.schema.json uses the same pattern, so Helm rejects what the bot would (the bot also
# forgives surrounding spaces, which an environment variable easily has).
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?)([smhd]?)$"

_T = TypeVar("_T")
_C = TypeVar("_C")
_SPEC = "preview_bot.setting"  # the key of a setting's declaration in its field's metadata


class SettingsError(Exception):
    """Invalid settings: `problems` holds one human-readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Kind(enum.Enum):
    """How a setting's raw value (environment text or YAML value) becomes its typed value."""

    STR = enum.auto()  # non-empty text, stripped
    INT = enum.auto()  # a positive integer
    FLOAT = enum.auto()  # a number of seconds, 0 < x <= 3600
    TEMPLATE = enum.auto()  # a str.format template using only the spec's placeholders
    URL = enum.auto()  # an http(s) URL, without its trailing /
    SECRET = enum.auto()  # non-empty text kept as given, and out of repr
    BOOL = enum.auto()  # true/false, yes/no, on/off, 1/0
    DURATION = enum.auto()  # 90s, 30m, 12h, 7d or bare seconds, as float seconds; 0 means off
    LIST = enum.auto()  # comma-separated text or a YAML list, as a tuple of strings
    CHOICE = enum.auto()  # one of the spec's `choices`, in any case, spelled as the spec does
    COUNT = enum.auto()  # an integer, 0 or more (0 usually means "no limit" or "off")


@dataclass(frozen=True)
class Spec:
    """How one setting is named, parsed and documented."""

    name: str
    env: str
    default: Any
    help: str
    kind: Kind = Kind.STR
    placeholders: frozenset[str] = frozenset()
    file_env: str | None = None  # an env var naming a file that holds the value (secrets)
    required: bool = False
    choices: tuple[str, ...] = ()  # the allowed values of a Kind.CHOICE setting

    @property
    def optional(self) -> bool:
        """A setting that defaults to None may stay unset: an empty value also means None."""
        return self.default is None and not self.required


class _Extras(TypedDict, total=False):
    """What only some kinds of setting need."""

    placeholders: frozenset[str]  # Kind.TEMPLATE: the placeholders it may use
    choices: tuple[str, ...]  # Kind.CHOICE: the values it allows
    file_env: str  # an env var naming a file that holds the value (secrets)
    required: bool  # required by `serve` and `check-config` although it has a default


@overload
def setting(
    *, default: _T, env: str, help: str, kind: Kind = ..., **extras: Unpack[_Extras]
) -> _T: ...
@overload
def setting(*, env: str, help: str, kind: Kind = ..., **extras: Unpack[_Extras]) -> Any: ...
def setting(
    *,
    default: Any = MISSING,
    env: str,
    help: str,
    kind: Kind = Kind.STR,
    **extras: Unpack[_Extras],
) -> Any:
    """Declare one field of Settings: without a default the setting is required."""
    if (kind is Kind.CHOICE) != bool(extras.get("choices")):
        raise TypeError(f"{env}: choices go with Kind.CHOICE, and Kind.CHOICE needs choices")
    if (kind is Kind.TEMPLATE) != bool(extras.get("placeholders")):
        raise TypeError(f"{env}: placeholders go with Kind.TEMPLATE, and Kind.TEMPLATE needs them")
    declared = {"env": env, "help": help, "kind": kind, **extras}
    return field(default=default, repr=kind is not Kind.SECRET, metadata={_SPEC: declared})


# Type checkers learn from this that `setting` declares fields (and which ones are required).
@dataclass_transform(frozen_default=True, field_specifiers=(setting,))
def _settings_class(cls: type[_C]) -> type[_C]:
    return dataclass(frozen=True)(cls)


# Placeholders a template may use. Checked at start: an unknown placeholder stops the process.
NAME_VARS = frozenset({"number", "owner", "repo"})
TAG_VARS = frozenset({"number", "owner", "repo", "sha", "short_sha"})
URL_VARS = frozenset({"number", "owner", "repo", "name", "namespace"})
PATH_VARS = frozenset({"number", "owner", "repo", "name"})


@_settings_class
class Settings:
    """The effective settings. Secrets are kept out of repr."""

    github_app_id: int = setting(
        env="GITHUB_APP_ID", help="The GitHub App's numeric id.", kind=Kind.INT
    )
    github_private_key: str = setting(
        env="GITHUB_PRIVATE_KEY",
        help="The App's private key (PEM). Or name a file with GITHUB_PRIVATE_KEY_FILE.",
        kind=Kind.SECRET,
        file_env="GITHUB_PRIVATE_KEY_FILE",
    )
    github_webhook_secret: str = setting(
        env="GITHUB_WEBHOOK_SECRET",
        help="The webhook secret set on the App. Or name a file with GITHUB_WEBHOOK_SECRET_FILE.",
        kind=Kind.SECRET,
        file_env="GITHUB_WEBHOOK_SECRET_FILE",
    )
    github_api_url: str = setting(
        default="https://api.github.com",
        env="GITHUB_API_URL",
        help="GitHub's REST API root; set it for GitHub Enterprise Server (https://HOST/api/v3).",
        kind=Kind.URL,
    )
    trigger_label: str = setting(
        default="preview",
        env="PREVIEW_BOT_TRIGGER_LABEL",
        help="The PR label that asks for a preview.",
    )
    app_name_template: str = setting(
        default="dex-pr-{number}",
        env="PREVIEW_BOT_APP_NAME_TEMPLATE",
        help="Name of the Argo CD Application (and the GitHub environment) of a PR.",
        kind=Kind.TEMPLATE,
        placeholders=NAME_VARS,
    )
    namespace_template: str = setting(
        default="dex-pr-{number}",
        env="PREVIEW_BOT_NAMESPACE_TEMPLATE",
        help="Namespace the preview deploys into.",
        kind=Kind.TEMPLATE,
        placeholders=NAME_VARS,
    )
    image_name: str = setting(
        default="ghcr.io/data-literate/dex",
        env="PREVIEW_BOT_IMAGE_NAME",
        help="Image whose tag the overlay pins (the `images[].name` of the base).",
    )
    image_tag_template: str = setting(
        default="sha-{short_sha}",
        env="PREVIEW_BOT_IMAGE_TAG_TEMPLATE",
        help="Image tag of a PR's head commit; {short_sha} is the first 8 hex of the head SHA.",
        kind=Kind.TEMPLATE,
        placeholders=TAG_VARS,
    )
    preview_url_template: str = setting(
        default="https://dex-pr-{number}.preview.example.com",
        env="PREVIEW_BOT_PREVIEW_URL_TEMPLATE",
        help="URL of the running preview, shown in the comment and the deployment.",
        kind=Kind.TEMPLATE,
        placeholders=URL_VARS,
    )
    preview_host_template: str | None = setting(
        default=None,
        env="PREVIEW_BOT_PREVIEW_HOST_TEMPLATE",
        help="If set, the host of every Ingress rule in the preview becomes this host.",
        kind=Kind.TEMPLATE,
        placeholders=URL_VARS,
    )
    overlay_path_template: str = setting(
        default="infra/argocd/previews/pr-{number}/kustomization.yaml",
        env="PREVIEW_BOT_OVERLAY_PATH_TEMPLATE",
        help="Where the PR's kustomization is committed. Must not be inside the base.",
        kind=Kind.TEMPLATE,
        placeholders=PATH_VARS,
    )
    overlay_base: str = setting(
        default="../../overlays/preview",
        env="PREVIEW_BOT_OVERLAY_BASE",
        help="The overlay's `resources` entry, relative to the overlay's directory.",
    )
    deploy_branch: str | None = setting(
        default=None,
        env="PREVIEW_BOT_DEPLOY_BRANCH",
        help="Branch that receives overlay commits and that Argo CD reads; default: the "
        "repository's default branch.",
    )
    argocd_namespace: str = setting(
        default="argocd",
        env="PREVIEW_BOT_ARGOCD_NAMESPACE",
        help="Namespace of Argo CD's Applications.",
    )
    argocd_project: str = setting(
        default="previews",
        env="PREVIEW_BOT_ARGOCD_PROJECT",
        help="Argo CD project of the preview Applications: a fenced one (the chart creates "
        "`previews`), never `default`, which may deploy anything anywhere.",
    )
    argocd_url: str | None = setting(
        default=None,
        env="PREVIEW_BOT_ARGOCD_URL",
        help="Base URL of the Argo CD UI; when set, the comment links to the Application.",
        kind=Kind.URL,
    )
    destination_server: str = setting(
        default="https://kubernetes.default.svc",
        env="PREVIEW_BOT_DESTINATION_SERVER",
        help="Cluster the previews deploy to, as Argo CD names it.",
        kind=Kind.URL,
    )
    kubeconfig: str | None = setting(
        default=None,
        env="KUBECONFIG",
        help="Kubeconfig file; unset means in-cluster configuration when running in a pod.",
    )
    queue_size: int = setting(
        default=1000,
        env="PREVIEW_BOT_QUEUE_SIZE",
        help="Most PRs waiting for a sync; past it deliveries get 503 so GitHub shows the failure.",
        kind=Kind.INT,
    )
    workers: int = setting(
        default=4,
        env="PREVIEW_BOT_WORKERS",
        help="Syncs run at once (never two for one PR).",
        kind=Kind.INT,
    )
    delivery_cache_size: int = setting(
        default=100_000,
        env="PREVIEW_BOT_DELIVERY_CACHE_SIZE",
        help="Most delivery ids remembered for dedupe.",
        kind=Kind.INT,
    )
    delivery_ttl_seconds: int = setting(
        default=3600,
        env="PREVIEW_BOT_DELIVERY_TTL_SECONDS",
        help="How long a delivery id is remembered.",
        kind=Kind.INT,
    )
    retry_seconds: float = setting(
        default=5.0,
        env="PREVIEW_BOT_RETRY_SECONDS",
        help="First backoff after a temporary failure (GitHub 5xx, network, API server); it "
        "doubles per attempt up to 5 minutes. Rate limits wait for their reset instead.",
        kind=Kind.FLOAT,
    )
    teardown_grace_seconds: float = setting(
        default=30.0,
        env="PREVIEW_BOT_TEARDOWN_GRACE_SECONDS",
        help="How long a deleted Application may take to be pruned before the comment says "
        "teardown pending (it says destroyed as soon as Argo CD has pruned it).",
        kind=Kind.FLOAT,
    )
    resync_seconds: int = setting(
        default=300,
        env="PREVIEW_BOT_RESYNC_SECONDS",
        help="Every so often each managed Application's PR is synced again, so a lost webhook "
        "(a missed close, push or unlabel) or a crash heals by itself.",
        kind=Kind.INT,
    )
    log_level: str = setting(
        default="INFO", env="PREVIEW_BOT_LOG_LEVEL", help="DEBUG, INFO, WARNING or ERROR."
    )
    # ---- scope and intake ----------------------------------------------------------------
    repositories: tuple[str, ...] = setting(
        default=(),
        env="PREVIEW_BOT_REPOSITORIES",
        help="The repositories that may get previews: owner/name or shell globs such as "
        "data-literate/*, comma-separated; * means every repository the App is installed on. "
        "Required; deliveries for other repositories are ignored.",
        kind=Kind.LIST,
        required=True,
    )
    max_body_bytes: int = setting(
        default=5 * 1024 * 1024,
        env="PREVIEW_BOT_MAX_BODY_BYTES",
        help="Largest webhook body read (GitHub's pull_request payloads are tens of KB); larger "
        "ones get 413 as soon as they pass it.",
        kind=Kind.INT,
    )
    body_timeout_seconds: float = setting(
        default=10.0,
        env="PREVIEW_BOT_BODY_TIMEOUT_SECONDS",
        help="How long a webhook body may take to arrive in full (GitHub itself gives up after "
        "10 s).",
        kind=Kind.FLOAT,
    )
    max_in_flight: int = setting(
        default=100,
        env="PREVIEW_BOT_MAX_IN_FLIGHT",
        help="Most webhook requests read at once; more get 503 at once (GitHub shows the "
        "failure and can redeliver).",
        kind=Kind.INT,
    )
    # ---- convergence and several replicas ------------------------------------------------
    shutdown_grace_seconds: float = setting(
        default=20.0,
        env="PREVIEW_BOT_SHUTDOWN_GRACE_SECONDS",
        help="On SIGTERM, how long syncs already running may take to finish; keep it below the "
        "pod's terminationGracePeriodSeconds. Queued PRs are picked up by the next resync.",
        kind=Kind.FLOAT,
    )
    leader_election: bool = setting(
        default=False,
        env="PREVIEW_BOT_LEADER_ELECTION",
        help="Several replicas: only the holder of a Lease syncs, watches and resyncs; the "
        "others answer not ready, so webhooks reach the leader only.",
        kind=Kind.BOOL,
    )
    lease_name: str = setting(
        default="preview-bot",
        env="PREVIEW_BOT_LEASE_NAME",
        help="Name of the coordination.k8s.io Lease used for leader election.",
    )
    lease_namespace: str | None = setting(
        default=None,
        env="PREVIEW_BOT_LEASE_NAMESPACE",
        help="Namespace of the Lease; default: the pod's own namespace, else argocd_namespace.",
    )
    lease_seconds: float = setting(
        default=15.0,
        env="PREVIEW_BOT_LEASE_SECONDS",
        help="How long a Lease lasts without renewal: a new leader takes over at most this long "
        "after the old one died (at once after a clean shutdown, which releases it).",
        kind=Kind.FLOAT,
    )
    # ---- who may deploy what -------------------------------------------------------------
    fork_policy: str = setting(
        default="approve",
        env="PREVIEW_BOT_FORK_POLICY",
        help="PRs from forks: deny (never), approve (a maintainer approves each pushed commit "
        "with the label or `/preview approve`) or allow (like branches).",
        kind=Kind.CHOICE,
        choices=("deny", "approve", "allow"),
    )
    drafts: bool = setting(
        default=False,
        env="PREVIEW_BOT_DRAFTS",
        help="Whether a labeled draft PR gets a preview; when false it deploys once marked "
        "ready for review.",
        kind=Kind.BOOL,
    )
    exclude_labels: tuple[str, ...] = setting(
        default=("no-preview",),
        env="PREVIEW_BOT_EXCLUDE_LABELS",
        help="Labels that keep a PR from having a preview (comma-separated); adding one tears "
        "a running preview down.",
        kind=Kind.LIST,
    )
    # ---- readiness -----------------------------------------------------------------------
    required_checks: tuple[str, ...] = setting(
        default=(),
        env="PREVIEW_BOT_REQUIRED_CHECKS",
        help="Check runs or commit statuses (e.g. build) that must have succeeded on the head "
        "commit before it deploys (comma-separated).",
        kind=Kind.LIST,
    )
    image_check: bool = setting(
        default=False,
        env="PREVIEW_BOT_IMAGE_CHECK",
        help="Before deploying, ask the image registry whether image:tag exists (OCI "
        "distribution API); wait until it does.",
        kind=Kind.BOOL,
    )
    registry_insecure: bool = setting(
        default=False,
        env="PREVIEW_BOT_REGISTRY_INSECURE",
        help="Talk plain HTTP to the image registry (a registry inside the cluster or a test).",
        kind=Kind.BOOL,
    )
    registry_credentials_file: str | None = setting(
        default=None,
        env="PREVIEW_BOT_REGISTRY_CREDENTIALS_FILE",
        help='A Docker config.json ({"auths": {registry: {auth}}}) with credentials for the '
        "image registry; unset: anonymous tokens, as public ghcr.io and Docker Hub images allow.",
    )
    image_wait_seconds: float = setting(
        default=1800.0,
        env="PREVIEW_BOT_IMAGE_WAIT",
        help="How long to wait for an image to appear in the registry before the comment says "
        "it failed (checked again with backoff and on every check or status delivery).",
        kind=Kind.DURATION,
    )
    ready_timeout_seconds: int = setting(
        default=600,
        env="PREVIEW_BOT_READY_TIMEOUT_SECONDS",
        help="How long Argo CD may take, once the image is available, to report the preview "
        "synced and healthy before the comment says it timed out.",
        kind=Kind.INT,
    )
    check_run: bool = setting(
        default=False,
        env="PREVIEW_BOT_CHECK_RUN",
        help="Keep a `preview` check run on the head commit (branch protection can require "
        "it); costs one GitHub request per deploy and two per redeploy.",
        kind=Kind.BOOL,
    )
    # ---- lifetime ------------------------------------------------------------------------
    ttl_seconds: float = setting(
        default=604800.0,
        env="PREVIEW_BOT_TTL",
        help="Tear a preview down after this long without activity (push, label, command), "
        "such as 12h or 7d; 0 keeps previews until the PR closes.",
        kind=Kind.DURATION,
    )
    ttl_warning_seconds: float = setting(
        default=86400.0,
        env="PREVIEW_BOT_TTL_WARNING",
        help="How long before the TTL ends the comment warns, with the exact time.",
        kind=Kind.DURATION,
    )
    keep_label: str = setting(
        default="preview:keep",
        env="PREVIEW_BOT_KEEP_LABEL",
        help="A label that exempts a PR's preview from the TTL (as `/preview keep` does).",
    )
    max_previews: int = setting(
        default=0,
        env="PREVIEW_BOT_MAX_PREVIEWS",
        help="Most previews running at once per repository; newly labeled PRs beyond it wait "
        "in a queue ordered by label time. 0: no cap.",
        kind=Kind.COUNT,
    )

    def masked(self) -> dict[str, Any]:
        """The settings as a dict with secrets masked, for `check-config` and logs."""
        out: dict[str, Any] = {}
        for spec in SPECS:
            value = getattr(self, spec.name)
            out[spec.name] = MASK if spec.kind is Kind.SECRET and value else value
        return out


def _spec_of(declared: Field[Any]) -> Spec:
    extras = dict(declared.metadata[_SPEC])
    required = declared.default is MISSING or bool(extras.pop("required", False))
    return Spec(
        name=declared.name,
        default=None if declared.default is MISSING else declared.default,
        required=required,
        **extras,
    )


SPECS: tuple[Spec, ...] = tuple(_spec_of(declared) for declared in fields(Settings))
SPECS_BY_NAME = {spec.name: spec for spec in SPECS}


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


def _either(words: tuple[str, ...]) -> str:
    """`a, b or c`: how a problem line lists the allowed values."""
    if len(words) == 1:
        return words[0]
    return f"{', '.join(words[:-1])} or {words[-1]}"


def _text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"expected a string, got {type(raw).__name__}")
    return raw


def _non_empty(raw: Any) -> str:
    text = _text(raw)
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _parse_str(_spec: Spec, raw: Any) -> str:
    return _non_empty(raw).strip()


def _parse_secret(_spec: Spec, raw: Any) -> str:
    # Kept as given: a secret's spaces are part of it.
    return _non_empty(raw)


def _parse_template(spec: Spec, raw: Any) -> str:
    text = _non_empty(raw)
    unknown = template_fields(text) - spec.placeholders
    if unknown:
        allowed = ", ".join(f"{{{n}}}" for n in sorted(spec.placeholders))
        bad = ", ".join(f"{{{n}}}" for n in sorted(unknown))
        raise ValueError(f"unknown placeholder {bad}; allowed: {allowed}")
    return text


def _parse_url(_spec: Spec, raw: Any) -> str:
    text = _text(raw).strip()
    parsed = urlparse(text)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("expected an http(s) URL such as https://example.com")
    return text.rstrip("/")


def _integer(raw: Any) -> int:
    # YAML gives ints (and bools, which Python counts as ints but nobody means as one);
    # the environment gives text.
    if isinstance(raw, bool):
        raise ValueError("expected an integer")
    if isinstance(raw, int):
        return raw
    text = str(raw).strip()
    if not text.lstrip("-").isdigit():
        raise ValueError("expected an integer")
    return int(text)


def _parse_int(spec: Spec, raw: Any) -> int:
    value = _integer(raw)
    if value < 1 and spec.name == "github_app_id":
        # The one INT that is not a count: say what it is.
        raise ValueError("expected the App's positive numeric id")
    if value < 1:
        raise ValueError("expected a positive integer")
    return value


def _parse_count(_spec: Spec, raw: Any) -> int:
    value = _integer(raw)
    if value < 0:
        raise ValueError("expected 0 or a positive integer")
    return value


def _parse_float(_spec: Spec, raw: Any) -> float:
    try:
        number = float(raw)
    except (TypeError, ValueError):
        raise ValueError("expected a number of seconds") from None
    if not 0 < number <= 3600:
        raise ValueError("expected a number of seconds between 0 and 3600")
    return number


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _parse_bool(_spec: Spec, raw: Any) -> bool:
    if isinstance(raw, bool):  # YAML's own true/false/yes/no/on/off
        return raw
    # str() also takes YAML's 1 and 0, which arrive as ints.
    word = str(raw).strip().lower() if isinstance(raw, str | int) else ""
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("expected true or false")


_DURATION = re.compile(DURATION_PATTERN)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def format_duration(seconds: float) -> str:
    """A duration as a person writes it, in the largest unit that keeps it whole: 7d, 90s, 0.

    The inverse of a DURATION setting's parser (format_duration(parse(x)) reads back as x).
    """
    if seconds == 0:
        return "0"
    for unit in ("d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _parse_duration(_spec: Spec, raw: Any) -> float:
    # A YAML number is read as its text, so -5, 1e+20 and .inf fail as their text would.
    readable = isinstance(raw, str | int | float) and not isinstance(raw, bool)
    match = _DURATION.fullmatch(str(raw).strip()) if readable else None
    if match is None:
        raise ValueError(
            "expected a duration such as 90s, 30m, 12h or 7d, a number of seconds, or 0 for off"
        )
    return float(match[1]) * _UNIT_SECONDS[match[3]]


def _parse_list(_spec: Spec, raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        items: list[Any] = raw.split(",")
    elif isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        items = raw
    else:
        raise ValueError("expected a list of strings, or one string of comma-separated items")
    return tuple(item.strip() for item in items if item.strip())


def _parse_choice(spec: Spec, raw: Any) -> str:
    # Any case is understood; the value is the choice as the spec spells it.
    word = raw.strip().lower() if isinstance(raw, str) else None
    for choice in spec.choices:
        if word == choice.lower():
            return choice
    raise ValueError(f"expected {_either(spec.choices)}")


_PARSERS: dict[Kind, Callable[[Spec, Any], Any]] = {
    Kind.STR: _parse_str,
    Kind.INT: _parse_int,
    Kind.FLOAT: _parse_float,
    Kind.TEMPLATE: _parse_template,
    Kind.URL: _parse_url,
    Kind.SECRET: _parse_secret,
    Kind.BOOL: _parse_bool,
    Kind.DURATION: _parse_duration,
    Kind.LIST: _parse_list,
    Kind.CHOICE: _parse_choice,
    Kind.COUNT: _parse_count,
}


def parse_value(spec: Spec, raw: Any) -> Any:
    """Turn one raw value (from YAML or the environment) into the typed value, or raise."""
    if spec.optional and isinstance(raw, str) and not raw.strip():
        return None
    return _PARSERS[spec.kind](spec, raw)


class _Given(NamedTuple):
    """A raw value and where it was given, which a problem line names."""

    value: Any
    where: str


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
    path = config_file if config_file is not None else env.get(CONFIG_ENV) or None
    given, problems = _read_config_file(path) if path is not None else ({}, [])
    from_env, env_problems = _read_environment(env)
    given.update(from_env)
    values, value_problems = _parse_all(given, require_github=require_github)
    problems += env_problems + value_problems + _cross_checks(values)
    if problems:
        raise SettingsError(problems)
    return Settings(**values)


def _read_config_file(path: str | Path) -> tuple[dict[str, _Given], list[str]]:
    """The settings a YAML file gives; a file that cannot be used at all raises SettingsError."""
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
        raise SettingsError([f"config file {path}: expected a mapping of setting names to values"])
    given: dict[str, _Given] = {}
    problems: list[str] = []
    for key, value in loaded.items():
        if key in SPECS_BY_NAME:
            given[key] = _Given(value, f"{key} (config file {path})")
        else:
            known = ", ".join(sorted(SPECS_BY_NAME))
            problems.append(f"config file {path}: unknown setting {key!r}; known: {known}")
    return given, problems


def _read_environment(env: Mapping[str, str]) -> tuple[dict[str, _Given], list[str]]:
    """The settings the environment gives, directly or through a file an env var names."""
    given: dict[str, _Given] = {}
    problems: list[str] = []
    for spec in SPECS:
        if spec.file_env and env.get(spec.file_env):
            try:
                given[spec.name] = _Given(_read_file_env(spec, spec.file_env, env), spec.file_env)
            except ValueError as exc:
                problems.append(str(exc))
        elif spec.env in env:
            given[spec.name] = _Given(env[spec.env], spec.env)
    return given, problems


def _read_file_env(spec: Spec, file_env: str, env: Mapping[str, str]) -> str:
    """The value in the file that `file_env` names; ValueError carries the problem line."""
    if env.get(spec.env):
        raise ValueError(f"{spec.env} and {file_env}: set one of them, not both")
    path = env[file_env]
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"{file_env}: cannot read file {path}: {exc.strerror or exc}") from exc
    # A secret file made with `echo` or an editor ends in a newline GitHub never sent:
    # keeping it would make every signature check fail.
    return text.rstrip("\r\n") if spec.name == "github_webhook_secret" else text


def _parse_all(
    given: Mapping[str, _Given], *, require_github: bool
) -> tuple[dict[str, Any], list[str]]:
    """The typed value of every setting given (and of required ones), and the problems found."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for spec in SPECS:
        raw = given.get(spec.name)
        if raw is not None and raw.value is not None:  # YAML's null leaves the default
            try:
                values[spec.name] = parse_value(spec, raw.value)
            except ValueError as exc:
                problems.append(f"{raw.where}: {exc}")
        elif spec.required and require_github:
            alt = f" (or {spec.file_env})" if spec.file_env else ""
            problems.append(
                f"{spec.env}{alt}: missing; expected {spec.help[0].lower()}{spec.help[1:]}"
            )
        elif spec.required and spec.default is None:
            # Offline commands never use the App's id or secrets: a stand-in of the right type.
            values[spec.name] = 0 if spec.kind is Kind.INT else ""
    return values, problems


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
    scope = values.get("repositories") or ()
    if may_match_many(tuple(scope)):
        for name in ("app_name_template", "namespace_template"):
            tmpl = values.get(name, SPECS_BY_NAME[name].default)
            if isinstance(tmpl, str) and "{owner}" not in tmpl and "{repo}" not in tmpl:
                problems.append(
                    f"{SPECS_BY_NAME[name].env}: must contain {{owner}} or {{repo}} when "
                    "PREVIEW_BOT_REPOSITORIES can match more than one repository, or two "
                    "repositories' PRs would share a name"
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
