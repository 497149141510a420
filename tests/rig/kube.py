"""A real etcd + kube-apiserver for tests (envtest-style), with Argo CD's CRDs installed."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client import ApiClient

from bot.kubeapi import KubeApi, kubeconfig_config
from tests.rig.net import free_port

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"

APPS_GROUP = "argoproj.io"
APPS_VERSION = "v1alpha1"
APPS_PLURAL = "applications"
ARGOCD_NAMESPACE = "argocd"
# Applications carrying this finalizer (or its /background, /foreground variants) are only
# removed by Argo CD after it pruned their resources.
RESOURCES_FINALIZER = "resources-finalizer.argocd.argoproj.io"

# Static identities registered in tokens.csv. The apiserver reads tokens.csv once at start,
# so the set is fixed for the session. The service-account entry lets a test act as the
# bot's ServiceAccount without a TokenRequest; users get system:authenticated added by the
# server, and RBAC grants them nothing else, so they start out forbidden everywhere.
STATIC_USERS: dict[str, tuple[str, ...]] = {
    "system:serviceaccount:argocd:preview-bot": (
        "system:serviceaccounts",
        "system:serviceaccounts:argocd",
    ),
    "developer": (),
}

_READY_TIMEOUT = 60.0
_STOP_TIMEOUT = 10.0
_STARTUP_KEY = pytest.StashKey[float]()


class KubeRigError(RuntimeError):
    """The control plane could not be started or set up."""


def _assets_dir() -> Path:
    env = os.environ.get("KUBEBUILDER_ASSETS")
    return Path(env) if env else SHARED / "envtest"


def _crds_dir() -> Path:
    env = os.environ.get("ARGOCD_CRDS_DIR")
    return Path(env) if env else SHARED / "argocd-crds"


# Resolved in the parent so the child, between fork and exec, only makes one libc call.
_PRCTL = ctypes.CDLL(None).prctl if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # If pytest is SIGKILLed (no atexit, no finalizers), the kernel then kills
    # etcd/kube-apiserver too instead of leaving them running with their ports.
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _write_service_account_keys(workdir: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (workdir / "sa.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    (workdir / "sa.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _kubeconfig(server: str, ca_path: Path, user: str, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "envtest",
                "cluster": {"server": server, "certificate-authority": str(ca_path)},
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "envtest", "user": user}}],
        "current-context": user,
    }


class _ControlPlane:
    """etcd + kube-apiserver processes in one throwaway directory."""

    def __init__(self, assets: Path) -> None:
        self.assets = assets
        self.workdir = Path(tempfile.mkdtemp(prefix="preview-bot-kube-"))
        self.admin_token = secrets.token_hex(16)
        self.user_tokens = {user: secrets.token_hex(16) for user in STATIC_USERS}
        self.port = 0
        self._procs: list[tuple[subprocess.Popen[bytes], TextIO, Path]] = []
        self._apiserver_args: list[str] = []

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_path(self) -> Path:
        # kube-apiserver writes a self-signed serving cert (with its CA) here at start.
        return self.workdir / "certs" / "apiserver.crt"

    def _spawn(self, name: str, args: list[str], append: bool = False) -> subprocess.Popen[bytes]:
        log_path = self.workdir / f"{name}.log"
        log = log_path.open("a" if append else "w")
        proc = subprocess.Popen(
            [str(self.assets / name), *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self._procs.append((proc, log, log_path))
        return proc

    def _logs(self) -> str:
        # kube-apiserver first: its log usually says what went wrong, etcd's is mostly noise.
        return "\n".join(
            f"--- {path.name} (exit code {proc.poll()}) ---\n{_tail(path)}"
            for proc, _, path in reversed(self._procs)
        )

    def start(self) -> None:
        for binary in ("etcd", "kube-apiserver"):
            if not (self.assets / binary).is_file():
                raise KubeRigError(
                    f"{binary} not found in {self.assets}: set KUBEBUILDER_ASSETS to a folder "
                    "holding kube-apiserver and etcd (e.g. from `setup-envtest use -p path`)"
                )
        _write_service_account_keys(self.workdir)
        lines = [f"{self.admin_token},admin,admin,system:masters"]
        for user, groups in STATIC_USERS.items():
            lines.append(f'{self.user_tokens[user]},{user},{user},"{",".join(groups)}"')
        (self.workdir / "tokens.csv").write_text("\n".join(lines) + "\n")

        etcd_port, peer_port, self.port = free_port(), free_port(), free_port()
        etcd_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd",
            [
                "--name=rig",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=rig={peer_url}",
                # Test data is thrown away: skipping fsync makes every write much faster.
                "--unsafe-no-fsync",
            ],
        )
        wd = self.workdir
        self._apiserver_args = [
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--cert-dir={wd / 'certs'}",
            "--advertise-address=127.0.0.1",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={wd / 'sa.pub'}",
            f"--service-account-signing-key-file={wd / 'sa.key'}",
            f"--token-auth-file={wd / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--insecure-port=0",
        ]
        self._spawn("kube-apiserver", self._apiserver_args)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        last_error = "not started"
        while time.monotonic() < deadline:
            for proc, _, path in self._procs:
                if proc.poll() is not None:
                    raise KubeRigError(
                        f"{path.stem} exited with code {proc.returncode} during start-up\n"
                        + self._logs()
                    )
            if self.ca_path.exists():
                try:
                    body = _Rest(self.server, self.admin_token, self.ca_path).raw("GET", "/readyz")
                except (OSError, urllib.error.URLError, ssl.SSLError) as exc:
                    last_error = str(exc)
                else:
                    if body.strip() == b"ok":
                        return
                    last_error = body.decode(errors="replace")
            time.sleep(0.1)
        raise KubeRigError(
            f"kube-apiserver not ready after {_READY_TIMEOUT:.0f}s at {self.server} "
            f"(last answer: {last_error})\n" + self._logs()
        )

    def _apiserver(self) -> tuple[subprocess.Popen[bytes], TextIO, Path] | None:
        return next((p for p in self._procs if p[2].stem == "kube-apiserver"), None)

    def stop_apiserver(self) -> None:
        """Kill kube-apiserver as a crash would (SIGKILL); etcd and its data stay."""
        entry = self._apiserver()
        if entry is None:
            return
        proc, log, _ = entry
        if proc.poll() is None:
            proc.kill()
            proc.wait(_STOP_TIMEOUT)
        log.close()
        self._procs.remove(entry)

    def restart_apiserver(self) -> None:
        """Start kube-apiserver again with the same flags (port, serving certificate, tokens,
        service-account keys, etcd) and wait until it serves Applications; nothing to do when
        it runs."""
        entry = self._apiserver()
        if entry is not None and entry[0].poll() is None:
            return
        if entry is not None:
            self.stop_apiserver()  # it died by itself: forget it, keep its log
        self._spawn("kube-apiserver", self._apiserver_args, append=True)
        self._wait_ready()
        _wait_served(
            _Rest(self.server, self.admin_token, self.ca_path), _apps_path(ARGOCD_NAMESPACE)
        )

    def port_in_use(self) -> bool:
        return "address already in use" in self._logs()

    def stop(self) -> None:
        """Stop both processes (apiserver first) and delete the directory; safe to repeat."""
        for proc, log, _ in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log.close()
        self._procs.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)


class _Rest:
    """A tiny synchronous REST client: set-up and clean-up must not depend on any event loop."""

    def __init__(self, server: str, token: str, ca_path: Path) -> None:
        self.server = server
        self.token = token
        self.context = ssl.create_default_context(cafile=str(ca_path))

    def raw(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - always https to our own server
            self.server + path, data=data, method=method
        )
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, context=self.context, timeout=30) as resp:  # noqa: S310
            result: bytes = resp.read()
            return result

    def call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> dict[str, Any]:
        try:
            result: dict[str, Any] = json.loads(self.raw(method, path, body, content_type))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise KubeRigError(f"{method} {path} -> {exc.code}: {detail}") from exc
        return result

    def status(self, method: str, path: str) -> int:
        try:
            self.raw(method, path)
        except urllib.error.HTTPError as exc:
            return exc.code
        return 200


def _install_crds(rest: _Rest, crds_dir: Path) -> None:
    base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    names = []
    for file in ("application-crd.yaml", "appproject-crd.yaml"):
        crd = yaml.safe_load((crds_dir / file).read_text())
        # Create, not client-side apply: the Application CRD (416 KB) would not fit the
        # last-applied-configuration annotation (256 KB limit).
        rest.call("POST", base, crd)
        names.append(crd["metadata"]["name"])
    deadline = time.monotonic() + 30
    for name in names:
        while True:
            conditions = (
                rest.call("GET", f"{base}/{name}").get("status", {}).get("conditions") or []
            )
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                break
            if time.monotonic() > deadline:
                raise KubeRigError(f"CRD {name} not Established after 30s: {conditions}")
            time.sleep(0.05)


def _wait_served(rest: _Rest, path: str) -> None:
    # Established can precede the first 200 by a few milliseconds while the handler is wired.
    deadline = time.monotonic() + 10
    while (code := rest.status("GET", path)) != 200:
        if time.monotonic() > deadline:
            raise KubeRigError(f"GET {path} still answers {code} after 10s")
        time.sleep(0.05)


def _apps_path(namespace: str, name: str = "") -> str:
    path = f"/apis/{APPS_GROUP}/{APPS_VERSION}/namespaces/{namespace}/{APPS_PLURAL}"
    return f"{path}/{name}" if name else path


@dataclass
class KubeRig:
    """A running control plane: where it is and how to talk to it (admin by default)."""

    server: str
    token: str
    ca_path: Path
    kubeconfig_path: Path
    kubeconfig: dict[str, Any]
    startup_seconds: float
    user_tokens: dict[str, str] = field(repr=False)
    _plane: _ControlPlane | None = field(default=None, repr=False, compare=False)

    def stop_apiserver(self) -> None:
        """Kill the API server process (SIGKILL), keeping etcd and its data: clients see
        connections refused until `restart_apiserver`. Blocks: from a test's event loop call
        it through asyncio.to_thread. The rig is shared by the session: whoever stops it
        restarts it (in a `finally`), so later tests find it as it was."""
        if self._plane is None:
            raise KubeRigError("this rig does not own its control plane")
        self._plane.stop_apiserver()

    def restart_apiserver(self) -> None:
        """Start the API server again on the same port with the same flags, certificate and
        etcd data, and wait until it serves Applications (blocks, like stop_apiserver)."""
        if self._plane is None:
            raise KubeRigError("this rig does not own its control plane")
        self._plane.restart_apiserver()

    async def api_client(self) -> ApiClient:
        """A new admin ApiClient; the caller closes it (`async with await kube.api_client()`)."""
        return await config.new_client_from_config_dict(self.kubeconfig)

    def kubeapi(self, kubeconfig: dict[str, Any] | None = None) -> KubeApi:
        """The bot's own client (bot.kubeapi), as admin unless given another kubeconfig; the
        caller closes it (`async with kube.kubeapi() as api`)."""
        return KubeApi(kubeconfig_config(kubeconfig or self.kubeconfig))

    def kubeconfig_for_user(self, username: str) -> dict[str, Any]:
        """A kubeconfig for one of the identities pre-registered in tokens.csv (STATIC_USERS)."""
        try:
            token = self.user_tokens[username]
        except KeyError:
            raise KeyError(
                f"{username!r} is not pre-registered; known: {sorted(self.user_tokens)}"
            ) from None
        return _kubeconfig(self.server, self.ca_path, username, token)

    async def make_service_account_kubeconfig(
        self, namespace: str, name: str, *, expiration_seconds: int = 3600
    ) -> dict[str, Any]:
        """Create ServiceAccount namespace/name (if missing) and a kubeconfig acting as it.

        Without kube-controller-manager no token Secrets appear, but the TokenRequest API
        (what `kubectl create token` uses) is served by kube-apiserver itself, so the token
        is a real bound service-account JWT checked by the server like in a cluster.
        The namespace is created too if it does not exist.
        """
        async with await self.api_client() as api:
            core = client.CoreV1Api(api)
            with contextlib.suppress(client.ApiException):  # 409: it already exists
                await core.create_namespace(
                    client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
                )
            try:
                await core.create_namespaced_service_account(
                    namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
                )
            except client.ApiException as exc:
                if exc.status != 409:
                    raise
            request = client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_seconds)
            )
            answer = await core.create_namespaced_service_account_token(name, namespace, request)
        return _kubeconfig(
            self.server,
            self.ca_path,
            f"system:serviceaccount:{namespace}:{name}",
            answer.status.token,
        )


def _start_rig() -> tuple[_ControlPlane, KubeRig]:
    started = time.monotonic()
    for attempt in range(3):
        plane = _ControlPlane(_assets_dir())
        # Registered before the processes exist so even a failing start-up cleans up.
        atexit.register(plane.stop)
        try:
            plane.start()
            break
        except KubeRigError:
            retry = plane.port_in_use() and attempt < 2
            plane.stop()
            atexit.unregister(plane.stop)
            if not retry:
                raise
    try:
        rest = _Rest(plane.server, plane.admin_token, plane.ca_path)
        _install_crds(rest, _crds_dir())
        rest.call("POST", "/api/v1/namespaces", {"metadata": {"name": ARGOCD_NAMESPACE}})
        _wait_served(rest, _apps_path(ARGOCD_NAMESPACE))
        kubeconfig = _kubeconfig(plane.server, plane.ca_path, "admin", plane.admin_token)
        kubeconfig_path = plane.workdir / "kubeconfig"
        kubeconfig_path.write_text(yaml.safe_dump(kubeconfig))
    except BaseException:
        plane.stop()
        atexit.unregister(plane.stop)
        raise
    rig = KubeRig(
        server=plane.server,
        token=plane.admin_token,
        ca_path=plane.ca_path,
        kubeconfig_path=kubeconfig_path,
        kubeconfig=kubeconfig,
        startup_seconds=time.monotonic() - started,
        user_tokens=dict(plane.user_tokens),
        _plane=plane,
    )
    return plane, rig


@pytest.fixture(scope="session")
def kube(request: pytest.FixtureRequest) -> Iterator[KubeRig]:
    """The session's control plane; sync so it is independent of any event loop."""
    plane, rig = _start_rig()
    try:
        request.config.stash[_STARTUP_KEY] = rig.startup_seconds
        print(f"kube rig up in {rig.startup_seconds:.1f}s ({rig.server})")
        yield rig
    finally:
        plane.stop()
        atexit.unregister(plane.stop)


