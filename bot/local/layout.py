"""Local mode's directory: where each thing lives under DIR, and the file helpers it shares."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_DIR = ".preview-bot-local"
DEFAULT_REPOSITORY = "data-literate/dex"  # the owner/name deliveries carry; any name works
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


class LocalError(Exception):
    """Bad input or an unusable local directory; the message tells the user what to do."""


class DeliveryError(LocalError):
    """`simulate` could not reach the server; nothing was changed."""


def now() -> datetime:
    return datetime.now(UTC)


def iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` in one step, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LocalError(f"{path}: cannot read it ({exc}); delete it to start afresh") from exc


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@dataclass(frozen=True)
class Layout:
    """Where local mode keeps each thing under DIR."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "local.json"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def default_repo(self) -> Path:
        return self.root / "repo"

    @property
    def prs(self) -> Path:
        return self.root / "prs"

    @property
    def cluster(self) -> Path:
        return self.root / "cluster"

    @property
    def github(self) -> Path:
        return self.root / "github"

    def pr_json(self, number: int) -> Path:
        return self.prs / f"pr-{number}.json"

    def pr_md(self, number: int) -> Path:
        return self.prs / f"pr-{number}.md"

    def simulated(self, number: int) -> Path:
        return self.github / f"pr-{number}.json"


@dataclass
class LocalConfig:
    """DIR/local.json: what `serve` and `simulate` share (the secret above all)."""

    secret: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    repository: str = DEFAULT_REPOSITORY
    repo_path: str | None = None  # an existing repository (--repo); None: DIR/repo
    branch: str = "main"
    trigger_label: str = "preview"

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host  # noqa: S104
        return f"http://{host}:{self.port}/webhook"

    def repo_dir(self, layout: Layout) -> Path:
        return Path(self.repo_path) if self.repo_path else layout.default_repo.resolve()

    @classmethod
    def load(cls, layout: Layout) -> LocalConfig | None:
        data = read_json(layout.config)
        if data is None:
            return None
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if not isinstance(known.get("secret"), str) or not known["secret"]:
            raise LocalError(f"{layout.config}: no secret in it; delete it to make a new one")
        return cls(**known)

    def save(self, layout: Layout) -> None:
        write_json(layout.config, {**asdict(self), "url": self.url})
