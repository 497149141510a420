"""`preview-bot serve` runs uvicorn on uvloop and httptools when they import, else on asyncio
and h11."""

from __future__ import annotations

import importlib.util
from importlib.machinery import ModuleSpec

import pytest

from bot.wiring import ServerImpl, server_impl


def test_uvloop_and_httptools_when_installed() -> None:
    # Runtime dependencies: the venv (and the image, from requirements.lock) has them.
    assert server_impl() == ServerImpl(loop="uvloop", http="httptools")


@pytest.mark.parametrize(
    ("missing", "expected"),
    [
        ({"uvloop"}, ServerImpl(loop="asyncio", http="httptools")),
        ({"httptools"}, ServerImpl(loop="uvloop", http="h11")),
        ({"uvloop", "httptools"}, ServerImpl(loop="asyncio", http="h11")),
    ],
)
def test_falls_back_to_the_pure_python_ones(
    monkeypatch: pytest.MonkeyPatch, missing: set[str], expected: ServerImpl
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> ModuleSpec | None:
        return None if name in missing else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert server_impl() == expected
