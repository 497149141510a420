"""The chart's Role is enough for the bot and no more, proven on a real API server.

The chart's ServiceAccount, Roles and RoleBindings are applied to the test API server; then the
bot's own Argo CD adapter (bot/kube.py) runs every operation it has with a real token of that
ServiceAccount. Every request is recorded and turned into the RBAC verb the server checked:
each must be allowed, and the verbs used must be exactly the verbs granted. Requests outside
the Roles (a PUT, Secrets, another namespace, another Lease) must be refused. Leader election's
Lease is allowed with leaderElection.enabled only: a release without it gets no Lease at all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.leaderelection.leaderelectionrecord import LeaderElectionRecord
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

from bot.config import Settings
from bot.kube import MERGE, ArgoCD
from bot.model import ObservedApp, PullRequest
from bot.render import render_application
from tests.deploy.chart import documents, one, render
from tests.deploy.conftest import ensure_namespace, kubectl
from tests.rig.kube import KubeRig

RELEASE_NS = "preview-bot-rbac"
# A second release, leader election off (its own namespace, so the two never share a binding).
RELEASE_NS_OFF = "preview-bot-rbac-off"
LEASE = "preview-bot"
RBAC_KINDS = ("ServiceAccount", "Role", "RoleBinding")


@dataclass(frozen=True)
class Call:
    """One request as RBAC sees it."""

    verb: str
    resource: str  # group/plural, "" group for the core API
    namespace: str
    status: int


def rbac_verb(method: str, path: str, query: dict[str, str], status: int) -> list[str]:
    """The RBAC verbs the API server authorizes for a request (a create by apply is two)."""
    parts = path.strip("/").split("/")
    named = len(parts) > parts.index("namespaces") + 3  # .../namespaces/NS/PLURAL/NAME
    if method == "GET":
        if query.get("watch") in ("true", "True", "1"):
            return ["watch"]
        return ["get"] if named else ["list"]
    if method == "PATCH":
        # A server-side apply of an object that does not exist yet creates it: 201, and the
        # server checks `create` too (a Role with only `patch` gets 403 here).
        return ["patch", "create"] if status == 201 else ["patch"]
    return {
        "POST": ["create"],
        "PUT": ["update"],
        "DELETE": ["delete" if named else "deletecollection"],
    }[method]


def _resource(path: str) -> tuple[str, str]:
    parts = path.strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    ns_at = parts.index("namespaces")
    return f"{group}/{parts[ns_at + 2]}", parts[ns_at + 1]


class Recorder:
    """Wraps an ApiClient's REST layer and writes down every request and its answer."""

    def __init__(self, api: ApiClient) -> None:
        self.calls: list[Call] = []
        original = api.rest_client.request

        async def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            query = {str(k): str(v) for k, v in (kwargs.get("query_params") or [])}
            path = urlparse(url).path
            try:
                response = await original(method, url, *args, **kwargs)
            except ApiException as exc:
                self._note(method, path, query, int(exc.status))
                raise
            self._note(method, path, query, int(response.status))
            return response

        # Patched on this one client only; the signature is the same, mypy cannot know.
        api.rest_client.request = request  # type: ignore[method-assign]

    def _note(self, method: str, path: str, query: dict[str, str], status: int) -> None:
        resource, namespace = _resource(path)
        for verb in rbac_verb(method, path, query, status):
            self.calls.append(Call(verb, resource, namespace, status))


def _rbac_docs(namespace: str, *values: str) -> list[dict[str, Any]]:
    text = render(values, release="preview-bot", namespace=namespace)
    return [d for d in documents(text) if d["kind"] in RBAC_KINDS]


@pytest.fixture(scope="module")
def role_docs() -> list[dict[str, Any]]:
    """What the chart renders for a release in its own namespace, with leader election on."""
    return _rbac_docs(
        RELEASE_NS,
        "--set",
        "leaderElection.enabled=true",
        "--set",
        f"leaderElection.leaseName={LEASE}",
    )


