"""Real git objects for the GitHub fake: one bare repository per fake repo, via the git CLI."""

from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
SHA_RE = re.compile(r"^[0-9a-f]{40}$")

# Isolate git from the developer's config (signing, hooks, templates, init.defaultBranch ...):
# the fake must behave the same on every machine.
_GIT_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
    "LC_ALL": "C",
    "TZ": "UTC",
}


class GitError(RuntimeError):
    """A git command failed."""


@dataclass(frozen=True)
class Person:
    """Author or committer of a commit."""

    name: str
    email: str
    date: datetime

    def git_date(self) -> str:
        return f"@{int(self.date.timestamp())} +0000"

    def iso(self) -> str:
        return self.date.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class TreeEntry:
    """One entry of a git tree; `path` is the full path in recursive listings."""

    mode: str
    type: str
    sha: str
    path: str
    size: int | None = None


@dataclass(frozen=True)
class Commit:
    """A parsed commit object."""

    sha: str
    tree: str
    parents: tuple[str, ...]
    author: Person
    committer: Person
    message: str


_PERSON_RE = re.compile(r"^(?P<name>.*) <(?P<email>[^>]*)> (?P<ts>-?\d+) (?P<tz>[+-]\d{4})$")


def _parse_person(text: str) -> Person:
    m = _PERSON_RE.match(text)
    if m is None:
        raise GitError(f"cannot parse person line {text!r}")
    return Person(m["name"], m["email"], datetime.fromtimestamp(int(m["ts"]), UTC))


