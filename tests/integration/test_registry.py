"""The registry probe against real CNCF distribution registries: open, token auth, htpasswd."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from bot.config import Settings
from bot.errors import PermanentError, TemporaryError
from bot.registry import Registry
from tests.rig.net import free_port
from tests.rig.registry import (
    ISSUER,
    PASSWORD,
    SERVICE,
    USERNAME,
    Pki,
    RegistryRig,
    RigResolver,
    TokenService,
    push_image,
    running_registry,
)

pytestmark = pytest.mark.rig


@pytest_asyncio.fixture(loop_scope="session")
async def session(
    registry_pki: Pki, token_registry: RegistryRig, basic_registry: RegistryRig
) -> AsyncIterator[aiohttp.ClientSession]:
    """A session that trusts the rig's CA, with ghcr.io and Docker Hub at the token registry
    and registry.example.com at the htpasswd one: the bot's own URLs, served on this machine."""
    resolver = RigResolver(
        {
            "ghcr.io": token_registry.port,
            "registry-1.docker.io": token_registry.port,
            "registry.example.com": basic_registry.port,
        }
    )
    connector = aiohttp.TCPConnector(ssl=registry_pki.client_context(), resolver=resolver)
    async with aiohttp.ClientSession(connector=connector) as client:
        yield client


def _settings(*, insecure: bool = False, credentials: Path | None = None) -> Settings:
    return Settings(
        github_app_id=1,
        github_private_key="unused",
        github_webhook_secret="s",
        image_check=True,
        registry_insecure=insecure,
        registry_credentials_file=None if credentials is None else str(credentials),
    )


def _credentials_file(tmp_path: Path, registry: str, password: str = PASSWORD) -> Path:
    auth = base64.b64encode(f"{USERNAME}:{password}".encode()).decode()
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {registry: {"auth": auth}}}))
    return path


def _tag() -> str:
    # DEX's tags; fresh per test, as the registries live for the whole session.
    return f"sha-{secrets.token_hex(4)}"


async def test_a_tag_appears_once_pushed(
    session: aiohttp.ClientSession, registry: RegistryRig
) -> None:
    probe = Registry(session, _settings(insecure=True))
    image, tag = f"{registry.host}/data-literate/dex", _tag()
    assert await probe.manifest_exists(image, tag) is False
    await push_image(session, registry, "data-literate/dex", tag)
    assert await probe.manifest_exists(image, tag) is True
    assert await probe.manifest_exists(image, _tag()) is False
    # A repository nobody pushed to is missing too (404), not an error.
    assert await probe.manifest_exists(f"{registry.host}/nobody/here", tag) is False


async def test_localhost_reference(session: aiohttp.ClientSession, registry: RegistryRig) -> None:
    tag = _tag()
    await push_image(session, registry, "app", tag)
    probe = Registry(session, _settings(insecure=True))
    assert await probe.manifest_exists(f"localhost:{registry.port}/app", tag) is True


async def test_ghcr_reference_anonymous_bearer_token_cached(
    session: aiohttp.ClientSession, token_registry: RegistryRig, token_service: TokenService
) -> None:
    probe = Registry(session, _settings())
    tag = _tag()
    before = len(token_service.issued)
    assert await probe.manifest_exists("ghcr.io/data-literate/dex", tag) is False
    await push_image(session, token_registry, "data-literate/dex", tag)
    assert await probe.manifest_exists("ghcr.io/data-literate/dex", tag) is True
    issued = token_service.issued[before:]
    # One anonymous token for the scope distribution's challenge named, reused the second time.
    assert [(i.user, i.scopes, i.granted) for i in issued] == [
        (None, ("repository:data-literate/dex:pull",), (("data-literate/dex", ("pull",)),))
    ]


async def test_an_expired_token_is_renewed(
    session: aiohttp.ClientSession, token_registry: RegistryRig, token_service: TokenService
) -> None:
    now = [1000.0]
    probe = Registry(session, _settings(), clock=lambda: now[0])
    tag = _tag()
    await push_image(session, token_registry, "data-literate/dex", tag)
    before = len(token_service.issued)
    assert await probe.manifest_exists("ghcr.io/data-literate/dex", tag) is True
    now[0] += token_service.expires_in - 10  # still valid: no new token
    assert await probe.manifest_exists("ghcr.io/data-literate/dex", tag) is True
    assert len(token_service.issued) == before + 1
    now[0] += 10  # within the renewal margin: a new one
    assert await probe.manifest_exists("ghcr.io/data-literate/dex", tag) is True
    assert len(token_service.issued) == before + 2


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("nginx", "library/nginx"),
        ("docker.io/nginx", "library/nginx"),
        ("someuser/app", "someuser/app"),
        ("registry-1.docker.io/someuser/app", "someuser/app"),
    ],
)
async def test_docker_hub_references(
    session: aiohttp.ClientSession, token_registry: RegistryRig, image: str, repository: str
) -> None:
    tag = _tag()
    await push_image(session, token_registry, repository, tag)
    probe = Registry(session, _settings())
    assert await probe.manifest_exists(image, tag) is True


