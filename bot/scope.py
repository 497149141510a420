"""Which repositories may get previews: `repositories` patterns matched against owner/name."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from fnmatch import fnmatchcase

EVERYTHING = "*"


# Answers remembered, by (patterns, name): every delivery and every watch event asks, always
# with the same patterns and a few names, and the glob matching was a twentieth of a delivery.
SCOPE_MEMORY = 4096


def in_scope(patterns: Iterable[str], full_name: str) -> bool:
    """True when `full_name` (owner/name) matches one of `patterns`.

    A pattern is `*` (every repository) or owner/name where each side is a shell glob
    (`data-literate/*`, `*/dex`, `acme/dex-[0-9]*`). Sides are matched separately, so a `*` never
    crosses the `/`: `data*` alone names no repository (it has no name side). Case does not
    matter, as in GitHub's own names. No pattern: nothing is in scope (the setting is required;
    an empty one must not mean everything).
    """
    return _in_scope(patterns if isinstance(patterns, tuple) else tuple(patterns), full_name)


@functools.lru_cache(maxsize=SCOPE_MEMORY)
def _in_scope(patterns: tuple[str, ...], full_name: str) -> bool:
    """in_scope's answer, remembered (see SCOPE_MEMORY)."""
    owner, slash, name = full_name.lower().partition("/")
    if not slash or not owner or not name or "/" in name:
        return False
    for pattern in patterns:
        if pattern == EVERYTHING:
            return True
        want_owner, has_slash, want_name = pattern.lower().partition("/")
        if (
            has_slash
            and fnmatchcase(owner, want_owner)
            and "/" not in want_name
            and fnmatchcase(name, want_name)
        ):
            return True
    return False


def may_match_many(patterns: Iterable[str]) -> bool:
    """Whether the scope can hold more than one repository (names must then tell them apart)."""
    listed = list(patterns)
    return len(listed) > 1 or any(ch in p for p in listed for ch in "*?[")
