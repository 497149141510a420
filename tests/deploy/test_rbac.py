"""The chart's Role is enough for the bot and no more, proven on a real API server.

The chart's ServiceAccount, Roles and RoleBindings are applied to the test API server; then the
bot's own Argo CD adapter (bot/kube.py) runs every operation it has, and its elector
(bot/leader.py) campaigns, renews and releases, with a real token of that ServiceAccount.
Every request is recorded and turned into the RBAC verb the server checked: each must be
allowed, and the verbs used must be exactly the verbs granted. Requests outside the Roles (a
PUT of an Application, Secrets, another namespace, another Lease) must be refused. The Lease
is allowed with leaderElection.enabled only: a release without it gets no Lease at all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import yaml

from bot.config import Settings
from bot.errors import PermanentError
from bot.kube import APPLICATIONS, ArgoCD
from bot.kubeapi import LEASES, ApiError, KubeApi, Resource, kubeconfig_config
from bot.leader import Elector, LeaseRef
from bot.model import ObservedApp, PullRequest
from bot.render import render_application
from tests.deploy.chart import documents, one, render
from tests.deploy.conftest import ensure_namespace, kubectl
from tests.rig.kube import KubeRig

RELEASE_NS = "preview-bot-rbac"
RELEASE_NS_OFF = "preview-bot-rbac-off"
LEASE = "preview-bot"
RBAC_KINDS = ("ServiceAccount", "Role", "RoleBinding")
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


@dataclass(frozen=True)
class Call:
    """One request as RBAC sees it."""

    verb: str
    resource: str  # group/plural, "" group for the core API
    namespace: str
    status: int


def _parts(path: str) -> tuple[str, str, str, str]:
    """(group, namespace, plural, name) of an API path; "" for what it does not have."""
    parts = path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    return group, namespace, rest[0], rest[1] if len(rest) > 1 else ""


def rbac_verb(method: str, path: str, query: dict[str, str], status: int) -> list[str]:
    """The RBAC verbs the API server authorizes for a request (a create by apply is two)."""
    named = bool(_parts(path)[3])
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
    group, namespace, plural, _ = _parts(path)
    return f"{group}/{plural}", namespace


class Recorder:
    """An aiohttp trace of a KubeApi: every request and its answer's status, as RBAC verbs."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.trace = aiohttp.TraceConfig()
        self.trace.on_request_end.append(self._ended)

    async def _ended(
        self, _: aiohttp.ClientSession, __: object, params: aiohttp.TraceRequestEndParams
    ) -> None:
        query = {str(k): str(v) for k, v in params.url.query.items()}
        resource, namespace = _resource(params.url.path)
        for verb in rbac_verb(params.method, params.url.path, query, params.response.status):
            self.calls.append(Call(verb, resource, namespace, params.response.status))


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


def _role(docs: list[dict[str, Any]], resource: str) -> dict[str, Any]:
    """The Role whose rules are about `resource` (applications, or leases)."""
    (role,) = [
        d
        for d in docs
        if d["kind"] == "Role" and any(r["resources"] == [resource] for r in d["rules"])
    ]
    return role


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
async def bot_kubeconfig(
    kube: KubeRig, role_docs: list[dict[str, Any]], applied: list[str], argocd_ns: str
) -> dict[str, Any]:
    """A kubeconfig holding a real token of the chart's ServiceAccount, its RBAC applied."""
    kubeconfig = await _token_of(kube, role_docs, RELEASE_NS, applied)
    async with kube.kubeapi(kubeconfig) as api:
        # The RBAC authorizer reads Roles from an informer cache: a fresh binding may lag.
        for check in (APPS, "list", argocd_ns), (LEASE_ACCESS, "create", RELEASE_NS):
            if not await _until_allowed(api, *check, allowed=True):
                raise AssertionError(f"the chart's RoleBinding never took effect for {check}")
    return kubeconfig


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def as_bot(bot_kubeconfig: dict[str, Any], recorder: Recorder) -> AsyncIterator[KubeApi]:
    """The bot's client (bot.kubeapi) as the chart's ServiceAccount, every request recorded."""
    config = kubeconfig_config(bot_kubeconfig)
    async with KubeApi(config, trace_configs=[recorder.trace]) as api:
        yield api


APPS = ("argoproj.io", "applications")
LEASE_ACCESS = ("coordination.k8s.io", "leases")


async def _allowed(api: KubeApi, what: tuple[str, str], verb: str, namespace: str) -> bool:
    """The server's answer (SelfSubjectAccessReview): may this token `verb` `what` there?"""
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {
            "resourceAttributes": {
                "group": what[0],
                "resource": what[1],
                "verb": verb,
                "namespace": namespace,
            }
        },
    }
    answer = await api.create(ACCESS_REVIEWS, review)
    return bool(answer["status"].get("allowed"))


