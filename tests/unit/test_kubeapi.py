"""bot.kubeapi without a server: kubeconfig and in-cluster configuration, errors, paths."""

from __future__ import annotations

import base64
import datetime
import os
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bot import kubeapi
from bot.errors import TemporaryError
from bot.kube import RELEASE_ATTEMPTS, ArgoCD
from bot.kubeapi import (
    LEASES,
    ApiError,
    ConfigError,
    Resource,
    StaticToken,
    TokenFile,
    in_cluster_config,
    kubeconfig_config,
    load_config,
    read_kubeconfig,
    unavailable,
)
from bot.model import FINALIZER, TEARDOWN_FINALIZER


def self_signed() -> tuple[bytes, bytes]:
    """A certificate and its key, PEM: enough for ssl to load as a CA or a client identity."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rig")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


CERT, KEY = self_signed()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig(
    cluster: dict[str, Any], user: dict[str, Any] | None = None, name: str = "c"
) -> dict[str, Any]:
    context: dict[str, Any] = {"cluster": name}
    users = []
    if user is not None:
        context["user"] = name
        users = [{"name": name, "user": user}]
    return {
        "clusters": [{"name": name, "cluster": cluster}],
        "users": users,
        "contexts": [{"name": name, "context": context}],
        "current-context": name,
    }


async def test_token_and_ca_data() -> None:
    doc = kubeconfig(
        {"server": "https://k8s.example:6443/", "certificate-authority-data": b64(CERT)},
        {"token": "abc"},
    )
    config = kubeconfig_config(doc, "test")
    assert config.server == "https://k8s.example:6443"
    assert isinstance(config.ssl_context, ssl.SSLContext)
    assert config.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert config.ssl_context.get_ca_certs()[0]["subject"] == ((("commonName", "rig"),),)
    assert config.credentials == StaticToken("abc")
    assert config.credentials is not None
    assert await config.credentials.authorization() == "Bearer abc"
    assert config.source == "test (context c)"


def test_insecure_skip_tls_verify_turns_verification_off() -> None:
    insecure = {"server": "https://x", "insecure-skip-tls-verify": True}
    assert kubeconfig_config(kubeconfig(insecure)).ssl_context is False
    with_cert = kubeconfig_config(
        kubeconfig(insecure, {"client-certificate-data": b64(CERT), "client-key-data": b64(KEY)})
    )
    assert isinstance(with_cert.ssl_context, ssl.SSLContext)
    assert with_cert.ssl_context.verify_mode == ssl.CERT_NONE
    assert with_cert.credentials is None  # the certificate is the identity


def test_client_certificate_needs_its_key() -> None:
    cluster = {"server": "https://x", "certificate-authority-data": b64(CERT)}
    with pytest.raises(ConfigError, match="no client key"):
        kubeconfig_config(kubeconfig(cluster, {"client-certificate-data": b64(CERT)}))
    _, other_key = self_signed()
    with pytest.raises(ssl.SSLError):  # a key that does not match the certificate
        kubeconfig_config(
            kubeconfig(
                cluster,
                {"client-certificate-data": b64(CERT), "client-key-data": b64(other_key)},
            )
        )


@pytest.mark.parametrize(
    ("cluster", "user", "message"),
    [
        ({"server": "https://x", "tls-server-name": "y"}, {}, "tls-server-name"),
        ({"server": "https://x", "proxy-url": "http://p"}, {}, "proxy-url"),
        ({"server": "https://x"}, {"username": "u", "password": "p"}, "username, password"),
        ({"server": "https://x"}, {"exec": {"command": "x"}}, "exec"),
        ({"server": "https://x"}, {"auth-provider": {"name": "oidc"}}, "auth-provider"),
        ({}, {}, "has no server"),
    ],
)
def test_what_is_not_supported_is_said(
    cluster: dict[str, Any], user: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        kubeconfig_config(kubeconfig(cluster, user))


def test_missing_context_cluster_or_user_is_said() -> None:
    doc = kubeconfig({"server": "https://x"}, {"token": "t"})
    with pytest.raises(ConfigError, match="no current-context"):
        kubeconfig_config({**doc, "current-context": ""}, "f")
    with pytest.raises(ConfigError, match="no context named 'other'"):
        kubeconfig_config({**doc, "current-context": "other"})
    doc["contexts"][0]["context"]["user"] = "nobody"
    with pytest.raises(ConfigError, match="no user named 'nobody'"):
        kubeconfig_config(doc)


def test_files_merge_first_wins_and_relative_paths_follow_their_file(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b" / "nested"
    first.mkdir()
    second.mkdir(parents=True)
    (second / "ca.crt").write_bytes(CERT)
    (second / "token").write_text("from-file\n")
    (first / "config").write_text(
        yaml.safe_dump(kubeconfig({"server": "https://first"}, {"token": "t"}, name="one"))
    )
    other = kubeconfig(
        {"server": "https://second", "certificate-authority": "ca.crt"},
        {"tokenFile": "token"},
        name="two",
    )
    # A cluster named like one in the first file: the first file's wins.
    other["clusters"].append({"name": "one", "cluster": {"server": "https://ignored"}})
    (second / "config").write_text(yaml.safe_dump(other))
    paths = os.pathsep.join(
        [str(first / "config"), str(tmp_path / "missing"), str(second / "config")]
    )

    merged = read_kubeconfig(paths)
    assert merged["current-context"] == "one"
    assert [c["name"] for c in merged["clusters"]] == ["one", "two"]
    assert merged["clusters"][0]["cluster"]["server"] == "https://first"
    config = kubeconfig_config({**merged, "current-context": "two"})
    assert config.server == "https://second"
    assert config.credentials == TokenFile(second / "token")
    with pytest.raises(ConfigError, match="no kubeconfig file"):
        read_kubeconfig(str(tmp_path / "missing"))


async def test_a_token_file_is_read_again_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first\n")
    source = TokenFile(path)
    assert await source.authorization() == "Bearer first"
    assert await source.authorization() == "Bearer first"
    rotated = tmp_path / "token.new"
    rotated.write_text("second\n")
    rotated.replace(path)  # as the kubelet swaps a projected token: a new file
    assert await source.authorization() == "Bearer second"


def service_account(tmp_path: Path) -> Path:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_bytes(CERT)
    return tmp_path


async def test_in_cluster(tmp_path: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    config = in_cluster_config(env, service_account(tmp_path))
    assert (config.server, config.source) == ("https://10.0.0.1:443", "in-cluster")
    assert config.credentials is not None
    assert await config.credentials.authorization() == "Bearer sa-token"
    v6 = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    assert in_cluster_config(v6, tmp_path).server == "https://[fd00::1]:443"
    with pytest.raises(ConfigError, match="not in a pod"):
        in_cluster_config({}, tmp_path)
    (tmp_path / "token").unlink()
    with pytest.raises(ConfigError, match="token is missing"):
        in_cluster_config(env, tmp_path)


async def test_load_config_prefers_the_setting_then_the_pod_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig({"server": "https://from-file"}, {"token": "t"})))
    monkeypatch.setattr(kubeapi, "SERVICE_ACCOUNT_DIR", service_account(tmp_path / "sa"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert (await load_config(str(path))).server == "https://from-file"
    assert (await load_config(None)).server == "https://10.0.0.1:443"
    (tmp_path / "sa" / "token").unlink()  # a pod without a service account: try home
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(ConfigError, match=r"token is missing.*, and there is no ~/.kube/config"):
        await load_config(None)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(ConfigError, match=r"not in a pod.*, and there is no ~/.kube/config"):
        await load_config(None)
    (tmp_path / "home" / ".kube").mkdir(parents=True)
    (tmp_path / "home" / ".kube" / "config").write_text(path.read_text())
    assert (await load_config(None)).server == "https://from-file"


def test_errors_and_what_counts_as_unavailable() -> None:
    status = {"kind": "Status", "message": 'leases "x" not found', "code": 404}
    error = ApiError(404, "Not Found", status)
    assert str(error) == '404 Not Found: leases "x" not found'
    assert (error.status, error.reason, error.body) == (404, "Not Found", status)
    assert str(ApiError(500, "Internal Server Error", "plain text")) == "500 Internal Server Error"
    assert unavailable(ApiError(429, "Too Many Requests", None, retry_after=2.0))
    assert unavailable(ApiError(503, "Service Unavailable"))
    assert not unavailable(ApiError(409, "Conflict"))
    assert not unavailable(ApiError(403, "Forbidden"))
    assert unavailable(aiohttp.ClientConnectionError("refused"))
    assert unavailable(TimeoutError())
    assert not unavailable(ValueError("a bug"))


def test_resource_paths() -> None:
    apps = Resource("argoproj.io", "v1alpha1", "applications")
    assert apps.path("argocd") == "/apis/argoproj.io/v1alpha1/namespaces/argocd/applications"
    assert LEASES.path("ns", "bot") == "/apis/coordination.k8s.io/v1/namespaces/ns/leases/bot"
    assert Resource("", "v1", "secrets").path("a", "b") == "/api/v1/namespaces/a/secrets/b"


class _AlwaysMoved:
    """A KubeApi stand-in whose object changes between every read and write (a 409 each)."""

    def __init__(self) -> None:
        self.patches = 0

    async def get(self, path: str) -> dict[str, Any]:
        meta = {"resourceVersion": str(self.patches), "finalizers": [TEARDOWN_FINALIZER]}
        return {"metadata": meta}

    async def merge_patch(
        self, path: str, body: dict[str, Any], field_manager: str | None = None
    ) -> dict[str, Any]:
        self.patches += 1
        raise ApiError(409, "Conflict", {"reason": "Conflict"})


async def test_a_release_that_keeps_conflicting_is_a_temporary_error() -> None:
    api = _AlwaysMoved()
    with pytest.raises(TemporaryError, match="kept changing"):
        await ArgoCD(api, "argocd").release("dex-pr-42")  # type: ignore[arg-type]
    assert api.patches == RELEASE_ATTEMPTS


class _OneApplication:
    """A KubeApi stand-in holding one Application (dex-pr-42), or none once `gone`; with
    `vanish`, it goes between the release's read and its write (another replica released it)."""

    def __init__(self, finalizers: list[str], vanish: bool = False) -> None:
        self.meta: dict[str, Any] = {"resourceVersion": "1", "finalizers": finalizers}
        self.gone = False
        self.vanish = vanish
        self.patches: list[dict[str, Any]] = []

    async def get(self, path: str) -> dict[str, Any]:
        if self.gone or not path.endswith("/dex-pr-42"):
            raise ApiError(404, "Not Found", {"reason": "NotFound"})
        self.gone = self.vanish
        return {"metadata": dict(self.meta)}

    async def merge_patch(
        self, path: str, body: dict[str, Any], field_manager: str | None = None
    ) -> dict[str, Any]:
        self.patches.append(body)
        if self.gone:
            raise ApiError(404, "Not Found", {"reason": "NotFound"})
        self.meta = {**self.meta, **body["metadata"]}
        return {"metadata": dict(self.meta)}