async def test_a_private_image_with_the_credentials_file(
    session: aiohttp.ClientSession,
    token_registry: RegistryRig,
    token_service: TokenService,
    tmp_path: Path,
) -> None:
    probe = Registry(session, _settings(credentials=_credentials_file(tmp_path, "ghcr.io")))
    tag = _tag()
    await push_image(session, token_registry, "data-literate/private-dex", tag)
    assert await probe.manifest_exists("ghcr.io/data-literate/private-dex", tag) is True
    assert token_service.issued[-1].user == USERNAME
    assert await probe.manifest_exists("ghcr.io/data-literate/private-dex", _tag()) is False


async def test_a_private_image_without_credentials_is_refused(
    session: aiohttp.ClientSession, token_registry: RegistryRig
) -> None:
    tag = _tag()
    await push_image(session, token_registry, "data-literate/private-dex", tag)
    probe = Registry(session, _settings())
    with pytest.raises(PermanentError) as info:
        await probe.manifest_exists("ghcr.io/data-literate/private-dex", tag)
    message = str(info.value)
    assert "ghcr.io refused anonymous pull access to data-literate/private-dex" in message
    assert "registry_credentials_file (PREVIEW_BOT_REGISTRY_CREDENTIALS_FILE)" in message


async def test_wrong_credentials_are_a_permanent_error(
    session: aiohttp.ClientSession, token_registry: RegistryRig, tmp_path: Path
) -> None:
    credentials = _credentials_file(tmp_path, "ghcr.io", password="wrong")
    probe = Registry(session, _settings(credentials=credentials))
    with pytest.raises(PermanentError) as info:
        await probe.manifest_exists("ghcr.io/data-literate/private-dex", _tag())
    message = str(info.value)
    assert "the token service of ghcr.io" in message
    assert f"rejected the credentials of {USERNAME}" in message
    assert f"registry_credentials_file (PREVIEW_BOT_REGISTRY_CREDENTIALS_FILE) {credentials}" in (
        message
    )
    assert info.value.status == 401


async def test_basic_auth_uses_the_credentials_file(
    session: aiohttp.ClientSession, basic_registry: RegistryRig, tmp_path: Path
) -> None:
    tag = _tag()
    await push_image(session, basic_registry, "team/app", tag)
    credentials = _credentials_file(tmp_path, "registry.example.com:5000")
    probe = Registry(session, _settings(credentials=credentials))
    assert await probe.manifest_exists("registry.example.com:5000/team/app", tag) is True
    assert await probe.manifest_exists("registry.example.com:5000/team/app", _tag()) is False


async def test_basic_auth_without_or_with_wrong_credentials(
    session: aiohttp.ClientSession, basic_registry: RegistryRig, tmp_path: Path
) -> None:
    image = "registry.example.com:5000/team/app"
    with pytest.raises(PermanentError, match="asks for a username and password: set registry_"):
        await Registry(session, _settings()).manifest_exists(image, _tag())
    wrong = _credentials_file(tmp_path, "registry.example.com:5000", password="wrong")
    with pytest.raises(PermanentError) as info:
        await Registry(session, _settings(credentials=wrong)).manifest_exists(image, _tag())
    assert str(info.value).startswith(
        f"registry.example.com:5000 refused pull access to team/app for {USERNAME}: fix the "
        "credentials for registry.example.com:5000 in registry_credentials_file"
    )


async def test_a_registry_that_is_down_is_temporary(session: aiohttp.ClientSession) -> None:
    probe = Registry(session, _settings(insecure=True))
    with pytest.raises(TemporaryError, match=r"cannot reach 127\.0\.0\.1"):
        await probe.manifest_exists(f"127.0.0.1:{free_port()}/data-literate/dex", _tag())


async def test_plain_http_needs_registry_insecure(
    session: aiohttp.ClientSession, registry: RegistryRig
) -> None:
    tag = _tag()
    await push_image(session, registry, "data-literate/dex", tag)
    probe = Registry(session, _settings(insecure=False))
    # The image is there, but only over plain HTTP: no silent downgrade, a clear refusal.
    with pytest.raises(PermanentError) as info:
        await probe.manifest_exists(f"{registry.host}/data-literate/dex", tag)
    message = str(info.value)
    assert message.startswith(f"TLS with {registry.host} failed")
    assert "set registry_insecure (PREVIEW_BOT_REGISTRY_INSECURE)" in message


@pytest.fixture(scope="module")
def http_realm_registry(registry_pki: Pki) -> Iterator[RegistryRig]:
    """A registry over HTTPS whose token realm is plain HTTP (nothing listens there)."""
    auth = {
        "token": {
            "realm": f"http://127.0.0.1:{free_port()}/token",
            "service": SERVICE,
            "issuer": ISSUER,
            "rootcertbundle": str(registry_pki.ca_path),
        }
    }
    with running_registry("http-realm", registry_pki, auth, lambda _repository: None) as rig:
        yield rig


async def test_a_plain_http_token_realm_is_refused(
    session: aiohttp.ClientSession, http_realm_registry: RegistryRig, tmp_path: Path
) -> None:
    credentials = _credentials_file(tmp_path, http_realm_registry.host)
    probe = Registry(session, _settings(credentials=credentials))
    # Credentials would travel in clear text: refused before any request to the realm.
    with pytest.raises(PermanentError, match="which is not an HTTPS URL: refused"):
        await probe.manifest_exists(f"{http_realm_registry.host}/data-literate/dex", _tag())