class GitStore:
    """A bare git repository; refs are mirrored in memory because only the fake moves them."""

    def __init__(self, path: Path, default_branch: str) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._git("init", "--bare", "--quiet")
        # HEAD decides what `git clone` checks out: point it at the default branch.
        self._git("symbolic-ref", "HEAD", f"refs/heads/{default_branch}")
        self.refs: dict[str, str] = {}
        # Objects never change, so everything read by sha is cached forever.
        self._types: dict[str, str] = {EMPTY_TREE: "tree"}
        self._trees: dict[str, tuple[TreeEntry, ...]] = {EMPTY_TREE: ()}
        self._commits: dict[str, Commit] = {}
        self._blobs: dict[str, bytes] = {}
        self._mktree_cache: dict[tuple[tuple[str, str, str, str], ...], str] = {}

    # -- plumbing ---------------------------------------------------------------------------
    def _git(
        self,
        *args: str,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        full_env = dict(_GIT_ENV)
        if env:
            full_env.update(env)
        done = subprocess.run(
            ["git", f"--git-dir={self.path}", *args],
            input=stdin,
            capture_output=True,
            env=full_env,
            check=False,
        )
        if check and done.returncode != 0:
            raise GitError(f"git {' '.join(args)}: {done.stderr.decode(errors='replace').strip()}")
        return done

    def _out(
        self, *args: str, stdin: bytes | None = None, env: Mapping[str, str] | None = None
    ) -> str:
        return self._git(*args, stdin=stdin, env=env).stdout.decode().strip()

    # -- objects ----------------------------------------------------------------------------
    def object_type(self, sha: str) -> str | None:
        """'blob', 'tree', 'commit', 'tag' or None when the object does not exist."""
        if not SHA_RE.match(sha):
            return None
        if sha in self._types:
            return self._types[sha]
        done = self._git("cat-file", "-t", sha, check=False)
        if done.returncode != 0:
            return None
        kind = done.stdout.decode().strip()
        self._types[sha] = kind
        return kind

    def write_blob(self, data: bytes) -> str:
        sha = self._out("hash-object", "-w", "--stdin", stdin=data)
        self._types[sha] = "blob"
        self._blobs[sha] = data
        return sha

    def read_blob(self, sha: str) -> bytes:
        if sha not in self._blobs:
            self._blobs[sha] = self._git("cat-file", "blob", sha).stdout
        return self._blobs[sha]

    def mktree(self, entries: Iterable[TreeEntry]) -> str:
        """Write a tree from (mode, type, sha, name) entries; mktree sorts them the git way."""
        key = tuple(sorted((e.mode, e.type, e.sha, e.path) for e in entries))
        if key in self._mktree_cache:
            return self._mktree_cache[key]
        payload = b"".join(f"{m} {t} {s}\t{n}".encode() + b"\0" for m, t, s, n in key)
        sha = self._out("mktree", "-z", stdin=payload)
        self._types[sha] = "tree"
        self._mktree_cache[key] = sha
        return sha

    def read_tree(self, sha: str) -> tuple[TreeEntry, ...]:
        """Direct children of a tree (sizes included for blobs)."""
        if sha not in self._trees:
            raw = self._git("ls-tree", "-z", "-l", sha).stdout
            self._trees[sha] = tuple(_parse_ls_tree(raw))
        return self._trees[sha]

    def read_tree_recursive(self, sha: str) -> list[TreeEntry]:
        """Every entry under a tree, subtrees included, with full paths (as `?recursive=1`)."""
        raw = self._git("ls-tree", "-z", "-l", "-r", "-t", sha).stdout
        return _parse_ls_tree(raw)

    def commit_tree(
        self, tree: str, parents: Iterable[str], message: str, author: Person, committer: Person
    ) -> str:
        args = ["commit-tree", tree]
        for parent in parents:
            args += ["-p", parent]
        env = {
            "GIT_AUTHOR_NAME": author.name,
            "GIT_AUTHOR_EMAIL": author.email,
            "GIT_AUTHOR_DATE": author.git_date(),
            "GIT_COMMITTER_NAME": committer.name,
            "GIT_COMMITTER_EMAIL": committer.email,
            "GIT_COMMITTER_DATE": committer.git_date(),
        }
        # `-F -` passes the message verbatim (no editor, no template, no stripping of `#`).
        sha = self._out(*args, "-F", "-", stdin=message.encode(), env=env)
        self._types[sha] = "commit"
        return sha

    def read_commit(self, sha: str) -> Commit:
        if sha not in self._commits:
            raw = self._git("cat-file", "commit", sha).stdout.decode()
            head, _, message = raw.partition("\n\n")
            tree = ""
            parents: list[str] = []
            author = committer = None
            for line in head.splitlines():
                key, _, value = line.partition(" ")
                if key == "tree":
                    tree = value
                elif key == "parent":
                    parents.append(value)
                elif key == "author":
                    author = _parse_person(value)
                elif key == "committer":
                    committer = _parse_person(value)
            if author is None or committer is None:
                raise GitError(f"commit {sha} has no author/committer")
            self._commits[sha] = Commit(sha, tree, tuple(parents), author, committer, message)
        return self._commits[sha]

    def rev_parse(self, name: str) -> str | None:
        """Resolve an abbreviated sha or any git revision to a commit sha."""
        done = self._git("rev-parse", "--verify", "--quiet", f"{name}^{{commit}}", check=False)
        return done.stdout.decode().strip() if done.returncode == 0 else None

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        done = self._git("merge-base", "--is-ancestor", ancestor, descendant, check=False)
        return done.returncode == 0

    def merge_tree(self, ours: str, theirs: str) -> str | None:
        """Tree of a three-way merge of two commits, or None on a conflict (git >= 2.38)."""
        done = self._git("merge-tree", "--write-tree", ours, theirs, check=False)
        if done.returncode == 1:
            return None
        if done.returncode != 0:
            raise GitError(done.stderr.decode(errors="replace"))
        return done.stdout.decode().splitlines()[0].strip()

    def changed_paths(self, sha: str) -> dict[str, str]:
        """Paths a commit changed against its first parent: path -> A/M/D."""
        out = self._git(
            "diff-tree", "--root", "--no-commit-id", "-r", "-z", "--name-status", sha
        ).stdout.decode()
        parts = [p for p in out.split("\0") if p]
        return {parts[i + 1]: parts[i][0] for i in range(0, len(parts) - 1, 2)}

    def rev_list(self, sha: str) -> list[str]:
        return self._out("rev-list", sha).split()

    # -- trees by path ----------------------------------------------------------------------
    def lookup(self, tree: str, path: str) -> TreeEntry | None:
        """The entry at `path` below `tree` (name only in `.path`), or None."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            return TreeEntry("040000", "tree", tree, "")
        current = tree
        entry: TreeEntry | None = None
        for i, part in enumerate(parts):
            entry = next((e for e in self.read_tree(current) if e.path == part), None)
            if entry is None:
                return None
            if i < len(parts) - 1:
                if entry.type != "tree":
                    return None
                current = entry.sha
        return entry

    def edit_tree(self, base: str | None, changes: Mapping[str, TreeEntry | None]) -> str:
        """A new tree: `base` with each path set to an entry (blob/tree/commit) or deleted (None).

        Intermediate directories are created as needed and dropped when they become empty,
        as git itself has no empty directories.
        """
        split = {tuple(p for p in path.split("/") if p): entry for path, entry in changes.items()}
        result = self._edit(base, split)
        return result if result is not None else self.mktree([])

    def _edit(
        self, base: str | None, changes: Mapping[tuple[str, ...], TreeEntry | None]
    ) -> str | None:
        entries = {e.path: e for e in self.read_tree(base)} if base else {}
        nested: dict[str, dict[tuple[str, ...], TreeEntry | None]] = {}
        for parts, entry in changes.items():
            if not parts:
                continue
            if len(parts) == 1:
                if entry is None:
                    entries.pop(parts[0], None)
                else:
                    entries[parts[0]] = TreeEntry(entry.mode, entry.type, entry.sha, parts[0])
            else:
                nested.setdefault(parts[0], {})[parts[1:]] = entry
        for name, sub in nested.items():
            existing = entries.get(name)
            sub_base = existing.sha if existing is not None and existing.type == "tree" else None
            new = self._edit(sub_base, sub)
            if new is None:
                entries.pop(name, None)
            else:
                entries[name] = TreeEntry("040000", "tree", new, name)
        if not entries:
            return None
        return self.mktree(entries.values())

    def files(self, tree: str) -> dict[str, bytes]:
        """Every blob below a tree: path -> content."""
        return {
            e.path: self.read_blob(e.sha)
            for e in self.read_tree_recursive(tree)
            if e.type == "blob"
        }

    # -- refs -------------------------------------------------------------------------------
    def set_ref(self, ref: str, sha: str) -> None:
        old = self.refs.get(ref)
        # Compare-and-swap in git too, so the on-disk repo can never disagree with memory.
        args = ["update-ref", ref, sha] + ([old] if old else [])
        self._git(*args)
        self.refs[ref] = sha

    def delete_ref(self, ref: str) -> None:
        if ref in self.refs:
            self._git("update-ref", "-d", ref)
            del self.refs[ref]

    # -- materialising ----------------------------------------------------------------------
    def checkout(self, commit: str, dest: Path) -> Path:
        """Write the tree of `commit` into `dest` (like `git archive | tar -x`)."""
        dest.mkdir(parents=True, exist_ok=True)
        data = self._git("archive", "--format=tar", commit).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(dest, filter="data")
        return dest


def _parse_ls_tree(raw: bytes) -> list[TreeEntry]:
    entries: list[TreeEntry] = []
    for record in raw.decode().split("\0"):
        if not record:
            continue
        meta, _, path = record.partition("\t")
        mode, kind, sha, size = meta.split(maxsplit=3)
        entries.append(TreeEntry(mode, kind, sha, path, None if size.strip() == "-" else int(size)))
    return entries