async def _until_allowed(
    api: KubeApi, what: tuple[str, str], verb: str, namespace: str, *, allowed: bool
) -> bool:
    """Ask until `verb` on `what` is (not) allowed: the authorizer's cache may lag a change."""
    for _ in range(100):
        if await _allowed(api, what, verb, namespace) == allowed:
            return True
        await asyncio.sleep(0.05)
    return False


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
    # The bot's own finalizer comes off with a read and a patch (Argo CD's stays).
    assert await argocd.release(name) is True
    held = await argocd.get(name)
    assert held is not None and held.terminating and not held.held


async def test_role_allows_every_operation_and_grants_nothing_unused(
    as_bot: KubeApi, recorder: Recorder, role_docs: list[dict[str, Any]], argocd_ns: str
) -> None:
    await _run_every_operation(ArgoCD(as_bot, argocd_ns))

    refused = [c for c in recorder.calls if c.status == 403]
    assert refused == []
    used = {c.verb for c in recorder.calls if c.resource == "argoproj.io/applications"}
    assert {c.namespace for c in recorder.calls} == {argocd_ns}
    (apps_rule,) = [
        r for r in _role(role_docs, "applications")["rules"] if r["resources"] == ["applications"]
    ]
    assert used == set(apps_rule["verbs"])


async def test_leases_allow_what_leader_election_does(
    as_bot: KubeApi,
    recorder: Recorder,
    admin_api: KubeApi,
    role_docs: list[dict[str, Any]],
    argocd_ns: str,
) -> None:
    """bot.leader's Elector: get (404 at first), create, update (renewals), update (release)."""
    elector = Elector(as_bot, LeaseRef(RELEASE_NS, LEASE), "pod-a", lease_seconds=3.0)
    leading = asyncio.Event()

    async def started() -> None:
        leading.set()

    async def stopped() -> None:
        return None

    campaign = asyncio.create_task(elector.run(started, stopped))
    try:
        await asyncio.wait_for(leading.wait(), 20)
        for _ in range(400):  # until one renewal (every second of this 3 s lease)
            if any(c.verb == "update" for c in recorder.calls):
                break
            await asyncio.sleep(0.05)
    finally:
        await elector.release()
    lease = await admin_api.get(LEASES.path(RELEASE_NS, LEASE))
    await admin_api.delete(LEASES.path(RELEASE_NS, LEASE))

    assert campaign.done()
    assert lease["spec"]["holderIdentity"] == ""  # released
    assert [c for c in recorder.calls if c.status == 403] == []
    assert {(c.resource, c.namespace) for c in recorder.calls} == {
        ("coordination.k8s.io/leases", RELEASE_NS)
    }
    used = {c.verb for c in recorder.calls}
    granted = {
        verb
        for rule in _role(role_docs, "leases")["rules"]
        if rule["resources"] == ["leases"]
        for verb in rule["verbs"]
    }
    assert used == granted == {"get", "create", "update"}


async def test_a_create_cannot_be_limited_to_the_leases_name(
    as_bot: KubeApi, admin_api: KubeApi
) -> None:
    """Why any Lease can be created in the Lease's namespace: RBAC checks a create before the
    object has a name it could match. Reading or renewing that other Lease stays refused."""
    other = {"metadata": {"name": "not-the-bots"}, "spec": {}}
    await as_bot.create(LEASES.path(RELEASE_NS), other)
    try:
        path = LEASES.path(RELEASE_NS, "not-the-bots")
        assert await _status(as_bot, "GET", path) == 403
        assert await _status(as_bot, "PUT", path, other) == 403
    finally:
        await admin_api.delete(LEASES.path(RELEASE_NS, "not-the-bots"))


async def test_without_leader_election_no_lease_is_allowed(
    kube: KubeRig, applied: list[str], argocd_ns: str
) -> None:
    docs = _rbac_docs(RELEASE_NS_OFF)
    assert [d["kind"] for d in docs] == ["ServiceAccount", "Role", "RoleBinding"]
    kubeconfig = await _token_of(kube, docs, RELEASE_NS_OFF, applied)
    async with kube.kubeapi(kubeconfig) as api:
        # The token works (its Applications Role has taken effect) ...
        assert await _until_allowed(api, APPS, "list", argocd_ns, allowed=True)
        # ... and no Lease operation is allowed anywhere it could matter.
        for namespace in (RELEASE_NS_OFF, argocd_ns):
            for verb in ("get", "create", "update", "list", "watch", "patch", "delete"):
                assert not await _allowed(api, LEASE_ACCESS, verb, namespace), (verb, namespace)
        assert await _status(api, "GET", LEASES.path(RELEASE_NS_OFF, LEASE)) == 403