async def test_release_is_true_only_when_its_own_write_took_the_finalizer_off() -> None:
    api = _OneApplication([FINALIZER, TEARDOWN_FINALIZER])
    argocd = ArgoCD(api, "argocd")  # type: ignore[arg-type]
    assert await argocd.release("dex-pr-42") is True
    assert api.meta["finalizers"] == [FINALIZER]  # Argo CD's stays
    assert await argocd.release("dex-pr-42") is False  # nothing of ours left: no write
    assert await argocd.release("dex-pr-404") is False  # gone: nothing to release
    assert len(api.patches) == 1


async def test_a_release_that_finds_the_application_gone_at_its_write_is_false() -> None:
    api = _OneApplication([TEARDOWN_FINALIZER], vanish=True)
    assert await ArgoCD(api, "argocd").release("dex-pr-42") is False  # type: ignore[arg-type]
    assert len(api.patches) == 1  # the write was tried, and answered 404


def test_released_finalizers_drop_only_the_bots_and_keep_the_order() -> None:
    from bot.model import FINALIZER, TEARDOWN_FINALIZER, released_finalizers

    other = "example.com/keep"
    meta = {"finalizers": [FINALIZER, TEARDOWN_FINALIZER, other]}
    assert released_finalizers(meta) == [FINALIZER, other]
    assert released_finalizers({"finalizers": [FINALIZER, other]}) is None  # nothing to release
    assert released_finalizers({}) is None
    assert meta["finalizers"] == [FINALIZER, TEARDOWN_FINALIZER, other]  # the object untouched