async def _token_of(
    kube: KubeRig, docs: list[dict[str, Any]], namespace: str, applied: list[str]
) -> dict[str, Any]:
    """Apply the chart's RBAC for real; a kubeconfig with a real token of its ServiceAccount."""
    ensure_namespace(kube, namespace)
    text = yaml.safe_dump_all(docs)
    done = kubectl(kube, "apply", "--server-side", "-f", "-", stdin=text)
    assert done.returncode == 0, done.stderr
    applied.append(text)
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    return await kube.make_service_account_kubeconfig(namespace, sa)


@pytest.fixture
async def as_bot(
    kube: KubeRig, role_docs: list[dict[str, Any]], applied: list[str], argocd_ns: str
) -> AsyncIterator[ApiClient]:
    """An ApiClient holding a real token of the chart's ServiceAccount, its RBAC applied."""
    kubeconfig = await _token_of(kube, role_docs, RELEASE_NS, applied)
    async with await config.new_client_from_config_dict(kubeconfig) as api:
        await _wait_for_rbac(api, _access("argoproj.io", "applications", "list", argocd_ns))
        await _wait_for_rbac(api, _access("coordination.k8s.io", "leases", "create", RELEASE_NS))
        yield api


def _access(group: str, resource: str, verb: str, namespace: str) -> client.V1ResourceAttributes:
    return client.V1ResourceAttributes(
        group=group, resource=resource, verb=verb, namespace=namespace
    )


async def _allowed(api: ApiClient, attributes: client.V1ResourceAttributes) -> bool:
    review = client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attributes)
    )
    answer = await client.AuthorizationV1Api(api).create_self_subject_access_review(review)
    return bool(answer.status.allowed)


async def _wait_for_rbac(api: ApiClient, attributes: client.V1ResourceAttributes) -> None:
    # The RBAC authorizer reads Roles from an informer cache: a fresh binding may lag briefly.
    for _ in range(100):
        if await _allowed(api, attributes):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the chart's RoleBinding never took effect for {attributes}")