async def test_apply_of_a_new_application_needs_create(
    as_bot: KubeApi, admin_api: KubeApi, role_docs: list[dict[str, Any]], argocd_ns: str
) -> None:
    """Why `create` is granted although the bot never POSTs: apply creates through PATCH."""
    role = _role(role_docs, "applications")
    without_create = [
        {**rule, "verbs": [v for v in rule["verbs"] if v != "create"]}
        for rule in role["rules"]
        if rule["resources"] == ["applications"]
    ]
    roles = Resource("rbac.authorization.k8s.io", "v1", "roles")
    await admin_api.merge_patch(
        roles.path(argocd_ns, role["metadata"]["name"]), {"rules": without_create}
    )
    # Until the authorizer's cache has the narrower Role.
    assert await _until_allowed(as_bot, APPS, "create", argocd_ns, allowed=False)
    with pytest.raises(PermanentError) as refused:
        await ArgoCD(as_bot, argocd_ns).apply(_application())
    assert refused.value.status == 403  # said once on the PR: the Role lacks a verb


async def _status(api: KubeApi, method: str, path: str, body: Any = None) -> int:
    try:
        await api.request(method, path, body=body)
    except ApiError as exc:
        return exc.status
    return 200


async def test_everything_outside_the_role_is_forbidden(
    as_bot: KubeApi, admin_api: KubeApi, argocd_ns: str
) -> None:
    await admin_api.create(APPLICATIONS.path(argocd_ns), _application(7))
    existing = await as_bot.get(APPLICATIONS.path(argocd_ns, "dex-pr-7"))
    projects = Resource("argoproj.io", "v1alpha1", "appprojects")
    secrets, pods = Resource("", "v1", "secrets"), Resource("", "v1", "pods")
    pod = {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "x", "image": "x"}]}}
    forbidden: dict[str, tuple[str, str, Any]] = {
        "update (PUT) an Application": (
            "PUT",
            APPLICATIONS.path(argocd_ns, "dex-pr-7"),
            existing,
        ),
        "delete all Applications at once": ("DELETE", APPLICATIONS.path(argocd_ns), None),
        "list Applications in another namespace": ("GET", APPLICATIONS.path("default"), None),
        "list AppProjects": ("GET", projects.path(argocd_ns), None),
        "read Secrets in the Argo CD namespace": ("GET", secrets.path(argocd_ns), None),
        "read Secrets in its own namespace": ("GET", secrets.path(RELEASE_NS), None),
        "create Pods": ("POST", pods.path(RELEASE_NS), pod),
        "read another Lease": ("GET", LEASES.path(RELEASE_NS, "other"), None),
        "delete its Lease": ("DELETE", LEASES.path(RELEASE_NS, LEASE), None),
        "patch its Lease": ("PATCH", LEASES.path(RELEASE_NS, LEASE), {"spec": {}}),
        "list Leases": ("GET", LEASES.path(RELEASE_NS), None),
        "read its Lease in the Argo CD namespace": ("GET", LEASES.path(argocd_ns, LEASE), None),
        "create a Lease in the Argo CD namespace": (
            "POST",
            LEASES.path(argocd_ns),
            {"metadata": {"name": LEASE}},
        ),
    }
    statuses = {what: await _status(as_bot, *call) for what, call in forbidden.items()}
    assert statuses == dict.fromkeys(forbidden, 403)


def test_rbac_verb_mapping() -> None:
    base = "/apis/argoproj.io/v1alpha1/namespaces/argocd/applications"
    assert rbac_verb("GET", base, {}, 200) == ["list"]
    assert rbac_verb("GET", base, {"watch": "True"}, 200) == ["watch"]
    assert rbac_verb("GET", base + "/x", {}, 200) == ["get"]
    assert rbac_verb("PATCH", base + "/x", {}, 201) == ["patch", "create"]
    assert rbac_verb("PATCH", base + "/x", {}, 200) == ["patch"]
    assert rbac_verb("PUT", base + "/x", {}, 200) == ["update"]
    assert rbac_verb("DELETE", base, {}, 200) == ["deletecollection"]
    assert _resource(base + "/x") == ("argoproj.io/applications", "argocd")
    assert _resource("/api/v1/namespaces/a/secrets") == ("/secrets", "a")
    assert _resource(ACCESS_REVIEWS) == ("authorization.k8s.io/selfsubjectaccessreviews", "")
