"""The bot's one vocabulary of failure: try again later, or say so once on the PR.

Adapters translate what their library raises (gidgethub, aiohttp, bot.kubeapi, git) into
these types, so the core (sync, service, plan) catches one "try again" type and never imports an
adapter to know what went wrong.
"""

from __future__ import annotations


class TemporaryError(Exception):
    """Worth retrying later: a 5xx, the network, a rate limit, a stale read."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        # Seconds the other side asked us to wait (rate limits); None: the configured backoff.
        self.retry_after = retry_after


class ClusterUnavailable(TemporaryError):
    """The Kubernetes API server could not be reached, or answered 5xx or 429."""


class PermanentError(Exception):
    """Retrying will not help until something changes (a 404, a 422 on our request, no access)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Conflict(Exception):
    """A write was refused because the state moved under it (a stale file sha, a 409)."""
