"""Every HTTP request to GitHub, below gidgethub: rate limits, the host's breaker, counting.

gidgethub builds requests and reads answers; its `_request` is where bytes would leave, so the
client here sends through `Transport.send`, which refuses (TemporaryError with retry_after,
nothing sent) while a pause forbids the request, paces writes after a secondary rate limit,
feeds every answer's rate-limit headers to the Throttle and every outcome to the host's Breaker.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cachetools import LRUCache
from gidgethub.aiohttp import GitHubAPI

from bot import USER_AGENT
from bot.errors import TemporaryError
from bot.metrics import Metrics
from bot.throttle import (
    MUTATING,
    Breaker,
    BreakerPolicy,
    Clock,
    Pause,
    PauseKind,
    Throttle,
    read_answer,
)

log = logging.getLogger(__name__)

# GitHub answers or gives up within 10 s; a longer silence is an outage, and an outage must
# reach the breaker rather than hold a worker for aiohttp's default five minutes.
TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=10)
# After a secondary limit writes wait for their turn; beyond this wait the sync is retried
# later instead of holding a worker.
MAX_WRITE_WAIT = 10.0

Answer3 = tuple[int, Mapping[str, str], bytes]


class Refused(TemporaryError):
    """Not sent: a pause forbids the request until retry_after."""


def _who(installation_id: int | None) -> str:
    return "app" if installation_id is None else str(installation_id)


class Transport:
    """Sends GitHub requests for one App, under its rate limits and its hosts' breakers."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        clock: Clock,
        metrics: Metrics | None = None,
        breaker_policy: BreakerPolicy | None = None,
    ) -> None:
        self.session = session
        self.clock = clock
        self.metrics = metrics
        self.throttle = Throttle(clock.now)
        self._breaker_policy = breaker_policy or BreakerPolicy()
        self._breakers: dict[str, Breaker] = {}  # one per host: the API root, rarely two

    def breaker(self, url: str) -> Breaker:
        host = urlsplit(url).netloc
        found = self._breakers.get(host)
        if found is None:
            found = self._breakers[host] = Breaker(self.clock.now, self._breaker_policy)
        return found

    def client(
        self, installation_id: int | None, token: str | None, base_url: str
    ) -> GatedGitHubAPI:
        """A gidgethub client whose requests go through here (token None: the App's JWT)."""
        return GatedGitHubAPI(self, installation_id, token, base_url)

    async def send(
        self,
        installation_id: int | None,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes = b"",
    ) -> Answer3:
        """One request, unless a pause forbids it (Refused, nothing sent)."""
        breaker = self.breaker(url)
        await self._admit(installation_id, method, breaker)
        probe = breaker.is_open  # admitted while open: this request is the breaker's probe
        try:
            async with self.session.request(
                method, url, headers=headers, data=body, timeout=TIMEOUT
            ) as resp:
                status, resp_headers, data = resp.status, resp.headers, await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError):
            self._failed(breaker, url)
            raise
        except BaseException:
            if probe:
                breaker.abandoned()
            raise
        if self.metrics is not None:
            self.metrics.github_requests.labels(method=method, status=str(status)).inc()
        if status >= 500:
            self._failed(breaker, url)
        else:
            breaker.succeeded()
        self._observe(installation_id, status, resp_headers, data)
        return status, resp_headers, data

    # -- before ---------------------------------------------------------------------------------
    async def _admit(self, installation_id: int | None, method: str, breaker: Breaker) -> None:
        self._refuse_paused(installation_id)
        if method in MUTATING:
            wait = self.throttle.write_wait()
            if wait > MAX_WRITE_WAIT:
                raise self._refused(
                    PauseKind.SECONDARY,
                    wait,
                    f"GitHub writes are paced after a rate limit; next turn in {wait:.0f}s",
                )
            wait = self.throttle.reserve_write()
            if wait > 0:
                await self.clock.sleep(wait)
                self._refuse_paused(installation_id)  # a pause may have begun meanwhile
        wait = breaker.admit()
        if wait > 0:
            raise self._refused(
                PauseKind.CIRCUIT, wait, f"GitHub keeps failing; not calling it for {wait:.0f}s"
            )

    def _refuse_paused(self, installation_id: int | None) -> None:
        pause = self.throttle.pause(installation_id)
        if pause is not None:
            raise self._refused(pause.kind, pause.seconds, _describe(pause, installation_id))

    def _refused(self, kind: PauseKind, seconds: float, why: str) -> Refused:
        if self.metrics is not None:
            self.metrics.github_refused.labels(kind=kind.value).inc()
        return Refused(why, retry_after=seconds)

    # -- after ----------------------------------------------------------------------------------
    def _failed(self, breaker: Breaker, url: str) -> None:
        if breaker.failed():
            log.warning(
                "GitHub at %s failed %d times in a row; no calls for %.0fs",
                urlsplit(url).netloc,
                breaker.failures,
                breaker.cooldown,
            )
            if self.metrics is not None:
                self.metrics.github_pauses.labels(kind=PauseKind.CIRCUIT.value).inc()

    def _observe(
        self, installation_id: int | None, status: int, headers: Mapping[str, str], body: bytes
    ) -> None:
        answer = read_answer(status, headers, body)
        if self.metrics is not None and answer.remaining is not None:
            self.metrics.github_rate_remaining.labels(installation=_who(installation_id)).set(
                answer.remaining
            )
        started = self.throttle.observe(installation_id, answer)
        if started is not None:
            log.warning("%s", _describe(started, installation_id))
            if self.metrics is not None:
                self.metrics.github_pauses.labels(kind=started.kind.value).inc()
        if answer.status in (403, 429) and (answer.exhausted or answer.secondary):
            # The answer is the limit itself: a retry at the pause's end, not an error to map.
            pause = started or self.throttle.pause(installation_id)
            wait = pause.seconds if pause is not None else None
            kind = "secondary" if answer.secondary else "primary"
            raise TemporaryError(f"GitHub {kind} rate limit ({status})", retry_after=wait)


