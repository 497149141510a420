"""GitHub's published artifacts (webhook examples and schemas, REST OpenAPI), fetched pinned.

They are fetched with `npm pack` at test-setup time into a cache folder (never committed) and
unpacked one file at a time: the OpenAPI tarball unpacks to 385 MB, we need one 13 MB file of it.
`python -m tests.rig.artifacts` prefetches everything (the Makefile does this before pytest).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PREVIEW_BOT_CACHE", ROOT / ".cache")) / "github-artifacts"

# (npm package, pinned version, member of the tarball we keep)
EXAMPLES = ("@octokit/webhooks-examples", "7.6.1", "package/api.github.com/index.json")
SCHEMAS = ("@octokit/webhooks-schemas", "7.6.1", "package/schema.json")
OPENAPI = ("@octokit/openapi", "23.0.2", "package/generated/api.github.com.json")


def npm_file(package: str, version: str, member: str, dest: Path) -> bytes:
    """The bytes of one `member` of `package@version`'s tarball, fetched into `dest` with
    `npm pack` and removed again (only the member is worth keeping)."""
    tarball = npm_pack(package, version, dest)
    try:
        with tarfile.open(tarball) as tar:
            extracted = tar.extractfile(member)
            if extracted is None:
                raise RuntimeError(f"{member} is not a file in {tarball}")
            return extracted.read()
    finally:
        tarball.unlink()


def npm_pack(package: str, version: str, dest: Path) -> Path:
    """Download `package@version`'s tarball into `dest` with `npm pack`; return its path.

    npm checks the registry's integrity hash of the tarball for us.
    """
    dest.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["npm", "pack", "--silent", f"{package}@{version}", "--pack-destination", str(dest)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        why = done.stderr.strip()[-2000:]
        raise RuntimeError(f"npm pack {package}@{version} failed: {why}")
    return dest / done.stdout.strip().splitlines()[-1]


def _fetch(package: str, version: str, member: str) -> Path:
    """Return the cached file `member` of `package@version`, fetching it once."""
    name = package.strip("@").replace("/", "-")
    target = CACHE / f"{name}-{version}" / Path(member).name
    if target.exists():
        return target
    data = npm_file(package, version, member, target.parent)
    tmp = target.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.rename(target)
    return target


def examples_path() -> Path:
    return _fetch(*EXAMPLES)


def schemas_path() -> Path:
    return _fetch(*SCHEMAS)


def openapi_path() -> Path:
    return _fetch(*OPENAPI)


@functools.cache
def webhook_examples() -> dict[str, list[dict[str, Any]]]:
    """Official example payloads by event name (`pull_request` -> [payload, ...])."""
    data = json.loads(examples_path().read_text())
    return {entry["name"]: entry["examples"] for entry in data}


@functools.cache
def webhook_schema() -> dict[str, Any]:
    """The JSON Schema (draft-07) of every webhook payload, one definition per event$action."""
    result: dict[str, Any] = json.loads(schemas_path().read_text())
    return result


@functools.cache
def webhook_validator(definition: str) -> Any:
    """A draft-07 validator (formats checked too) for one definition such as
    `pull_request$labeled`, or `push$event` for events without actions; built once."""
    import jsonschema

    definitions = webhook_schema()["definitions"]
    if definition not in definitions:
        raise LookupError(f"{definition} is not in @octokit/webhooks-schemas")
    return jsonschema.Draft7Validator(
        {"$ref": f"#/definitions/{definition}", "definitions": definitions},
        format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER,
    )


def webhook_errors(event: str, payload: dict[str, Any]) -> list[Any]:
    """Every way `payload` breaks GitHub's schema for its event and action, in path order."""
    action = payload.get("action")
    validator = webhook_validator(f"{event}${action}" if action else f"{event}$event")
    return sorted(validator.iter_errors(payload), key=lambda e: list(e.absolute_path))


def validate_webhook(event: str, payload: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError unless `payload` fits GitHub's schema for the event."""
    errors = webhook_errors(event, payload)
    if errors:
        raise errors[0]


def official_example(
    event: str, action: str | None = None, *, installation: bool = True
) -> dict[str, Any]:
    """A deep copy of the first official example of `event`/`action`, checked against the schema.

    With `installation`, prefer an example that carries installation.id (an App delivery).
    """
    candidates = [
        ex for ex in webhook_examples()[event] if action is None or ex.get("action") == action
    ]
    if installation:
        candidates.sort(key=lambda ex: "installation" not in ex)
    if not candidates:
        raise LookupError(f"no official example of {event}.{action}")
    payload: dict[str, Any] = json.loads(json.dumps(candidates[0]))
    validate_webhook(event, payload)
    return payload


def app_ping() -> dict[str, Any]:
    """The official example of the ping a GitHub App's webhook sends (its hook has app_id)."""
    for example in webhook_examples()["ping"]:
        if "app_id" in example["hook"]:
            payload: dict[str, Any] = json.loads(json.dumps(example))
            validate_webhook("ping", payload)
            return payload
    raise LookupError("no App ping among the official ping examples")


def main() -> None:
    for path in (examples_path(), schemas_path(), openapi_path()):
        print(f"cached {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
