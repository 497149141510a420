"""A lean Kubernetes REST client on aiohttp: configuration, reads, writes and watches."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, Self
from urllib.parse import quote

import aiohttp
import yaml

from bot import USER_AGENT

log = logging.getLogger(__name__)

# Where a pod finds its service account's token, CA and namespace.
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = "~/.kube/config"
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
# Credentials from a plugin (exec, auth-provider) are asked again this often; the plugin
# itself, like kubectl's, answers from its cache while its token is still valid.
PLUGIN_REFRESH_SECONDS = 60.0


class ConfigError(Exception):
    """No usable cluster configuration: a file or key is missing, or a feature unsupported."""


class ApiError(Exception):
    """The API server answered with an error status; `body` is its Status object (or text)."""

    def __init__(
        self, status: int, reason: str, body: Any = None, retry_after: float | None = None
    ) -> None:
        message = body.get("message") if isinstance(body, dict) else None
        super().__init__(f"{status} {reason}" + (f": {message}" if message else ""))
        self.status = status
        self.reason = reason
        self.body = body
        # Seconds the server asked us to wait (429 with Retry-After), else None.
        self.retry_after = retry_after


def unavailable(exc: BaseException) -> bool:
    """Whether a failure says the API server is unreachable or overloaded: worth a retry."""
    if isinstance(exc, ApiError):
        return exc.status == 429 or exc.status >= 500
    return isinstance(exc, aiohttp.ClientError | TimeoutError | OSError)


@dataclass(frozen=True)
class Resource:
    """A kind of object by its REST coordinates; `group` "" is the core API (/api/v1)."""

    group: str
    version: str
    plural: str

    def path(self, namespace: str, name: str | None = None) -> str:
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        path = f"{root}/namespaces/{quote(namespace, safe='')}/{self.plural}"
        return path if name is None else f"{path}/{quote(name, safe='')}"


LEASES = Resource("coordination.k8s.io", "v1", "leases")


class WatchEvent(NamedTuple):
    """One line of a watch: ADDED, MODIFIED, DELETED or BOOKMARK, and the object."""

    type: str
    object: dict[str, Any]


# ---- credentials ------------------------------------------------------------------------------


class Credentials(Protocol):
    """Where the Authorization header comes from; asked before every request."""

    async def authorization(self) -> str | None: ...


@dataclass
class StaticToken:
    """A bearer token written in the kubeconfig."""

    token: str

    async def authorization(self) -> str | None:
        return f"Bearer {self.token}"


@dataclass
class TokenFile:
    """A bearer token in a file, read again whenever the file changes.

    The kubelet rotates a pod's bound service-account token (it expires after an hour) by
    swapping the file behind a symlink; a token read once at start would be refused later.
    One stat per request is far cheaper than the request.
    """

    path: Path
    _seen: tuple[int, int, int] | None = field(default=None, repr=False)
    _token: str = field(default="", repr=False)

    async def authorization(self) -> str | None:
        st = self.path.stat()
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._seen:
            self._token = self.path.read_text().strip()
            self._seen = key
        return f"Bearer {self._token}"


class _PluginCredentials:
    """An exec plugin's or auth-provider's token, through kubernetes_asyncio's own loader.

    Imported only here: a user with such credentials pays its import (~0.5 s, ~60 MiB), no
    one else does.
    """

    def __init__(self, loader: Any, configuration: Any) -> None:
        self._loader = loader
        self._configuration = configuration
        self._loaded_at: float | None = None
        # Concurrent requests when the credentials are due wait for one plugin run, not many.
        self._loading = asyncio.Lock()

    def _due(self) -> bool:
        loaded = self._loaded_at
        return loaded is None or time.monotonic() - loaded >= PLUGIN_REFRESH_SECONDS

    async def load(self) -> None:
        await self._loader.load_and_set(self._configuration)
        self._loaded_at = time.monotonic()

    async def authorization(self) -> str | None:
        if self._due():
            async with self._loading:
                if self._due():
                    await self.load()
        value = self._configuration.api_key.get("BearerToken")
        return str(value) if value else None


# ---- configuration ----------------------------------------------------------------------------


@dataclass
class ClusterConfig:
    """Where the API server is, how to trust it, and who we are to it."""

    server: str
    ssl_context: ssl.SSLContext | bool  # False: no verification (insecure-skip-tls-verify)
    credentials: Credentials | None = None
    source: str = ""  # "in-cluster", or the kubeconfig and context: for messages


def in_cluster_config(
    environ: Mapping[str, str] | None = None, account_dir: Path | None = None
) -> ClusterConfig:
    """The pod's service account: the API server from KUBERNETES_SERVICE_HOST/PORT, its CA,
    and the token file (read again when the kubelet rotates it)."""
    env = os.environ if environ is None else environ
    account_dir = SERVICE_ACCOUNT_DIR if account_dir is None else account_dir
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise ConfigError("not in a pod: KUBERNETES_SERVICE_HOST/PORT are not set")
    token, ca = account_dir / "token", account_dir / "ca.crt"
    for path in (token, ca):
        if not path.is_file():
            raise ConfigError(f"in a pod but {path} is missing: is a service account mounted?")
    host = f"[{host}]" if ":" in host else host  # an IPv6 address
    return ClusterConfig(
        server=f"https://{host}:{port}",
        ssl_context=ssl.create_default_context(cafile=str(ca)),
        credentials=TokenFile(token),
        source="in-cluster",
    )


def read_kubeconfig(paths: str) -> dict[str, Any]:
    """One kubeconfig from KUBECONFIG-style `paths` (os.pathsep-separated), merged as kubectl
    does: the first file to name a cluster, user or context wins, and so does the first
    current-context. Relative file references are made absolute against their own file."""
    merged: dict[str, Any] = {"clusters": [], "users": [], "contexts": []}
    files = [Path(p).expanduser() for p in paths.split(os.pathsep) if p]
    for file in files:
        if not file.is_file():
            continue
        doc = yaml.safe_load(file.read_text()) or {}
        if not isinstance(doc, dict):
            raise ConfigError(f"{file} is not a kubeconfig (a mapping)")
        _absolute_paths(doc, file.parent)
        if not merged.get("current-context"):
            merged["current-context"] = doc.get("current-context")
        for section in ("clusters", "users", "contexts"):
            known = {entry.get("name") for entry in merged[section]}
            merged[section] += [e for e in doc.get(section) or [] if e.get("name") not in known]
    if not any(f.is_file() for f in files):
        raise ConfigError(f"no kubeconfig file at {paths}")
    return merged


_FILE_KEYS = {
    "clusters": ("cluster", ("certificate-authority",)),
    "users": ("user", ("client-certificate", "client-key", "tokenFile")),
}


def _absolute_paths(doc: dict[str, Any], base: Path) -> None:
    for section, (inner, keys) in _FILE_KEYS.items():
        for entry in doc.get(section) or []:
            body = entry.get(inner) or {}
            for key in keys:
                if body.get(key):
                    body[key] = str((base / Path(body[key]).expanduser()).resolve())


def _named(doc: dict[str, Any], section: str, name: Any) -> dict[str, Any]:
    for entry in doc.get(section) or []:
        if entry.get("name") == name:
            return dict(entry.get(section[:-1]) or {})
    raise ConfigError(f"kubeconfig has no {section[:-1]} named {name!r}")


def _current(doc: dict[str, Any], source: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The current context's name, cluster and user (empty when the context names none)."""
    name = doc.get("current-context")
    if not name:
        raise ConfigError(f"{source} has no current-context")
    context = _named(doc, "contexts", name)
    cluster = _named(doc, "clusters", context.get("cluster"))
    user = _named(doc, "users", context["user"]) if context.get("user") else {}
    if not cluster.get("server"):
        raise ConfigError(f"{source}: cluster {context.get('cluster')!r} has no server")
    _unsupported("cluster", cluster, ("tls-server-name", "proxy-url"))
    return str(name), cluster, user


