"""The image gate's registry probe: does image:tag exist yet (OCI distribution API, aiohttp)."""

from __future__ import annotations

import base64
import binascii
import email.utils
import enum
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from cachetools import TLRUCache
from multidict import CIMultiDictProxy
from yarl import URL

from bot import USER_AGENT
from bot.config import SPECS_BY_NAME, Settings
from bot.errors import PermanentError, TemporaryError

log = logging.getLogger(__name__)

DOCKER_HUB = "registry-1.docker.io"
# What Docker's tools call Docker Hub, in image references and as config.json keys
# (`docker login` writes https://index.docker.io/v1/).
DOCKER_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
# A HEAD must accept every manifest kind CI may push, or a registry answers 404 for a tag that
# exists under a type we did not list (an OCI index from buildx, a Docker list, a single image).
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
REQUEST_TIMEOUT = 30.0  # seconds per request, connecting included; a hung registry is a retry
DEFAULT_TOKEN_SECONDS = 60.0  # the token spec's lifetime when the answer has no expires_in
TOKEN_MARGIN = 5.0  # seconds before expiry at which a token is renewed, so none lapses in flight
TOKEN_CACHE_SIZE = 128  # (registry, scope) pairs; the bot checks one image, this is a ceiling

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[A-Za-z0-9=_-]{32,}")
_MAX_NAME = 255  # the distribution spec's limit on a repository name

# RFC 9110 challenges: `scheme [token68 | param=value, ...]`, several per header.
_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_ITEM = re.compile(
    r"\s*(?:"
    rf'(?P<key>{_TCHARS})\s*=\s*(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<value>{_TCHARS}))'
    rf"|(?P<scheme>{_TCHARS})(?:\s+[A-Za-z0-9._~+/-]+=*(?=\s*(?:,|$)))?(?=\s|,|$)"
    r")\s*,?"
)
_ESCAPE = re.compile(r"\\(.)")


def _setting(name: str) -> str:
    return f"{name} ({SPECS_BY_NAME[name].env})"


CREDENTIALS_SETTING = _setting("registry_credentials_file")
INSECURE_SETTING = _setting("registry_insecure")


@dataclass(frozen=True)
class ImageReference:
    """Where an image lives: the registry's host[:port] and the repository inside it."""

    registry: str  # Docker Hub's short forms resolved to registry-1.docker.io
    repository: str  # e.g. data-literate/dex, library/nginx


def parse_reference(image: str) -> ImageReference:
    """`ghcr.io/org/name`, `host:5000/team/name`, `localhost/name`, `nginx`, `user/app`.

    The first component names a registry when it looks like a host (a dot, a port or
    `localhost`), as Docker decides; otherwise the image is on Docker Hub, where a single
    name is an official image under `library/`. Raises ValueError saying what is wrong.
    """
    first, slash, rest = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first.lower(), rest
    else:
        registry, path = DOCKER_HUB, image
    if not _HOST.fullmatch(registry):
        raise ValueError(f"{image!r}: {registry!r} is not a registry host[:port]")
    if registry in DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    if "@" in path or ":" in path:
        raise ValueError(
            f"{image!r} carries a tag or digest: give the image name alone "
            "(the tag comes from image_tag_template)"
        )
    bad = next((part for part in path.split("/") if not _COMPONENT.fullmatch(part)), None)
    if bad is not None:
        raise ValueError(
            f"{image!r} is not an image name: {bad!r} is not a lower-case name component"
        )
    if len(path) > _MAX_NAME:
        raise ValueError(f"{image!r} is longer than {_MAX_NAME} characters")
    return ImageReference(registry, path)


def check_tag(tag: str) -> str:
    """The tag (or `algo:hex` digest) if a registry can serve it; ValueError otherwise."""
    if _TAG.fullmatch(tag) or _DIGEST.fullmatch(tag):
        return tag
    raise ValueError(f"{tag!r} is not an image tag (letters, digits, _ . -, at most 128)")


