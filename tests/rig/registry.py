"""Real OCI registries for tests (CNCF distribution): open, token auth, htpasswd; image pushes."""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime as dt
import gzip
import hashlib
import io
import ipaddress
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import bcrypt
import jwt
import pytest
import pytest_asyncio
import yaml
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from yarl import URL

from tests.rig.kube import _die_with_parent
from tests.rig.net import free_port

BINARY = os.environ.get("REGISTRY_BINARY") or shutil.which("docker-registry") or "docker-registry"
# Names the server certificate answers to: tests reach "ghcr.io" and Docker Hub through
# RigResolver, so the bot's real URLs (https, port 443) end at a registry on this machine.
TLS_NAMES = ("localhost", "ghcr.io", "registry-1.docker.io", "registry.example.com")
SERVICE = "rig-registry"  # the token's audience; distribution's auth.token.service
ISSUER = "rig-token-service"
USERNAME, PASSWORD = "preview-bot", "rig-registry-password"
# Repositories whose last component starts with this are private: pulls need the credentials.
PRIVATE_PREFIX = "private-"

_READY_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_STARTUPS: dict[str, float] = {}


class RegistryRigError(RuntimeError):
    """A registry (or its token service) could not be started."""


@dataclass(frozen=True)
class Pki:
    """A self-signed CA (trusted by clients, and the root of token signatures) and a server
    certificate it issued for 127.0.0.1 and TLS_NAMES."""

    directory: Path
    ca_key: rsa.RSAPrivateKey = field(repr=False)
    ca_der: bytes = field(repr=False)

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def cert_path(self) -> Path:
        return self.directory / "server.pem"

    @property
    def key_path(self) -> Path:
        return self.directory / "server.key"

    def client_context(self) -> ssl.SSLContext:
        """An SSL context that trusts this CA only, as the bot's would trust the public ones."""
        return ssl.create_default_context(cafile=str(self.ca_path))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_pki(directory: Path) -> Pki:
    """Write ca.pem, server.pem and server.key into `directory`."""
    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "preview-bot rig CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    names += [x509.DNSName(name) for name in TLS_NAMES]
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory, ca_key, ca.public_bytes(serialization.Encoding.DER))
    pki.ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert_path.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    pki.key_path.write_bytes(_key_pem(server_key))
    return pki


@dataclass(frozen=True)
class Issued:
    """One answer of the token service: to whom (None: anonymous), for what, what it granted."""

    user: str | None
    scopes: tuple[str, ...]
    granted: tuple[tuple[str, tuple[str, ...]], ...]


def _granted(scope: str, user: str | None) -> tuple[str, tuple[str, ...]] | None:
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if kind != "repository" or not name:
        return None
    wanted = tuple(a for a in actions.split(",") if a in ("pull", "push"))
    if user is None:
        # Anonymous: pull only, and nothing on a private repository (like a public registry).
        private = name.rsplit("/", 1)[-1].startswith(PRIVATE_PREFIX)
        wanted = () if private else tuple(a for a in wanted if a == "pull")
    return name, wanted