def _unsupported(section: str, body: dict[str, Any], keys: Sequence[str]) -> None:
    found = [k for k in keys if body.get(k)]
    if found:
        raise ConfigError(f"kubeconfig {section} uses {', '.join(found)}, which is not supported")


def _decoded(data: str) -> bytes:
    return base64.b64decode(data)


def _ssl_context(cluster: dict[str, Any], user: dict[str, Any]) -> ssl.SSLContext | bool:
    if cluster.get("insecure-skip-tls-verify"):
        if user.get("client-certificate") or user.get("client-certificate-data"):
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            return False
    elif cluster.get("certificate-authority-data"):
        cadata = _decoded(cluster["certificate-authority-data"]).decode("ascii")
        context = ssl.create_default_context(cadata=cadata)
    elif cluster.get("certificate-authority"):
        context = ssl.create_default_context(cafile=cluster["certificate-authority"])
    else:
        context = ssl.create_default_context()
    _load_client_certificate(context, user)
    return context


def _load_client_certificate(context: ssl.SSLContext, user: dict[str, Any]) -> None:
    """client-certificate(-data) + client-key(-data); ssl only loads them from files, so data
    goes through a private temporary directory that is gone once loaded."""
    cert, key = user.get("client-certificate"), user.get("client-key")
    cert_data, key_data = user.get("client-certificate-data"), user.get("client-key-data")
    if not (cert or cert_data):
        return
    if not (key or key_data):
        raise ConfigError("kubeconfig user has a client certificate but no client key")
    with tempfile.TemporaryDirectory(prefix="preview-bot-tls-") as tmp:
        if cert_data:
            cert = os.path.join(tmp, "tls.crt")
            Path(cert).write_bytes(_decoded(cert_data))
        if key_data:
            key = os.path.join(tmp, "tls.key")
            Path(key).write_bytes(_decoded(key_data))
        context.load_cert_chain(str(cert), str(key))