@dataclass(frozen=True)
class Challenge:
    """One `WWW-Authenticate` challenge: scheme and parameters, both names in lower case."""

    scheme: str
    params: Mapping[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """Every challenge in one `WWW-Authenticate` value; ValueError if it cannot be read."""
    found: list[tuple[str, dict[str, str]]] = []
    pos, text = 0, header.strip()
    while pos < len(text):
        match = _ITEM.match(text, pos)
        if match is None:
            raise ValueError(f"cannot read WWW-Authenticate {header!r} at {text[pos:]!r}")
        pos = match.end()
        if match["scheme"] is not None:
            found.append((match["scheme"].lower(), {}))
        elif not found:
            raise ValueError(f"WWW-Authenticate {header!r} has a parameter before any scheme")
        else:
            quoted = match["quoted"]
            value = match["value"] if quoted is None else _ESCAPE.sub(r"\1", quoted)
            found[-1][1][match["key"].lower()] = value
    return [Challenge(scheme, params) for scheme, params in found]


@dataclass(frozen=True)
class Credentials:
    """A username and password for one registry, from the Docker config.json."""

    username: str
    password: str = field(repr=False)

    def basic(self) -> str:
        """The value of an `Authorization: Basic` header."""
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()


def _registry_of_key(key: str) -> str:
    # Keys are host[:port], sometimes a URL: Docker Hub's is https://index.docker.io/v1/.
    return key.split("://", 1)[-1].split("/", 1)[0].lower()


def lookup_credentials(config: Mapping[str, Any], registry: str) -> Credentials | None:
    """The `auths` entry of a Docker config.json for `registry`, or None if it has none."""
    auths = config.get("auths")
    if auths is None:
        return None
    if not isinstance(auths, Mapping):
        raise ValueError('"auths" is not an object')
    wanted = DOCKER_HUB_ALIASES if registry in DOCKER_HUB_ALIASES else {registry}
    for key, entry in auths.items():
        if _registry_of_key(str(key)) in wanted:
            return _entry_credentials(str(key), entry)
    return None


def _entry_credentials(key: str, entry: Any) -> Credentials:
    where = f'auths["{key}"]'
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} is not an object")
    auth = entry.get("auth")
    if auth:
        try:
            pair = base64.b64decode(str(auth), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ValueError(f"{where}.auth is not base64") from None
        username, colon, password = pair.partition(":")
        if not colon or not username:
            raise ValueError(f'{where}.auth is not base64 of "username:password"')
        return Credentials(username, password)
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and name and isinstance(secret, str):
        return Credentials(name, secret)
    raise ValueError(
        f"{where} has neither auth nor username and password "
        "(credential helpers and identity tokens are not supported)"
    )


def parse_token_answer(body: bytes) -> tuple[str, float]:
    """(token, lifetime in seconds) from a token service's JSON; ValueError if it has none."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the answer is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("the answer is not a JSON object")
    # `token` is the distribution spec's name; OAuth2-style services send `access_token`.
    token = data.get("token") or data.get("access_token")
    if not isinstance(token, str) or not token:
        raise ValueError("the answer holds no token")
    seconds = data.get("expires_in")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
        seconds = DEFAULT_TOKEN_SECONDS
    return token, float(seconds)


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """A Retry-After header (seconds or an HTTP date) as seconds from `now`; None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" reads as naive: HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


class Verdict(enum.Enum):
    """What a registry's status code means for the question "is the image there?"."""

    FOUND = enum.auto()
    MISSING = enum.auto()
    DENIED = enum.auto()
    RETRY = enum.auto()
    UNEXPECTED = enum.auto()


def verdict_of(status: int) -> Verdict:
    """200 found, 404 missing, 401/403 denied, 408/429/5xx retry, the rest unexpected.

    A 401 or 403 is never read as "missing": distribution checks access before it looks the
    repository up (its token access controller answers 401 insufficient_scope for a private
    repository and for one that does not exist alike), so a refusal says nothing about the
    tag, and waiting for it would only turn a credentials problem into a timeout.
    """
    if status == 200:
        return Verdict.FOUND
    if status == 404:
        return Verdict.MISSING
    if status in (401, 403):
        return Verdict.DENIED
    if status in (408, 429) or status >= 500:
        return Verdict.RETRY
    return Verdict.UNEXPECTED


@dataclass(frozen=True)
class _Token:
    value: str
    seconds: float
    credentials: Credentials | None  # who it was asked for: None is an anonymous token


def _token_deadline(_key: tuple[str, str], token: _Token, now: float) -> float:
    return now + max(token.seconds - TOKEN_MARGIN, 0.0)


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class Registry:
    """Asks image registries whether a manifest exists, with Bearer tokens cached per scope."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: Settings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._scheme = "http" if settings.registry_insecure else "https"
        self._credentials_file = settings.registry_credentials_file
        self._tokens: TLRUCache[tuple[str, str], _Token] = TLRUCache(
            maxsize=TOKEN_CACHE_SIZE, ttu=_token_deadline, timer=clock
        )

    async def manifest_exists(self, image: str, tag: str) -> bool:
        """True if image:tag is in its registry (200), False if not (404).

        Raises TemporaryError when the registry cannot answer now (network, timeout, 5xx,
        429) and PermanentError when it will not until the settings change (denied, bad
        credentials, a TLS failure, a malformed name).
        """
        try:
            ref = parse_reference(image)
            check_tag(tag)
        except ValueError as exc:
            raise PermanentError(f"image {image}:{tag}: {exc}") from exc
        url = URL(f"{self._scheme}://{ref.registry}/v2/{ref.repository}/manifests/{tag}")
        key = (ref.registry, f"repository:{ref.repository}:pull")
        token = self._tokens.get(key)
        answer = await self._head(url, token)
        if answer.status == 401:
            # Asked without a token, or the cached one was refused (revoked, expired early):
            # forget it, follow the challenge once, and take the second answer as final.
            self._tokens.pop(key, None)
            token = await self._authorize(ref, answer.headers)
            if token.seconds > 0:
                self._tokens[key] = token
            answer = await self._head(url, token)
        return self._exists(ref, answer, token)

    async def _head(self, url: URL, token: _Token | None) -> _Answer:
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        if token is not None:
            headers["Authorization"] = token.value
        return await self._request("HEAD", url, headers)

    def _exists(self, ref: ImageReference, answer: _Answer, token: _Token | None) -> bool:
        verdict = verdict_of(answer.status)
        if verdict is Verdict.FOUND:
            return True
        if verdict is Verdict.MISSING:
            return False
        if verdict is Verdict.RETRY:
            after = retry_after_seconds(answer.headers.get("Retry-After"), datetime.now(UTC))
            raise TemporaryError(
                f"{ref.registry} answered {answer.status} for {ref.repository}", after
            )
        if verdict is Verdict.DENIED:
            raise PermanentError(self._denied(ref, token), answer.status)
        raise PermanentError(
            f"{ref.registry} answered {answer.status} when asked for a manifest of "
            f"{ref.repository}: is image_name an OCI registry's image?",
            answer.status,
        )

    def _denied(self, ref: ImageReference, token: _Token | None) -> str:
        who = token.credentials if token is not None else None
        if who is None:
            return (
                f"{ref.registry} refused anonymous pull access to {ref.repository}: if the "
                f"image is private, set {CREDENTIALS_SETTING} to a Docker config.json with "
                f"credentials for {ref.registry}; otherwise check image_name (a registry "
                "refuses a repository that does not exist the same way)"
            )
        return (
            f"{ref.registry} refused pull access to {ref.repository} for {who.username}: fix "
            f"the credentials for {ref.registry} in {CREDENTIALS_SETTING} "
            f"{self._credentials_file}, or give {who.username} read access to the image"
        )

    async def _authorize(self, ref: ImageReference, headers: CIMultiDictProxy[str]) -> _Token:
        challenges: list[Challenge] = []
        try:
            for value in headers.getall("WWW-Authenticate", []):
                challenges += parse_challenges(value)
        except ValueError as exc:
            raise PermanentError(f"{ref.registry} answered 401: {exc}", 401) from exc
        credentials = self._credentials(ref.registry)
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        if bearer is not None:
            return await self._bearer(ref, bearer, credentials)
        if any(c.scheme == "basic" for c in challenges):
            if credentials is None:
                raise PermanentError(
                    f"{ref.registry} asks for a username and password: set "
                    f"{CREDENTIALS_SETTING} to a Docker config.json with credentials for it",
                    401,
                )
            # Basic is not cached: checks are seconds to minutes apart, a 401 first is cheap.
            return _Token(credentials.basic(), 0.0, credentials)
        schemes = ", ".join(c.scheme for c in challenges) or "no WWW-Authenticate challenge"
        raise PermanentError(
            f"{ref.registry} answered 401 with {schemes}; preview-bot speaks Bearer and Basic",
            401,
        )

    async def _bearer(
        self, ref: ImageReference, challenge: Challenge, credentials: Credentials | None
    ) -> _Token:
        realm = URL(challenge.params.get("realm", ""))
        # The realm is the registry's to choose, but credentials never travel in clear text
        # unless the operator chose plain HTTP for this registry.
        allowed = ("https", "http") if self._scheme == "http" else ("https",)
        if realm.scheme not in allowed or not realm.host:
            raise PermanentError(
                f"{ref.registry} asks for tokens from {str(realm)!r}, which is not an HTTPS "
                f"URL: refused (only {INSECURE_SETTING} allows plain HTTP)"
            )
        query = {"scope": challenge.params.get("scope") or f"repository:{ref.repository}:pull"}
        if "service" in challenge.params:
            query["service"] = challenge.params["service"]
        headers = {} if credentials is None else {"Authorization": credentials.basic()}
        answer = await self._request("GET", realm.update_query(query), headers)
        if verdict_of(answer.status) is Verdict.DENIED:
            raise PermanentError(self._rejected(ref, realm, credentials), answer.status)
        if verdict_of(answer.status) is Verdict.RETRY:
            after = retry_after_seconds(answer.headers.get("Retry-After"), datetime.now(UTC))
            raise TemporaryError(f"the token service {realm} answered {answer.status}", after)
        try:
            if answer.status != 200:
                raise ValueError(f"it answered {answer.status}")
            value, seconds = parse_token_answer(answer.body)
        except ValueError as exc:
            raise PermanentError(
                f"no token for {ref.registry} from {realm}: {exc}", answer.status
            ) from exc
        log.debug("token for %s %s from %s, valid %.0f s", ref.registry, query, realm, seconds)
        return _Token(f"Bearer {value}", seconds, credentials)

    def _rejected(self, ref: ImageReference, realm: URL, who: Credentials | None) -> str:
        if who is None:
            return (
                f"the token service of {ref.registry} ({realm}) refused an anonymous token: "
                f"set {CREDENTIALS_SETTING} to a Docker config.json with credentials for "
                f"{ref.registry}"
            )
        return (
            f"the token service of {ref.registry} ({realm}) rejected the credentials of "
            f"{who.username}: fix the entry for {ref.registry} in {CREDENTIALS_SETTING} "
            f"{self._credentials_file}"
        )

    def _credentials(self, registry: str) -> Credentials | None:
        # Read at each authorization rather than once: a mounted Secret is updated in place,
        # so rotated credentials apply without a restart. The file is small and read at most
        # once per token lifetime.
        path = self._credentials_file
        if path is None:
            return None
        try:
            config = json.loads(Path(path).read_text())
        except OSError as exc:
            raise PermanentError(f"cannot read {CREDENTIALS_SETTING} {path}: {exc}") from exc
        except ValueError as exc:
            raise PermanentError(f"{CREDENTIALS_SETTING} {path} is not JSON: {exc}") from exc
        try:
            if not isinstance(config, Mapping):
                raise ValueError("it is not a JSON object")
            return lookup_credentials(config, registry)
        except ValueError as exc:
            raise PermanentError(f"{CREDENTIALS_SETTING} {path}: {exc}") from exc

    async def _request(self, method: str, url: URL, headers: dict[str, str]) -> _Answer:
        headers["User-Agent"] = USER_AGENT
        try:
            async with self._session.request(
                method,
                url,
                headers=headers,
                # Never follow a redirect: it could lead to plain HTTP, or carry a token to
                # another host. Registries do not redirect manifest HEADs or token requests.
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            ) as response:
                body = await response.read() if method == "GET" else b""
                return _Answer(response.status, response.headers, body)
        except aiohttp.ClientSSLError as exc:
            # Retrying cannot fix a handshake that failed: a plain-HTTP registry, or a
            # certificate the pod does not trust.
            raise PermanentError(
                f"TLS with {url.host}:{url.port} failed ({exc}): if that registry serves plain "
                f"HTTP, set {INSECURE_SETTING}; otherwise check its certificate"
            ) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TemporaryError(
                f"cannot reach {url.host}:{url.port}: {type(exc).__name__}: {exc}"
            ) from exc
