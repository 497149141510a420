"""Runs a Dockerfile's steps on this machine, without a Docker engine (CI has none).

Only what our Dockerfile uses is understood: FROM, ARG, ENV, WORKDIR, COPY (honouring
.dockerignore), RUN, USER, EXPOSE, LABEL, ENTRYPOINT and CMD. The "image" is a folder: container
paths named by WORKDIR and by $VIRTUAL_ENV live under it, and the base image's `python` is a
fresh venv of this interpreter, so a RUN that upgrades pip cannot touch the host. Every other
stage runs its RUN lines; the last stage's RUN lines would change the host (useradd), so they
are only checked against an allowlist. What this cannot prove: the base image's own contents
and the C libraries the wheels link against (slim Debian has glibc, which is what they need).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

# ENV values that are container paths and so must move under the image folder.
RELOCATED = frozenset({"VIRTUAL_ENV"})
# Commands the final stage may RUN without them being executed here.
FINAL_STAGE_RUN_ALLOWED = ("groupadd", "useradd")


class DockerfileError(Exception):
    """A Dockerfile this emulator cannot run, or a step that failed."""


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Image:
    """What `docker inspect` would tell about the last stage, with paths relocated."""

    root: Path
    env: dict[str, str]
    workdir: Path
    user: str
    entrypoint: list[str]
    cmd: list[str]
    exposed: list[str]
    labels: dict[str, str]
    skipped_runs: list[str]

    @property
    def venv(self) -> Path:
        return Path(self.env["VIRTUAL_ENV"])

    def argv(self, *args: str) -> list[str]:
        """The process `docker run IMAGE [args]` starts: the entrypoint plus args or CMD."""
        command = [*self.entrypoint, *(args or self.cmd)]
        # exec looks the program up in the image's PATH, not ours.
        found = shutil.which(command[0], path=self.env["PATH"])
        if found is None:
            raise DockerfileError(f"{command[0]} is not on the image's PATH")
        return [found, *command[1:]]


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Joins continuation lines and drops comments, as Docker's parser does."""
    out: list[tuple[int, str]] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buffer):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        out.append((start, " ".join(part for part in buffer if part)))
        buffer = []
    if buffer:
        raise DockerfileError("the Dockerfile ends inside a continued line")
    return out


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in _logical_lines(text):
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            if keyword != "ARG":
                raise DockerfileError(f"line {number}: only ARG may come before FROM")
            name, _, default = args.partition("=")
            global_args[name.strip()] = default.strip()
        else:
            stages[-1].instructions.append(Instruction(keyword, args.strip(), number))
    return global_args, stages


_VAR = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