def _describe(pause: Pause, installation_id: int | None) -> str:
    if pause.kind is PauseKind.PRIMARY:
        return (
            f"GitHub rate limit of installation {_who(installation_id)} spent; "
            f"paused for {pause.seconds:.0f}s until its reset"
        )
    return f"GitHub secondary rate limit: the App pauses for {pause.seconds:.0f}s"


class GatedGitHubAPI(GitHubAPI):
    """gidgethub's aiohttp client, sending through a Transport."""

    def __init__(
        self,
        transport: Transport,
        installation_id: int | None,
        token: str | None,
        base_url: str,
    ) -> None:
        super().__init__(transport.session, USER_AGENT, oauth_token=token, base_url=base_url)
        self._transport = transport
        self.installation_id = installation_id

    async def _request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes = b""
    ) -> Answer3:
        return await self._transport.send(self.installation_id, method, url, headers, body)

    async def sleep(self, seconds: float) -> None:
        await self._transport.clock.sleep(seconds)


@dataclass(frozen=True)
class Held:
    """What the conditional cache keeps of one answer: its ETag and the caller's compact value."""

    etag: str
    value: Any
    next_url: str | None  # the page after, for lists


class ConditionalCache:
    """ETag -> compact value, bounded (least recently used dropped first).

    Keys carry the installation (one installation must never see another's answer) and the
    converter (two readers of one URL may keep different values).
    """

    def __init__(self, size: int) -> None:
        self._held: LRUCache[tuple[int, str, object], Held] = LRUCache(size)

    def get(self, installation_id: int, url: str, convert: object) -> Held | None:
        return self._held.get((installation_id, url, convert))

    def put(self, installation_id: int, url: str, convert: object, held: Held) -> None:
        self._held[(installation_id, url, convert)] = held

    def __len__(self) -> int:
        return len(self._held)

    @property
    def maxsize(self) -> int:
        return int(self._held.maxsize)