def _apps_role(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The Role for Applications (the other one is for the Lease)."""
    (role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "preview-bot"]
    return role


def _application(number: int = 42) -> dict[str, Any]:
    settings = Settings(github_app_id=1, github_private_key="", github_webhook_secret="")
    pr = PullRequest(
        repo="data-literate/DEX",
        number=number,
        state="open",
        merged=False,
        labels=frozenset({"preview"}),
        head_sha="a" * 40,
        head_repo="data-literate/DEX",
        default_branch="main",
        html_url=f"https://github.com/data-literate/DEX/pull/{number}",
        repo_html_url="https://github.com/data-literate/DEX",
    )
    return render_application(settings, pr, "main", installation_id=7)


async def _run_every_operation(argocd: ArgoCD) -> None:
    """Each operation of the adapter once, in the order a preview's life uses them."""
    app = _application()
    name = app["metadata"]["name"]
    await argocd.apply(app)  # creates
    assert await argocd.get(name) is not None
    app["spec"]["source"]["targetRevision"] = "preview-branch"
    await argocd.apply(app)  # updates
    assert await argocd.annotate(name, {"preview-bot.io/comment-id": "1"})
    assert [a.name for a in await argocd.list_managed()] == [name]

    changed = asyncio.Event()

    async def on_event(kind: str, _: ObservedApp) -> None:
        if kind == "MODIFIED":
            changed.set()

    watching = asyncio.create_task(argocd.watch(on_event, timeout_seconds=5))
    try:
        for _ in range(50):  # until the watch is open and sees our change
            await argocd.annotate(name, {"preview-bot.io/comment-id": str(_)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), 0.2)
                break
        assert changed.is_set(), "the watch saw no change"
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
    # Argo CD's finalizer holds it (no Argo CD here): the delete is accepted, the object stays.
    assert await argocd.delete(name) is False


async def test_role_allows_every_operation_and_grants_nothing_unused(
    as_bot: ApiClient, role_docs: list[dict[str, Any]], argocd_ns: str
) -> None:
    recorder = Recorder(as_bot)
    await _run_every_operation(ArgoCD(as_bot, argocd_ns))

    refused = [c for c in recorder.calls if c.status == 403]
    assert refused == []
    used = {c.verb for c in recorder.calls if c.resource == "argoproj.io/applications"}
    assert {c.namespace for c in recorder.calls} == {argocd_ns}
    (apps_rule,) = [r for r in _apps_role(role_docs)["rules"] if r["resources"] == ["applications"]]
    assert used == set(apps_rule["verbs"])


async def test_leases_allow_what_leader_election_does(as_bot: ApiClient, kube: KubeRig) -> None:
    """kubernetes-asyncio's LeaseLock: get (404 at first), create, get, update."""
    recorder = Recorder(as_bot)
    lock = LeaseLock(LEASE, RELEASE_NS, "pod-a", as_bot)
    found, _ = await lock.get(LEASE, RELEASE_NS)
    assert found is False
    # The library's own time format: str() of a naive UTC datetime, as LeaderElection writes it.
    now = str(datetime.now(UTC).replace(tzinfo=None))
    record = LeaderElectionRecord("pod-a", "15", now, now)
    assert await lock.create(LEASE, RELEASE_NS, record)
    found, _ = await lock.get(LEASE, RELEASE_NS)
    assert found is True
    assert await lock.update(LEASE, RELEASE_NS, record)
    assert {c.verb for c in recorder.calls} == {"get", "create", "update"}
    assert {c.namespace for c in recorder.calls} == {RELEASE_NS}
    assert [c.status for c in recorder.calls if c.status == 403] == []
    async with await kube.api_client() as admin:
        await client.CoordinationV1Api(admin).delete_namespaced_lease(LEASE, RELEASE_NS)


async def test_a_create_cannot_be_limited_to_the_leases_name(
    as_bot: ApiClient, kube: KubeRig
) -> None:
    """Why any Lease can be created in the Lease's namespace: RBAC checks a create before the
    object has a name it could match. Reading or renewing that other Lease stays refused."""
    leases = client.CoordinationV1Api(as_bot)
    other = client.V1Lease(metadata=client.V1ObjectMeta(name="not-the-bots"))
    await leases.create_namespaced_lease(RELEASE_NS, other)
    try:
        assert await _status(lambda: leases.read_namespaced_lease("not-the-bots", RELEASE_NS)) == (
            403
        )
        assert (
            await _status(
                lambda: leases.replace_namespaced_lease("not-the-bots", RELEASE_NS, other)
            )
            == 403
        )
    finally:
        async with await kube.api_client() as admin:
            await client.CoordinationV1Api(admin).delete_namespaced_lease(
                "not-the-bots", RELEASE_NS
            )


async def test_without_leader_election_no_lease_is_allowed(
    kube: KubeRig, applied: list[str], argocd_ns: str
) -> None:
    docs = _rbac_docs(RELEASE_NS_OFF)
    assert [d["kind"] for d in docs] == ["ServiceAccount", "Role", "RoleBinding"]
    kubeconfig = await _token_of(kube, docs, RELEASE_NS_OFF, applied)
    async with await config.new_client_from_config_dict(kubeconfig) as api:
        # The token works (its Applications Role has taken effect) ...
        await _wait_for_rbac(api, _access("argoproj.io", "applications", "list", argocd_ns))
        # ... and no Lease operation is allowed anywhere it could matter.
        for namespace in (RELEASE_NS_OFF, argocd_ns):
            for verb in ("get", "create", "update", "list", "watch", "patch", "delete"):
                lease = _access("coordination.k8s.io", "leases", verb, namespace)
                assert not await _allowed(api, lease), (verb, namespace)
        leases = client.CoordinationV1Api(api)
        record = client.V1Lease(metadata=client.V1ObjectMeta(name=LEASE))
        assert await _status(lambda: leases.read_namespaced_lease(LEASE, RELEASE_NS_OFF)) == 403
        assert await _status(lambda: leases.create_namespaced_lease(RELEASE_NS_OFF, record)) == 403


async def test_apply_of_a_new_application_needs_create(
    as_bot: ApiClient, kube: KubeRig, role_docs: list[dict[str, Any]], argocd_ns: str
) -> None:
    """Why `create` is granted although the bot never POSTs: apply creates through PATCH."""
    role = _apps_role(role_docs)
    without_create = [
        {**rule, "verbs": [v for v in rule["verbs"] if v != "create"]}
        for rule in role["rules"]
        if rule["resources"] == ["applications"]
    ]
    async with await kube.api_client() as admin:
        await client.RbacAuthorizationV1Api(admin).patch_namespaced_role(
            role["metadata"]["name"],
            argocd_ns,
            {"rules": without_create},
            **MERGE,
        )
    review = client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(
                group="argoproj.io", resource="applications", verb="create", namespace=argocd_ns
            )
        )
    )
    for _ in range(100):  # until the authorizer's cache has the narrower Role
        answer = await client.AuthorizationV1Api(as_bot).create_self_subject_access_review(review)
        if not answer.status.allowed:
            break
        await asyncio.sleep(0.05)
    with pytest.raises(ApiException) as refused:
        await ArgoCD(as_bot, argocd_ns).apply(_application())
    assert refused.value.status == 403