def expand(text: str, env: dict[str, str]) -> str:
    """Docker's variable substitution: $VAR, ${VAR}, ${VAR:-default}."""

    def one(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain")
        value = env.get(name, "")
        if not value and match.group("default") is not None:
            return match.group("default")
        return value

    return _VAR.sub(one, text)


def _pairs(args: str, env: dict[str, str]) -> dict[str, str]:
    """`k=v k2="v 2"` as ENV and LABEL write them (each value expanded with `env`)."""
    pairs: dict[str, str] = {}
    for word in shlex.split(args):
        if "=" not in word:
            raise DockerfileError(f"expected key=value, got {word!r} (the legacy `ENV k v` form)")
        key, _, value = word.partition("=")
        pairs[key] = expand(value, env)
    return pairs


class IgnoreRules:
    """.dockerignore as Docker applies it: the last pattern matching a path or a parent wins."""

    def __init__(self, context: Path) -> None:
        self.rules: list[tuple[re.Pattern[str], bool]] = []
        path = context / ".dockerignore"
        lines = path.read_text().splitlines() if path.exists() else []
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            self.rules.append((re.compile(self._regex(pattern)), negated))

    @staticmethod
    def _regex(pattern: str) -> str:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                out += ".*"
                i += 2
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return out + r"\Z"

    def excluded(self, relative: str) -> bool:
        parts = relative.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for regex, negated in self.rules:
            if any(regex.match(candidate) for candidate in candidates):
                result = not negated
        return result


@dataclass
class _State:
    env: dict[str, str]
    workdir: Path
    user: str = "0"
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    exposed: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    skipped_runs: list[str] = field(default_factory=list)


class Builder:
    """Builds the Dockerfile in `context` into the folder `root`."""

    def __init__(
        self,
        context: Path,
        root: Path,
        *,
        env: dict[str, str] | None = None,
        unset: tuple[str, ...] = (),
    ) -> None:
        self.context = context
        self.root = root
        self.ignore = IgnoreRules(context)
        self.unset = unset  # ENV the Dockerfile sets that this run deliberately drops
        base_bin = self._base_python()
        self.base_env = {
            "PATH": f"{base_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            **(env or {}),
        }
        self.stage_outputs: dict[str, _State] = {}

    def _base_python(self) -> Path:
        """A venv of this interpreter standing in for the base image's python and pip."""
        base = self.root / "_base-image"
        base_python = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base_python, "-m", "venv", str(base)], check=True, capture_output=True)
        return base / "bin"

    def path(self, container_path: str) -> Path:
        """Where a container path lives here; a relocated $VIRTUAL_ENV is already there."""
        if Path(container_path).is_relative_to(self.root):
            return Path(container_path)
        return self.root / container_path.lstrip("/")

    def build(self, dockerfile: Path) -> Image:
        global_args, stages = parse(dockerfile.read_text())
        state = None
        for index, stage in enumerate(stages):
            final = index == len(stages) - 1
            state = self._stage(stage, dict(global_args), final=final)
            self.stage_outputs[stage.name or str(index)] = state
        if state is None:
            raise DockerfileError("no FROM in the Dockerfile")
        return Image(
            root=self.root,
            env=state.env,
            workdir=state.workdir,
            user=state.user,
            entrypoint=state.entrypoint,
            cmd=state.cmd,
            exposed=state.exposed,
            labels=state.labels,
            skipped_runs=state.skipped_runs,
        )

    def _stage(self, stage: Stage, args: dict[str, str], *, final: bool) -> _State:
        state = _State(env=dict(self.base_env), workdir=self.path("/"))
        for ins in stage.instructions:
            where = f"Dockerfile line {ins.line} ({ins.keyword})"
            # Build args are visible to RUN and to substitution, but not kept in the image.
            scope = {**args, **state.env}
            if ins.keyword == "ARG":
                name, _, default = ins.args.partition("=")
                args[name.strip()] = args.get(name.strip(), "") or expand(default.strip(), scope)
            elif ins.keyword == "ENV":
                for key, value in _pairs(ins.args, scope).items():
                    if key in self.unset:
                        continue
                    state.env[key] = str(self.path(value)) if key in RELOCATED else value
            elif ins.keyword == "WORKDIR":
                state.workdir = self.path(expand(ins.args, scope))
                state.workdir.mkdir(parents=True, exist_ok=True)
            elif ins.keyword == "COPY":
                self._copy(ins.args, scope, state, where)
            elif ins.keyword == "RUN":
                # No Docker-side substitution in RUN: the shell expands, with ARGs in its env.
                command = ins.args
                if final:
                    programs = {step.split()[0] for step in command.split("&&")}
                    if not programs <= set(FINAL_STAGE_RUN_ALLOWED):
                        raise DockerfileError(f"{where}: cannot emulate `{command}`")
                    state.skipped_runs.append(command)
                    continue
                done = subprocess.run(
                    ["/bin/sh", "-c", command],
                    cwd=state.workdir,
                    env=scope,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if done.returncode != 0:
                    raise DockerfileError(
                        f"{where}: `{command}` exited {done.returncode}\n"
                        f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
                    )
            elif ins.keyword == "USER":
                state.user = expand(ins.args, scope)
            elif ins.keyword == "EXPOSE":
                state.exposed.extend(expand(ins.args, scope).split())
            elif ins.keyword == "LABEL":
                state.labels.update(_pairs(ins.args, scope))
            elif ins.keyword in ("ENTRYPOINT", "CMD"):
                try:
                    value = json.loads(ins.args)
                except json.JSONDecodeError as exc:
                    raise DockerfileError(f"{where}: use the exec (JSON) form") from exc
                if ins.keyword == "ENTRYPOINT":
                    state.entrypoint = value
                else:
                    state.cmd = value
            else:
                raise DockerfileError(f"{where}: not supported by this emulator")
        return state

    def _copy(self, raw: str, scope: dict[str, str], state: _State, where: str) -> None:
        words = [expand(word, scope) for word in shlex.split(raw)]
        flags = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        *sources, dest = paths
        from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        if from_stage is not None:
            # Same path in and out, so the venv's absolute shebangs stay valid: nothing to copy.
            if from_stage not in self.stage_outputs:
                raise DockerfileError(f"{where}: no earlier stage named {from_stage}")
            for source in sources:
                if source != dest or not self.path(source).exists():
                    raise DockerfileError(
                        f"{where}: expected `COPY --from` of an existing "
                        f"path onto itself, got {source} -> {dest}"
                    )
            return
        target = state.workdir / dest if not dest.startswith("/") else self.path(dest)
        for source in sources:
            src = self.context / source
            files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
            copied = 0
            for file in files:
                relative = file.relative_to(self.context).as_posix()
                if self.ignore.excluded(relative):
                    continue
                if src.is_file():
                    out = target / file.name if dest.endswith("/") else target
                else:
                    out = target / file.relative_to(src)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, out)
                copied += 1
            if copied == 0:
                raise DockerfileError(f"{where}: {source} is empty or excluded by .dockerignore")
