"""Scope: which repositories' deliveries the bot acts on (`repositories` patterns)."""

from __future__ import annotations

import pytest

from bot.scope import in_scope


@pytest.mark.parametrize(
    ("patterns", "name", "expected"),
    [
        (("*",), "data-literate/dex", True),
        (("data-literate/dex",), "data-literate/dex", True),
        (("data-literate/dex",), "Data-Literate/DEX", True),  # GitHub names ignore case
        (("Data-Literate/*",), "data-literate/dex", True),
        (("data-literate/*",), "other/dex", False),
        (("*/dex",), "anyone/dex", True),
        (("*/dex",), "anyone/dex2", False),
        (("acme/dex-[0-9]*",), "acme/dex-2", True),
        (("acme/dex-[0-9]*",), "acme/dex-x", False),
        (("acme/d?x",), "acme/dex", True),
        (("data*",), "data-literate/dex", False),  # no name side: names no repository
        (("data-literate*",), "data-literate/dex", False),
        (("a/*",), "a/b/c", False),  # not an owner/name at all
        (("a/b/c",), "a/b", False),
        (("a/b", "c/*"), "c/d", True),
        ((), "a/b", False),  # nothing configured: nothing in scope, never everything
        (("*",), "no-slash", False),
        (("*",), "/b", False),
        (("*",), "a/", False),
        (("*",), "", False),
    ],
)
def test_in_scope(patterns: tuple[str, ...], name: str, expected: bool) -> None:
    assert in_scope(patterns, name) is expected
