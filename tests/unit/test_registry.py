"""The registry probe's pure parts: references, challenges, credentials, token answers, statuses."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.registry import (
    DEFAULT_TOKEN_SECONDS,
    Challenge,
    Credentials,
    ImageReference,
    Verdict,
    check_tag,
    lookup_credentials,
    parse_challenges,
    parse_reference,
    parse_token_answer,
    retry_after_seconds,
    verdict_of,
)


@pytest.mark.parametrize(
    ("image", "registry", "repository"),
    [
        ("ghcr.io/data-literate/dex", "ghcr.io", "data-literate/dex"),
        ("GHCR.io/data-literate/dex", "ghcr.io", "data-literate/dex"),
        ("registry.example.com:5000/team/name", "registry.example.com:5000", "team/name"),
        ("localhost:5000/name", "localhost:5000", "name"),
        ("localhost/name", "localhost", "name"),
        ("127.0.0.1:5000/a/b/c", "127.0.0.1:5000", "a/b/c"),
        ("[::1]:5000/name", "[::1]:5000", "name"),
        ("nginx", "registry-1.docker.io", "library/nginx"),
        ("user/app", "registry-1.docker.io", "user/app"),
        ("docker.io/nginx", "registry-1.docker.io", "library/nginx"),
        ("index.docker.io/user/app", "registry-1.docker.io", "user/app"),
        ("registry-1.docker.io/library/nginx", "registry-1.docker.io", "library/nginx"),
        ("quay.io/my_org/my-app.web", "quay.io", "my_org/my-app.web"),
        ("host:5000/a__b/c--d", "host:5000", "a__b/c--d"),
    ],
)
def test_references(image: str, registry: str, repository: str) -> None:
    assert parse_reference(image) == ImageReference(registry, repository)


@pytest.mark.parametrize(
    ("image", "says"),
    [
        ("", "not an image name"),
        ("ghcr.io/", "not an image name"),
        ("nginx:1.27", "carries a tag or digest"),
        ("ghcr.io/org/dex:sha-1234abcd", "carries a tag or digest"),
        ("ghcr.io/org/dex@sha256:" + "a" * 64, "carries a tag or digest"),
        ("Data-Literate/dex", "'Data-Literate' is not a lower-case name component"),
        ("ghcr.io/org//dex", "'' is not a lower-case name component"),
        ("ghcr.io/org/-dex", "'-dex' is not"),
        ("bad_host.io/dex", "'bad_host.io' is not a registry host"),
        ("ghcr.io/" + "a" * 256, "longer than 255"),
    ],
)
def test_bad_references(image: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_reference(image)


@pytest.mark.parametrize("tag", ["sha-1234abcd", "latest", "v1.2.3", "_x", "sha256:" + "0" * 64])
def test_tags(tag: str) -> None:
    assert check_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", "-x", ".x", "a/b", "a" * 129, "sha-{short_sha}"])
def test_bad_tags(tag: str) -> None:
    with pytest.raises(ValueError, match="is not an image tag"):
        check_tag(tag)


@pytest.mark.parametrize(
    ("header", "challenges"),
    [
        (  # ghcr.io, for an anonymous HEAD
            'Bearer realm="https://ghcr.io/token",service="ghcr.io",'
            'scope="repository:data-literate/dex:pull"',
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://ghcr.io/token",
                        "service": "ghcr.io",
                        "scope": "repository:data-literate/dex:pull",
                    },
                )
            ],
        ),
        (  # distribution's token auth after a refused token: the scope has a comma in quotes
            'Bearer realm="https://t/token",service="reg",scope="repository:a/b:pull,push",'
            'error="insufficient_scope"',
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://t/token",
                        "service": "reg",
                        "scope": "repository:a/b:pull,push",
                        "error": "insufficient_scope",
                    },
                )
            ],
        ),
        ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
        ("basic", [Challenge("basic", {})]),
        (
            'BEARER Realm = "a\\"b" , Service=tok',
            [Challenge("bearer", {"realm": 'a"b', "service": "tok"})],
        ),
        (
            'Negotiate abc==, Basic realm="x", Bearer realm="y"',
            [
                Challenge("negotiate", {}),
                Challenge("basic", {"realm": "x"}),
                Challenge("bearer", {"realm": "y"}),
            ],
        ),
        ("", []),
    ],
)
def test_challenges(header: str, challenges: list[Challenge]) -> None:
    assert parse_challenges(header) == challenges


@pytest.mark.parametrize("header", ['realm="x"', 'Bearer realm="unterminated', "Bearer ="])
def test_bad_challenges(header: str) -> None:
    with pytest.raises(ValueError, match="WWW-Authenticate"):
        parse_challenges(header)


def _auth(pair: str) -> str:
    return base64.b64encode(pair.encode()).decode()


@pytest.mark.parametrize(
    ("config", "registry", "found"),
    [
        ({"auths": {"ghcr.io": {"auth": _auth("bot:pat")}}}, "ghcr.io", Credentials("bot", "pat")),
        (  # the password may hold colons: only the first one splits
            {"auths": {"ghcr.io": {"auth": _auth("bot:a:b")}}},
            "ghcr.io",
            Credentials("bot", "a:b"),
        ),
        (
            {"auths": {"https://ghcr.io": {"username": "bot", "password": "pat"}}},
            "ghcr.io",
            Credentials("bot", "pat"),
        ),
        (  # `auth` wins over username/password, as in Docker's own tools
            {"auths": {"ghcr.io": {"auth": _auth("a:1"), "username": "b", "password": "2"}}},
            "ghcr.io",
            Credentials("a", "1"),
        ),
        (  # `docker login` writes Docker Hub's key as a URL
            {"auths": {"https://index.docker.io/v1/": {"auth": _auth("me:tok")}}},
            "registry-1.docker.io",
            Credentials("me", "tok"),
        ),
        (
            {"auths": {"registry.example.com:5000": {"auth": _auth("u:p")}}},
            "registry.example.com:5000",
            Credentials("u", "p"),
        ),
        (
            {"auths": {"Registry.Example.com": {"auth": _auth("u:p")}}},
            "registry.example.com",
            Credentials("u", "p"),
        ),
        (
            {"auths": {"registry.example.com": {"auth": _auth("u:p")}}},
            "registry.example.com:5000",
            None,
        ),
        ({"auths": {"ghcr.io": {"auth": _auth("u:p")}}}, "registry-1.docker.io", None),
        ({"auths": {}}, "ghcr.io", None),
        ({"credsStore": "desktop"}, "ghcr.io", None),
    ],
)
def test_credentials(config: dict[str, Any], registry: str, found: Credentials | None) -> None:
    assert lookup_credentials(config, registry) == found


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"auths": []}, '"auths" is not an object'),
        ({"auths": {"ghcr.io": "x"}}, 'auths["ghcr.io"] is not an object'),
        ({"auths": {"ghcr.io": {"auth": "%%%"}}}, 'auths["ghcr.io"].auth is not base64'),
        ({"auths": {"ghcr.io": {"auth": _auth("nocolon")}}}, 'base64 of "username:password"'),
        ({"auths": {"ghcr.io": {}}}, "credential helpers and identity tokens are not supported"),
        ({"auths": {"ghcr.io": {"identitytoken": "t"}}}, "neither auth nor username"),
    ],
)
def test_bad_credentials(config: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        lookup_credentials(config, "ghcr.io")


def test_credentials_hide_the_password() -> None:
    creds = Credentials("bot", "hunter2")
    assert "hunter2" not in repr(creds)
    assert creds.basic() == "Basic " + _auth("bot:hunter2")


@pytest.mark.parametrize(
    ("body", "answer"),
    [
        (b'{"token": "t", "expires_in": 300}', ("t", 300.0)),
        (b'{"access_token": "a", "expires_in": 1.5}', ("a", 1.5)),
        (b'{"token": "t", "access_token": "a"}', ("t", DEFAULT_TOKEN_SECONDS)),
        (b'{"token": "t", "expires_in": 0}', ("t", DEFAULT_TOKEN_SECONDS)),
        (b'{"token": "t", "expires_in": "300"}', ("t", DEFAULT_TOKEN_SECONDS)),
        (b'{"token": "t", "expires_in": true}', ("t", DEFAULT_TOKEN_SECONDS)),
    ],
)
def test_token_answers(body: bytes, answer: tuple[str, float]) -> None:
    assert parse_token_answer(body) == answer


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"<html>", "not JSON"),
        (b"\xff", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"token": ""}', "holds no token"),
        (b'{"details": "x"}', "holds no token"),
    ],
)
def test_bad_token_answers(body: bytes, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_token_answer(body)


NOW = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Thu, 03 Dec 2026 12:01:30 GMT", 90.0),
        ("Thu, 03 Dec 2026 12:01:30 -0000", 90.0),
        ("Thu, 03 Dec 2026 11:00:00 GMT", 0.0),
        ("soon", None),
        ("-5", None),
    ],
)
def test_retry_after(value: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(value, NOW) == seconds


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.FOUND),
        (404, Verdict.MISSING),
        (401, Verdict.DENIED),
        (403, Verdict.DENIED),
        (408, Verdict.RETRY),
        (429, Verdict.RETRY),
        (500, Verdict.RETRY),
        (502, Verdict.RETRY),
        (503, Verdict.RETRY),
        (204, Verdict.UNEXPECTED),
        (301, Verdict.UNEXPECTED),
        (400, Verdict.UNEXPECTED),
        (405, Verdict.UNEXPECTED),
    ],
)
def test_verdicts(status: int, verdict: Verdict) -> None:
    assert verdict_of(status) is verdict