class TokenService:
    """A docker token service (distribution's `auth: token:` realm) over HTTPS.

    Signs RS256 JWTs with the CA key and puts the CA certificate in `x5c`; the registry has the
    CA in its rootcertbundle, so it trusts exactly these tokens. Grants what `_granted` says.
    """

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.expires_in = 300
        self.issued: list[Issued] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    def mint(self, subject: str, grants: Mapping[str, tuple[str, ...]]) -> str:
        """A token the registry accepts, for `subject`, granting {repository: actions}."""
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "iat": now,
            "nbf": now,
            "exp": now + self.expires_in,
            "jti": secrets.token_hex(8),
            "access": [
                {"type": "repository", "name": name, "actions": list(actions)}
                for name, actions in grants.items()
            ],
        }
        x5c = [base64.b64encode(self.pki.ca_der).decode()]
        return jwt.encode(claims, self.pki.ca_key, algorithm="RS256", headers={"x5c": x5c})

    def _user(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header:
            return None
        if header != aiohttp.encode_basic_auth(USERNAME, PASSWORD):
            raise web.HTTPUnauthorized(
                headers={"WWW-Authenticate": 'Basic realm="rig token service"'},
                content_type="application/json",
                text=json.dumps({"details": "incorrect username or password"}),
            )
        return USERNAME

    async def _token(self, request: web.Request) -> web.Response:
        if request.query.get("service") != SERVICE:
            raise web.HTTPBadRequest(text=f"unknown service {request.query.get('service')!r}")
        user = self._user(request)
        scopes = tuple(request.query.getall("scope", []))
        granted = tuple(g for g in (_granted(s, user) for s in scopes) if g is not None)
        self.issued.append(Issued(user, scopes, granted))
        token = self.mint(user or "", dict(granted))
        return web.json_response(
            {"token": token, "access_token": token, "expires_in": self.expires_in}
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.pki.server_context())
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"https://{host}:{port}/token"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
    except OSError:
        return "(no log)"


class _Distribution:
    """One `docker-registry serve` process with filesystem storage in a throwaway directory."""

    def __init__(self, name: str, pki: Pki | None, auth: dict[str, Any] | None) -> None:
        self.name = name
        self.pki = pki
        self.auth = auth
        self.workdir = Path(tempfile.mkdtemp(prefix=f"preview-bot-registry-{name}-"))
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: TextIO | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "registry.log"

    def _config(self) -> dict[str, Any]:
        http: dict[str, Any] = {
            "addr": f"127.0.0.1:{self.port}",
            # Set, so distribution does not warn about generating one at each start.
            "secret": secrets.token_hex(16),
        }
        if self.pki is not None:
            http["tls"] = {"certificate": str(self.pki.cert_path), "key": str(self.pki.key_path)}
        config: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.workdir / "data")}},
            "http": http,
        }
        if self.auth is not None:
            config["auth"] = self.auth
        return config

    def start(self) -> None:
        if shutil.which(BINARY) is None:
            raise RegistryRigError(
                f"{BINARY} not found: install Debian's docker-registry package "
                "(apt-get install docker-registry) or set REGISTRY_BINARY"
            )
        for attempt in range(3):
            self.port = free_port()
            config_path = self.workdir / "config.yml"
            config_path.write_text(yaml.safe_dump(self._config()))
            self._log = self.log_path.open("w")
            self._proc = subprocess.Popen(
                [BINARY, "serve", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
            try:
                self._wait_ready()
                return
            except RegistryRigError:
                # free_port() releases the port before the registry binds it: retry on a race.
                in_use = "address already in use" in _tail(self.log_path)
                self.stop_process()
                if not in_use or attempt == 2:
                    raise

    def _wait_ready(self) -> None:
        scheme = "http" if self.pki is None else "https"
        context = None if self.pki is None else self.pki.client_context()
        url = f"{scheme}://127.0.0.1:{self.port}/v2/"
        deadline = time.monotonic() + _READY_TIMEOUT
        last = "no answer"
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RegistryRigError(
                    f"registry {self.name} exited with code {self._proc.returncode}:\n"
                    + _tail(self.log_path)
                )
            try:
                with urllib.request.urlopen(url, context=context, timeout=5):  # noqa: S310
                    return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # up, and asking for the auth it was configured with
                    return
                last = f"HTTP {exc.code}"
            except (OSError, urllib.error.URLError) as exc:
                last = str(exc)
            time.sleep(0.02)
        raise RegistryRigError(
            f"registry {self.name} not answering {url} after {_READY_TIMEOUT:.0f}s "
            f"({last}):\n" + _tail(self.log_path)
        )

    def stop_process(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Stop the process and delete its directory; safe to repeat."""
        self.stop_process()
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass(frozen=True)
class RegistryRig:
    """A running registry: where it listens and how to push to it."""

    name: str
    scheme: str
    port: int
    startup_seconds: float
    push_authorization: Callable[[str], str | None] = field(repr=False)

    @property
    def host(self) -> str:
        """host:port as an image reference names it (`127.0.0.1:PORT/name`)."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"


@contextlib.contextmanager
def running_registry(
    name: str,
    pki: Pki | None,
    auth: dict[str, Any] | None,
    push_authorization: Callable[[str], str | None],
) -> Iterator[RegistryRig]:
    """Start a registry, yield where it is, stop it (also at exit if pytest dies first)."""
    started = time.monotonic()
    registry = _Distribution(name, pki, auth)
    atexit.register(registry.stop)
    try:
        registry.start()
        seconds = time.monotonic() - started
        _STARTUPS[name] = seconds
        scheme = "http" if pki is None else "https"
        yield RegistryRig(name, scheme, registry.port, seconds, push_authorization)
    finally:
        registry.stop()
        atexit.unregister(registry.stop)


def _no_authorization(_repository: str) -> str | None:
    return None


@pytest.fixture(scope="session")
def registry() -> Iterator[RegistryRig]:
    """An open registry over plain HTTP: anyone pulls and pushes."""
    with running_registry("open", None, None, _no_authorization) as rig:
        yield rig


@pytest.fixture(scope="session")
def registry_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The session's CA and server certificate."""
    return make_pki(tmp_path_factory.mktemp("registry-pki"))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def token_service(registry_pki: Pki) -> AsyncIterator[TokenService]:
    """The token service behind `token_registry`, in the session's event loop."""
    service = TokenService(registry_pki)
    await service.start()
    yield service
    await service.stop()


@pytest.fixture(scope="session")
def token_registry(registry_pki: Pki, token_service: TokenService) -> Iterator[RegistryRig]:
    """A registry over HTTPS with distribution's token auth, tokens from `token_service`."""
    auth = {
        "token": {
            "realm": token_service.url,
            "service": SERVICE,
            "issuer": ISSUER,
            "rootcertbundle": str(registry_pki.ca_path),
        }
    }

    def push(repository: str) -> str:
        return "Bearer " + token_service.mint(USERNAME, {repository: ("pull", "push")})

    with running_registry("token", registry_pki, auth, push) as rig:
        yield rig


@pytest.fixture(scope="session")
def basic_registry(
    registry_pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryRig]:
    """A registry over HTTPS with distribution's htpasswd auth: USERNAME/PASSWORD only."""
    htpasswd = tmp_path_factory.mktemp("registry-htpasswd") / "htpasswd"
    # The lowest bcrypt cost: every request is checked against it, and this is a test.
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"{USERNAME}:{hashed}\n")
    auth = {"htpasswd": {"realm": "rig-basic", "path": str(htpasswd)}}
    basic = aiohttp.encode_basic_auth(USERNAME, PASSWORD)
    with running_registry("htpasswd", registry_pki, auth, lambda _repository: basic) as rig:
        yield rig


class RigResolver(AbstractResolver):
    """Resolves the names tests use to 127.0.0.1 and the port of a rig registry; refuses the
    rest, so no test ever reaches the real ghcr.io or Docker Hub."""

    def __init__(self, ports: Mapping[str, int]) -> None:
        self._ports = dict(ports)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host == "localhost":
            target = port
        elif host in self._ports:
            target = self._ports[host]
        else:
            raise OSError(f"{host} is not a rig host (tests never leave this machine)")
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": target,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        """Nothing to release."""


def _layer(text: str) -> bytes:
    # Fixed mtimes so equal content gives equal digests: pushes stay cheap and repeatable.
    data = text.encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def _digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


async def _upload_blob(
    session: aiohttp.ClientSession, rig: RegistryRig, repository: str, blob: bytes
) -> None:
    headers = {}
    if (authorization := rig.push_authorization(repository)) is not None:
        headers["Authorization"] = authorization
    async with session.post(f"{rig.url}/v2/{repository}/blobs/uploads/", headers=headers) as resp:
        if resp.status != 202:
            raise RegistryRigError(f"blob upload start: {resp.status} {await resp.text()}")
        location = resp.headers["Location"]
    # Location carries the upload's state, already encoded: append the digest, quote nothing.
    target = URL(rig.url).join(URL(location, encoded=True))
    separator = "&" if target.raw_query_string else "?"
    put = URL(f"{target}{separator}digest={_digest(blob)}", encoded=True)
    headers["Content-Type"] = "application/octet-stream"
    async with session.put(put, data=blob, headers=headers) as resp:
        if resp.status != 201:
            raise RegistryRigError(f"blob upload: {resp.status} {await resp.text()}")


async def push_image(
    session: aiohttp.ClientSession, rig: RegistryRig, repository: str, tag: str
) -> str:
    """Push a one-layer OCI image as repository:tag (config blob, layer blob, manifest) through
    the registry API, as CI's `docker push` would; returns the manifest's digest."""
    layer = _layer(f"{repository}:{tag}\n")
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [_digest(gzip.decompress(layer))]},
        }
    ).encode()
    for blob in (config, layer):
        await _upload_blob(session, rig, repository, blob)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _digest(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
    if (authorization := rig.push_authorization(repository)) is not None:
        headers["Authorization"] = authorization
    url = f"{rig.url}/v2/{repository}/manifests/{tag}"
    async with session.put(url, data=manifest, headers=headers) as resp:
        if resp.status != 201:
            raise RegistryRigError(f"manifest upload: {resp.status} {await resp.text()}")
        return resp.headers.get("Docker-Content-Digest", _digest(manifest))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # Shown without -s: fixture prints are captured, the summary is not.
    if _STARTUPS:
        started = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in _STARTUPS.items())
        terminalreporter.write_line(f"registry rig up in: {started}")
