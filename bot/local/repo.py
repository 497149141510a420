"""A git repository driven through the git CLI: local mode's stand-in for GitHub's git storage."""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from collections.abc import Mapping
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BOT_IDENTITY = ("preview-bot", "preview-bot@users.noreply.localhost")
DEVELOPER_IDENTITY = ("developer", "developer@users.noreply.localhost")
REPO_README = """\
# A throwaway repository for preview-bot's local mode

`preview-bot serve --local` created this repository with a DEX-style infra tree
(`infra/argocd/base`, `infra/argocd/overlays/preview`) and commits each PR's overlay
under `infra/argocd/previews/` on `main`, as it would on GitHub.
"""


class GitError(Exception):
    """A git command failed."""


def _git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    # GIT_DIR and friends leak in when run from a git hook or an IDE; they would point our
    # commands at another repository.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update({"LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"})
    env.update(extra or {})
    return env


class LocalRepo:
    """A git repository driven through the `git` CLI, with plumbing so no checkout is needed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.created = False  # made by this process (create), for the start-up text

    def run(
        self,
        *args: str,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        identity: tuple[str, str] = BOT_IDENTITY,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        name, email = identity
        cmd = [
            "git",
            "-C",
            str(self.path),
            "-c",
            f"user.name={name}",
            "-c",
            f"user.email={email}",
            "-c",
            "commit.gpgsign=false",
            *args,
        ]
        try:
            done = subprocess.run(
                cmd, input=stdin, capture_output=True, env=_git_env(env), timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise GitError(f"git {' '.join(args)}: {exc}") from exc
        if check and done.returncode != 0:
            why = done.stderr.decode(errors="replace").strip()
            raise GitError(f"git {' '.join(args)} in {self.path} failed: {why}")
        return done

    def out(self, *args: str, **kw: Any) -> str:
        return self.run(*args, **kw).stdout.decode().strip()

    @classmethod
    def create(cls, path: Path, skeleton: Traversable, branch: str = "main") -> LocalRepo:
        """A new repository at `path` holding the infra tree, in one commit on `branch`."""
        path.mkdir(parents=True, exist_ok=True)
        repo = cls(path)
        repo.run("init", "-q", "-b", branch)
        _copy_tree(skeleton, path / "infra")
        (path / "README.md").write_text(REPO_README)
        repo.run("add", "-A")
        repo.run(
            "commit", "-q", "-m", "Initial commit: DEX-style infra tree (base + overlays/preview)"
        )
        repo.created = True
        return repo

    def toplevel(self) -> Path | None:
        """The repository `path` is in (its work tree, or the git dir of a bare one)."""
        if not self.path.is_dir():
            return None
        done = self.run("rev-parse", "--show-toplevel", check=False)
        if done.returncode == 0 and done.stdout.strip():
            return Path(done.stdout.decode().strip()).resolve()
        if self.run("rev-parse", "--is-bare-repository", check=False).stdout.strip() == b"true":
            return Path(self.out("rev-parse", "--absolute-git-dir")).resolve()
        return None

    def is_repo(self) -> bool:
        """`path` is a repository's root, not just somewhere inside one: DIR/repo must never
        resolve to a repository around DIR (say, the project local mode is run from)."""
        return self.toplevel() == self.path.resolve()

    def current_branch(self) -> str | None:
        done = self.run("symbolic-ref", "-q", "--short", "HEAD", check=False)
        name = done.stdout.decode().strip()
        return name if done.returncode == 0 and name else None

    def is_bare(self) -> bool:
        return self.out("rev-parse", "--is-bare-repository") == "true"

    def resolve(self, ref: str) -> str | None:
        """The commit sha `ref` names, or None."""
        done = self.run("rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False)
        sha = done.stdout.decode().strip()
        return sha if done.returncode == 0 and sha else None

    def branch_sha(self, branch: str) -> str | None:
        return self.resolve(f"refs/heads/{branch}")

    def entry(self, commit: str, path: str) -> tuple[str, str] | None:
        """(type, sha) of `path` in `commit`'s tree (blob or tree), or None."""
        listing = self.run("ls-tree", "-z", commit, "--", path.strip("/")).stdout.decode()
        for line in filter(None, listing.split("\0")):
            meta, _, name = line.partition("\t")
            if name == path.strip("/"):
                _, kind, sha = meta.split()
                return kind, sha
        return None

    def children(self, commit: str, directory: str) -> list[str]:
        """Names of the entries of `directory` in `commit` (empty when it is no directory)."""
        listing = self.run(
            "ls-tree", "-z", "--name-only", commit, "--", directory.strip("/") + "/"
        ).stdout.decode()
        return [p.rsplit("/", 1)[-1] for p in filter(None, listing.split("\0"))]

    def read(self, commit: str, path: str) -> bytes | None:
        found = self.entry(commit, path)
        if found is None or found[0] != "blob":
            return None
        return self.run("cat-file", "blob", found[1]).stdout

    def write_blob(self, data: bytes) -> str:
        return self.out("hash-object", "-w", "--stdin", stdin=data)

    def make_commit(
        self,
        parent: str,
        changes: Mapping[str, bytes | None],
        message: str,
        identity: tuple[str, str] = BOT_IDENTITY,
    ) -> str:
        """A commit on top of `parent` with `changes` (path -> content, None deletes).

        A throwaway index keeps the repository's own index and working tree untouched, so this
        works on any branch, checked out or not, and never races a user's `git add`.
        """
        lines = []
        for path, data in changes.items():
            clean = path.strip("/")
            if data is None:
                lines.append(f"0 {'0' * 40}\t{clean}")
            else:
                lines.append(f"100644 {self.write_blob(data)}\t{clean}")
        with tempfile.TemporaryDirectory(prefix="preview-bot-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self.run("read-tree", parent, env=env)
            self.run(
                "update-index", "--index-info", stdin=("\n".join(lines) + "\n").encode(), env=env
            )
            tree = self.out("write-tree", env=env)
        return self.out("commit-tree", tree, "-p", parent, "-m", message, identity=identity)

    def move_branch(self, branch: str, new: str, old: str | None) -> bool:
        """Point `branch` at `new` if it still is at `old` (None: must not exist); False if not."""
        done = self.run(
            "update-ref",
            "-m",
            "preview-bot",
            f"refs/heads/{branch}",
            new,
            old or "0" * 40,
            check=False,
        )
        if done.returncode == 0:
            return True
        if self.branch_sha(branch) != old:
            return False
        raise GitError(f"git update-ref {branch} failed: {done.stderr.decode().strip()}")

    def sync_worktree(self, branch: str, old: str, new: str) -> None:
        """Bring a checked-out `branch`'s index and files from `old` to `new`, as a pull would.

        Without this the user would look at files one commit behind, and `git status` would
        show our commit reversed.
        """
        if self.is_bare() or self.current_branch() != branch:
            return
        done = self.run("read-tree", "-m", "-u", old, new, check=False)
        if done.returncode != 0:
            log.warning(
                "the working tree of %s was not updated (%s); the commit is on %s: "
                "run `git reset --keep %s` there",
                self.path,
                done.stderr.decode(errors="replace").strip(),
                branch,
                branch,
            )


def _copy_tree(src: Traversable, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.is_dir():
            _copy_tree(item, dest / item.name)
        elif not item.name.endswith((".py", ".pyc")):
            (dest / item.name).write_bytes(item.read_bytes())


def skeleton_infra() -> Traversable:
    """The DEX-style infra tree shipped in bot/skeleton/infra."""
    return resources.files("bot.skeleton").joinpath("infra")