async def _status(call: Callable[[], Awaitable[Any]]) -> int:
    try:
        await call()
    except ApiException as exc:
        return int(exc.status)
    return 200


async def test_everything_outside_the_role_is_forbidden(
    as_bot: ApiClient, kube: KubeRig, argocd_ns: str
) -> None:
    async with await kube.api_client() as admin:
        await client.CustomObjectsApi(admin).create_namespaced_custom_object(
            "argoproj.io", "v1alpha1", argocd_ns, "applications", _application(7)
        )
    apps = client.CustomObjectsApi(as_bot)
    core = client.CoreV1Api(as_bot)
    leases = client.CoordinationV1Api(as_bot)
    group = ("argoproj.io", "v1alpha1")
    existing = await apps.get_namespaced_custom_object(
        *group, argocd_ns, "applications", "dex-pr-7"
    )
    forbidden = {
        "update (PUT) an Application": lambda: apps.replace_namespaced_custom_object(
            *group, argocd_ns, "applications", "dex-pr-7", existing
        ),
        "delete all Applications at once": lambda: apps.delete_collection_namespaced_custom_object(
            *group, argocd_ns, "applications"
        ),
        "list Applications in another namespace": lambda: apps.list_namespaced_custom_object(
            *group, "default", "applications"
        ),
        "list AppProjects": lambda: apps.list_namespaced_custom_object(
            *group, argocd_ns, "appprojects"
        ),
        "read Secrets in the Argo CD namespace": lambda: core.list_namespaced_secret(argocd_ns),
        "read Secrets in its own namespace": lambda: core.list_namespaced_secret(RELEASE_NS),
        "create Pods": lambda: core.create_namespaced_pod(
            RELEASE_NS,
            client.V1Pod(
                metadata=client.V1ObjectMeta(name="x"),
                spec=client.V1PodSpec(containers=[client.V1Container(name="x", image="x")]),
            ),
        ),
        "read another Lease": lambda: leases.read_namespaced_lease("other", RELEASE_NS),
        "delete its Lease": lambda: leases.delete_namespaced_lease(LEASE, RELEASE_NS),
        "patch its Lease": lambda: leases.patch_namespaced_lease(
            LEASE, RELEASE_NS, {"spec": {"holderIdentity": "x"}}, **MERGE
        ),
        "list Leases": lambda: leases.list_namespaced_lease(RELEASE_NS),
        "read its Lease in the Argo CD namespace": lambda: leases.read_namespaced_lease(
            LEASE, argocd_ns
        ),
        "create a Lease in the Argo CD namespace": lambda: leases.create_namespaced_lease(
            argocd_ns, client.V1Lease(metadata=client.V1ObjectMeta(name=LEASE))
        ),
    }
    statuses = {what: await _status(call) for what, call in forbidden.items()}
    assert statuses == dict.fromkeys(forbidden, 403)


def test_rbac_verb_mapping() -> None:
    base = "/apis/argoproj.io/v1alpha1/namespaces/argocd/applications"
    assert rbac_verb("GET", base, {}, 200) == ["list"]
    assert rbac_verb("GET", base, {"watch": "True"}, 200) == ["watch"]
    assert rbac_verb("GET", base + "/x", {}, 200) == ["get"]
    assert rbac_verb("PATCH", base + "/x", {}, 201) == ["patch", "create"]
    assert rbac_verb("PATCH", base + "/x", {}, 200) == ["patch"]
    assert rbac_verb("DELETE", base, {}, 200) == ["deletecollection"]
    assert _resource(base + "/x") == ("argoproj.io/applications", "argocd")
    assert _resource("/api/v1/namespaces/a/secrets") == ("/secrets", "a")