@pytest.fixture
async def kube_client(kube: KubeRig) -> AsyncIterator[ApiClient]:
    """An admin ApiClient for one test, closed afterwards."""
    async with await kube.api_client() as api:
        yield api


@pytest.fixture
async def admin_api(kube: KubeRig) -> AsyncIterator[KubeApi]:
    """The bot's own client (bot.kubeapi) as admin, for one test, closed afterwards."""
    async with kube.kubeapi() as api:
        yield api


def delete_all_applications(kube: KubeRig, namespace: str = ARGOCD_NAMESPACE) -> None:
    """Remove every Application in `namespace`, finalizers first, and wait until they are gone."""
    rest = _Rest(kube.server, kube.token, kube.ca_path)
    deadline = time.monotonic() + 10
    # Repeat until empty: something still running (a stand-in, the bot) may re-add a
    # finalizer or create an Application while we clean up.
    while items := rest.call("GET", _apps_path(namespace))["items"]:
        if time.monotonic() > deadline:
            left = [item["metadata"]["name"] for item in items]
            raise KubeRigError(f"Applications still present after clean-up: {left}")
        for app in items:
            meta = app["metadata"]
            path = _apps_path(namespace, meta["name"])
            with contextlib.suppress(KubeRigError):  # 404/409: changed meanwhile, next round
                if meta.get("finalizers"):
                    rest.call(
                        "PATCH",
                        path,
                        {"metadata": {"finalizers": None}},
                        "application/merge-patch+json",
                    )
                if not meta.get("deletionTimestamp"):
                    rest.call("DELETE", path)
        time.sleep(0.05)


@pytest.fixture
def argocd_ns(kube: KubeRig) -> Iterator[str]:
    """The Applications namespace, empty at the start; its Applications are deleted after."""
    # Also before: a test that did not use this fixture may have left Applications behind.
    delete_all_applications(kube, ARGOCD_NAMESPACE)
    yield ARGOCD_NAMESPACE
    delete_all_applications(kube, ARGOCD_NAMESPACE)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # Shown without -s: fixture prints are captured, the summary is not.
    seconds = terminalreporter.config.stash.get(_STARTUP_KEY, None)
    if seconds is not None:
        terminalreporter.write_line(f"kube rig up in {seconds:.1f}s")
