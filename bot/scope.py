"""Which repositories the bot serves: the `repositories` setting's names and shell globs. Pure."""

from __future__ import annotations

from fnmatch import fnmatchcase
from functools import lru_cache


@lru_cache(maxsize=4096)
def in_scope(patterns: tuple[str, ...], full_name: str) -> bool:
    """Whether owner/name matches one of the patterns (`*` matches every repository).

    Case-insensitive, as GitHub's names are; a pattern without `/` matches nothing but `*`.
    """
    name = full_name.lower()
    return any(
        pattern == "*" or ("/" in pattern and fnmatchcase(name, pattern.lower()))
        for pattern in patterns
    )


def may_match_many(patterns: tuple[str, ...]) -> bool:
    """Whether the scope can hold more than one repository (names must then tell them apart)."""
    return len(patterns) > 1 or any(ch in p for p in patterns for ch in "*?[")