def _plain_credentials(user: dict[str, Any]) -> Credentials | None:
    if user.get("token"):
        return StaticToken(str(user["token"]))
    if user.get("tokenFile"):
        return TokenFile(Path(user["tokenFile"]))
    return None  # a client certificate alone, or anonymous


def kubeconfig_config(doc: dict[str, Any], source: str = "kubeconfig") -> ClusterConfig:
    """The current context of a kubeconfig (as read_kubeconfig returns it).

    Supported: the cluster's server, certificate-authority(-data) and insecure-skip-tls-verify;
    the user's token, tokenFile, client-certificate(-data) and client-key(-data). A user with
    `exec` or `auth-provider` raises ConfigError here: `load_config` then falls back to
    kubernetes_asyncio's own loader. tls-server-name, proxy-url and username/password are
    refused with a clear error rather than ignored (the connection would fail obscurely).
    """
    context_name, cluster, user = _current(doc, source)
    _unsupported("user", user, ("exec", "auth-provider", "username", "password"))
    return ClusterConfig(
        server=str(cluster["server"]).rstrip("/"),
        ssl_context=_ssl_context(cluster, user),
        credentials=_plain_credentials(user),
        source=f"{source} (context {context_name})",
    )


async def _plugin_config(doc: dict[str, Any], source: str) -> ClusterConfig:
    """A user with `exec` or `auth-provider`: kubernetes_asyncio's loader runs the plugin."""
    from kubernetes_asyncio.client import Configuration
    from kubernetes_asyncio.config.kube_config import KubeConfigLoader

    context_name, cluster, _ = _current(doc, source)
    log.info("%s: credentials from a plugin, through kubernetes_asyncio's loader", source)
    configuration = Configuration()
    credentials = _PluginCredentials(KubeConfigLoader(config_dict=doc), configuration)
    await credentials.load()
    # An exec plugin may answer with a client certificate instead of a token.
    user = {"client-certificate": configuration.cert_file, "client-key": configuration.key_file}
    return ClusterConfig(
        server=str(cluster["server"]).rstrip("/"),
        ssl_context=_ssl_context(cluster, user),
        credentials=credentials,
        source=f"{source} (context {context_name}, credentials from a plugin)",
    )


def _home_kubeconfig(why: ConfigError) -> str:
    """~/.kube/config when the service account is not usable; else an error saying both."""
    if not Path(DEFAULT_KUBECONFIG).expanduser().is_file():
        raise ConfigError(f"{why}, and there is no {DEFAULT_KUBECONFIG}") from None
    return DEFAULT_KUBECONFIG


async def load_config(kubeconfig: str | None = None) -> ClusterConfig:
    """The cluster configuration, as `kubectl` would find it from inside or outside a pod.

    `kubeconfig` (the setting, i.e. KUBECONFIG) when given; else the pod's service account;
    else ~/.kube/config (as the client used before did). A kubeconfig user with `exec` or
    `auth-provider` credentials falls back to kubernetes_asyncio's loader, imported only then.
    """
    if not kubeconfig:
        try:
            return in_cluster_config()
        except ConfigError as exc:
            kubeconfig = _home_kubeconfig(exc)
    doc = read_kubeconfig(kubeconfig)
    _, _, user = _current(doc, kubeconfig)
    if user.get("exec") or user.get("auth-provider"):
        return await _plugin_config(doc, kubeconfig)
    return kubeconfig_config(doc, kubeconfig)


# ---- the client -------------------------------------------------------------------------------


