"""The App's identity: its private key (parsed once), its JWT (minted every few minutes) and
installation tokens (one request in flight per installation, backing off after failures).

Parsing an RSA key costs tens of milliseconds of CPU on the event loop, and gidgethub's
`apps.get_jwt` parses it on every call; so the key is loaded once at start, and the JWT, valid
for ten minutes, is reused for most of them.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import jwt
from cachetools import LRUCache
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from bot.errors import TemporaryError
from bot.github_http import Refused, Transport
from bot.throttle import Backoff

log = logging.getLogger(__name__)

TOKEN_MARGIN = 300  # seconds before expires_at at which a token is renewed
JWT_BACKDATE = 60  # iat this far in the past: GitHub's clock may be behind ours
JWT_LIFETIME = 600  # exp - iat; GitHub refuses an exp more than ten minutes ahead
JWT_RENEW = 120  # renew this long before exp, so a JWT never expires in flight
# gidgethub's own media type for this call (apps.get_installation_access_token).
ACCESS_TOKENS_ACCEPT = "application/vnd.github.machine-man-preview+json"


def load_key(pem: str) -> RSAPrivateKey:
    """The App's RSA key from its PEM; ValueError saying what is wrong otherwise."""
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"the GitHub App private key cannot be read: {exc}") from None
    if not isinstance(key, RSAPrivateKey):
        raise ValueError("the GitHub App private key is not an RSA key (GitHub signs RS256)")
    return key


class AppAuth:
    """JWTs and installation tokens of one App, requested through a Transport."""

    def __init__(self, transport: Transport, app_id: int, private_key: str, base_url: str) -> None:
        self._transport = transport
        self._clock = transport.clock
        self._app_id = str(app_id)
        self._base_url = base_url
        self._key = load_key(private_key)
        self.key_parses = 1
        self.jwt_mints = 0
        self.token_requests = 0
        self._jwt: tuple[str, float] | None = None  # (token, exp)
        self._tokens: LRUCache[int, tuple[str, float]] = LRUCache(10_000)  # (token, expires)
        self._flights: dict[int, asyncio.Future[str]] = {}  # only while a request is out
        self.backoff = Backoff(self._clock.now)

    def app_jwt(self) -> str:
        """The App's JWT, minted again only when close to its expiry."""
        now = self._clock.now()
        if self._jwt is None or now >= self._jwt[1] - JWT_RENEW:
            iat = int(now) - JWT_BACKDATE
            exp = iat + JWT_LIFETIME
            claims = {"iat": iat, "exp": exp, "iss": self._app_id}
            token = jwt.encode(claims, self._key, algorithm="RS256")
            self._jwt = (token, float(exp))
            self.jwt_mints += 1
        return self._jwt[0]

    def cached_token(self, installation_id: int) -> str | None:
        held = self._tokens.get(installation_id)
        if held is not None and held[1] - TOKEN_MARGIN > self._clock.now():
            return held[0]
        return None

    def forget(self, installation_id: int) -> None:
        """Drop a token GitHub refused (revoked, App reinstalled): the next call gets another."""
        self._tokens.pop(installation_id, None)

    async def token(self, installation_id: int) -> str:
        """A valid installation token. Concurrent callers share one request; after a failed
        request the installation waits (1 s, doubling, up to 5 min) before the next one."""
        cached = self.cached_token(installation_id)
        if cached is not None:
            return cached
        flight = self._flights.get(installation_id)
        if flight is None:
            wait = self.backoff.wait(installation_id)
            if wait > 0:
                raise TemporaryError(
                    f"the installation token request for {installation_id} failed; "
                    f"next try in {wait:.0f}s",
                    retry_after=wait,
                )
            flight = asyncio.ensure_future(self._request_token(installation_id))
            self._flights[installation_id] = flight
            flight.add_done_callback(lambda done: self._landed(installation_id, done))
        # shield: a caller that gives up must not cancel the request the others wait for.
        return await asyncio.shield(flight)

    def _landed(self, installation_id: int, done: asyncio.Future[str]) -> None:
        self._flights.pop(installation_id, None)
        if not done.cancelled():
            done.exception()  # seen here, so no "never retrieved" warning when nobody waits

    async def _request_token(self, installation_id: int) -> str:
        gh = self._transport.client(None, None, self._base_url)
        try:
            data: Any = await gh.post(
                "/app/installations/{installation_id}/access_tokens",
                {"installation_id": installation_id},
                data=b"",
                accept=ACCESS_TOKENS_ACCEPT,
                jwt=self.app_jwt(),
            )
        except Refused:
            raise  # never sent: the pause's own retry_after says when to come back
        except Exception as exc:
            delay = self.backoff.failed(installation_id)
            log.warning(
                "installation token request for %s failed (%s); next try in %.0fs",
                installation_id,
                exc,
                delay,
            )
            raise
        self.token_requests += 1
        self.backoff.succeeded(installation_id)
        expires = datetime.fromisoformat(str(data["expires_at"]).replace("Z", "+00:00"))
        token = str(data["token"])
        self._tokens[installation_id] = (token, expires.timestamp())
        return token