class KubeApi:
    """REST calls to one API server: JSON in, JSON out, errors as ApiError.

    Network failures arrive as aiohttp/OS errors and timeouts, as the caller's adapter sorts
    them (see `unavailable`). The aiohttp session is made on first use, inside the loop.
    """

    def __init__(
        self,
        config: ClusterConfig,
        *,
        timeout: float = 30.0,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        self.config = config
        self.timeout = timeout
        self._trace_configs = list(trace_configs)
        self._session: aiohttp.ClientSession | None = None

    @property
    def server(self) -> str:
        return self.config.server

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.config.ssl_context),
                headers={"Accept": "application/json", "User-Agent": USER_AGENT},
                trace_configs=self._trace_configs or None,
            )
        return self._session

    async def _headers(self, content_type: str | None) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.config.credentials is not None:
            value = await self.config.credentials.authorization()
            if value:
                headers["Authorization"] = value
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        """One call; the answer's JSON. Raises ApiError for any status >= 400."""
        data = None if body is None else json.dumps(body).encode()
        headers = await self._headers(content_type if data is not None else None)
        async with self._http().request(
            method,
            self.server + path,
            params=params,
            data=data,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        ) as resp:
            if resp.status >= 400:
                raise await _error(resp)
            answer = await resp.read()
        return json.loads(answer) if answer else None

    async def get(self, path: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", path)
        return result

    async def list(
        self, path: str, label_selector: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """A collection: `items` and `metadata.resourceVersion` (where a watch may start);
        with `limit`, at most that many items (the API server's chunking)."""
        params: dict[str, str] = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if limit is not None:
            params["limit"] = str(limit)
        result: dict[str, Any] = await self.request("GET", path, params=params or None)
        return result

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the collection; 409 when the name is taken."""
        result: dict[str, Any] = await self.request("POST", path, body=body)
        return result

    async def replace(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT the whole object; with metadata.resourceVersion set, 409 if it changed since."""
        result: dict[str, Any] = await self.request("PUT", path, body=body)
        return result

    async def apply(
        self, path: str, body: dict[str, Any], field_manager: str, force: bool = True
    ) -> dict[str, Any]:
        """Server-side apply: creates or updates in one request, owning the fields it sends."""
        params = {"fieldManager": field_manager, "force": "true" if force else "false"}
        # JSON is YAML: the apply content type accepts it as it is.
        result: dict[str, Any] = await self.request(
            "PATCH", path, params=params, body=body, content_type=APPLY_PATCH
        )
        return result

    async def merge_patch(
        self, path: str, body: dict[str, Any], field_manager: str | None = None
    ) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386): keys set, null removes, lists are replaced."""
        params = {"fieldManager": field_manager} if field_manager else None
        result: dict[str, Any] = await self.request(
            "PATCH", path, params=params, body=body, content_type=MERGE_PATCH
        )
        return result

    async def delete(self, path: str) -> dict[str, Any]:
        """DELETE: a Status when it is gone, or the object itself while finalizers hold it."""
        result: dict[str, Any] = await self.request("DELETE", path)
        return result

    @contextlib.asynccontextmanager
    async def watch(
        self,
        path: str,
        resource_version: str,
        *,
        label_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[AsyncIterator[WatchEvent]]:
        """`async with api.watch(path, version) as events: async for event in events: ...`

        Changes after `resource_version` (from a list), with BOOKMARK events carrying newer
        versions only. Ends when the server closes the watch (after about timeout_seconds).
        An ERROR event raises ApiError with its code: 410 Gone means the version is too old,
        so the caller lists again and watches from the new list's version.
        """
        params = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        if label_selector:
            params["labelSelector"] = label_selector
        # No total limit: the server ends the watch; a silent connection ends at sock_read.
        timeout = aiohttp.ClientTimeout(sock_connect=self.timeout, sock_read=timeout_seconds + 30)
        async with self._http().get(
            self.server + path, params=params, headers=await self._headers(None), timeout=timeout
        ) as resp:
            if resp.status >= 400:
                raise await _error(resp)
            yield _events(resp)


async def _events(resp: aiohttp.ClientResponse) -> AsyncIterator[WatchEvent]:
    # Split lines by hand: aiohttp's readline refuses lines over 128 KiB, and an Application
    # with a long status can be larger.
    buffer = b""
    async for chunk in resp.content.iter_any():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield _event(json.loads(line))
    if buffer.strip():  # the server ends every event with a newline: this one was cut off
        raise aiohttp.ClientPayloadError(f"watch ended inside an event ({len(buffer)} bytes)")


def _event(raw: dict[str, Any]) -> WatchEvent:
    obj = raw.get("object") or {}
    if raw.get("type") == "ERROR":
        code = int(obj.get("code") or 500)
        raise ApiError(code, str(obj.get("reason") or "watch error"), obj)
    return WatchEvent(str(raw.get("type")), obj)


async def _error(resp: aiohttp.ClientResponse) -> ApiError:
    text = await resp.text()
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = text
    retry_after: float | None = None
    with contextlib.suppress(TypeError, ValueError):
        retry_after = float(resp.headers.get("Retry-After"))  # type: ignore[arg-type]
    return ApiError(resp.status, resp.reason or "", body, retry_after)


async def connect(kubeconfig: str | None = None, request_seconds: float = 30.0) -> KubeApi:
    """A client for the configured cluster (see `load_config`); close it when done."""
    return KubeApi(await load_config(kubeconfig), timeout=request_seconds)
