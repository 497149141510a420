"""Tests of the Kubernetes rig itself: API server, Argo CD CRDs, RBAC, the Argo CD stand-in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client import ApiClient, ApiException

from tests.rig.argocd import RESOURCES_FINALIZER, ArgoCDStandIn
from tests.rig.kube import KubeRig, delete_all_applications

pytestmark = pytest.mark.rig

GROUP, VERSION, PLURAL = "argoproj.io", "v1alpha1", "applications"
SHA = "8f6c1b2a9d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a"


def preview_app(pr: int = 42, revision: str = SHA) -> dict[str, Any]:
    """An Application shaped like the ones preview-bot creates for a pull request."""
    name = f"dex-pr-{pr}"
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Application",
        "metadata": {
            "name": name,
            "namespace": "argocd",
            "finalizers": [RESOURCES_FINALIZER],
            "labels": {"preview-bot/pr": str(pr)},
        },
        "spec": {
            "project": "default",
            "source": {
                "repoURL": "https://github.com/dexidp/dex.git",
                "path": f"infra/argocd/previews/pr-{pr}",
                "targetRevision": revision,
            },
            "destination": {"server": "https://kubernetes.default.svc", "namespace": name},
            "syncPolicy": {
                "automated": {"prune": True, "selfHeal": True},
                "syncOptions": ["CreateNamespace=true"],
            },
        },
    }


@pytest.fixture
def apps(kube_client: ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_client)


async def create(apps: client.CustomObjectsApi, body: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = await apps.create_namespaced_custom_object(
        GROUP, VERSION, "argocd", PLURAL, body
    )
    return created


async def get(apps: client.CustomObjectsApi, name: str) -> dict[str, Any]:
    app: dict[str, Any] = await apps.get_namespaced_custom_object(
        GROUP, VERSION, "argocd", PLURAL, name
    )
    return app


async def delete(apps: client.CustomObjectsApi, name: str) -> None:
    await apps.delete_namespaced_custom_object(GROUP, VERSION, "argocd", PLURAL, name)


async def apply(apps: client.CustomObjectsApi, body: dict[str, Any]) -> dict[str, Any] | None:
    """Server-side apply as preview-bot."""
    # The bundled stubs omit _content_type, which the runtime accepts and needs here.
    result: dict[str, Any] | None = await apps.patch_namespaced_custom_object(  # type: ignore[call-arg]
        GROUP,
        VERSION,
        "argocd",
        PLURAL,
        body["metadata"]["name"],
        body,
        field_manager="preview-bot",
        force=True,
        _content_type="application/apply-patch+yaml",
    )
    return result


async def test_api_server_lists_namespaces(kube_client: ApiClient) -> None:
    names = {
        ns.metadata.name for ns in (await client.CoreV1Api(kube_client).list_namespace()).items
    }
    assert {"default", "kube-system", "argocd"} <= names


async def test_kubeconfig_file_works_with_the_standard_loader(kube: KubeRig) -> None:
    assert yaml.safe_load(kube.kubeconfig_path.read_text()) == kube.kubeconfig
    assert kube.kubeconfig["clusters"][0]["cluster"]["server"] == kube.server
    assert kube.server.startswith("https://127.0.0.1:")
    configuration = client.Configuration()
    await config.load_kube_config(
        config_file=str(kube.kubeconfig_path), client_configuration=configuration
    )
    async with ApiClient(configuration) as api:
        version = await client.VersionApi(api).get_code()
    assert (version.major, version.minor) >= ("1", "20")


async def test_argocd_crds_are_established_without_status_subresource(
    kube_client: ApiClient,
) -> None:
    ext = client.ApiextensionsV1Api(kube_client)
    for name in ("applications.argoproj.io", "appprojects.argoproj.io"):
        crd = await ext.read_custom_resource_definition(name)
        established = [c for c in crd.status.conditions if c.type == "Established"]
        assert established[0].status == "True"
    # Argo CD writes .status on the object itself: the bot must expect no /status endpoint.
    app_crd = await ext.read_custom_resource_definition("applications.argoproj.io")
    assert app_crd.spec.versions[0].subresources.status is None


async def test_preview_application_is_accepted(
    apps: client.CustomObjectsApi, argocd_ns: str
) -> None:
    created = await create(apps, preview_app())
    assert created["metadata"]["uid"]
    app = await get(apps, "dex-pr-42")
    assert app["metadata"]["finalizers"] == [RESOURCES_FINALIZER]
    assert app["spec"]["source"]["path"] == "infra/argocd/previews/pr-42"
    assert app["spec"]["syncPolicy"]["syncOptions"] == ["CreateNamespace=true"]
    with pytest.raises(ApiException) as duplicate:
        await create(apps, preview_app())
    assert duplicate.value.status == 409


async def test_invalid_application_is_rejected_by_the_schema(
    apps: client.CustomObjectsApi, argocd_ns: str
) -> None:
    body = preview_app()
    body["spec"]["source"]["repoURL"] = 5
    with pytest.raises(ApiException) as rejected:
        await create(apps, body)
    assert rejected.value.status == 422
    assert "spec.source.repoURL" in str(rejected.value.body)


async def test_server_side_apply_creates_then_updates(
    apps: client.CustomObjectsApi, argocd_ns: str
) -> None:
    # kubernetes-asyncio 36.1.0 returns None when the apply creates: the server answers 201
    # and the client's response map for PATCH only knows 200. Callers must read back (or use
    # _preload_content=False and parse the body themselves).
    assert await apply(apps, preview_app(revision="a" * 40)) is None
    first = await get(apps, "dex-pr-42")
    assert first["spec"]["source"]["targetRevision"] == "a" * 40
    second = await apply(apps, preview_app(revision="b" * 40))
    assert second is not None  # an update answers 200 with the object
    assert second["metadata"]["uid"] == first["metadata"]["uid"]
    assert second["metadata"]["resourceVersion"] != first["metadata"]["resourceVersion"]
    assert (await get(apps, "dex-pr-42"))["spec"]["source"]["targetRevision"] == "b" * 40
    managers = {(m["manager"], m["operation"]) for m in second["metadata"]["managedFields"]}
    assert ("preview-bot", "Apply") in managers


async def test_stand_in_writes_status_that_reads_back(
    apps: client.CustomObjectsApi, kube_client: ApiClient, argocd_ns: str
) -> None:
    await create(apps, preview_app())
    argocd = ArgoCDStandIn(kube_client)

    await argocd.set_status(
        "dex-pr-42",
        sync="OutOfSync",
        health="Progressing",
        revision=SHA,
        operation_phase="Running",
    )
    status = (await get(apps, "dex-pr-42"))["status"]
    assert status["sync"]["status"] == "OutOfSync"
    assert status["sync"]["revision"] == SHA
    assert status["sync"]["comparedTo"]["destination"]["namespace"] == "dex-pr-42"
    assert status["health"]["status"] == "Progressing"
    running = status["operationState"]
    assert running["phase"] == "Running"
    assert running["operation"]["sync"]["revision"] == SHA
    assert running["operation"]["initiatedBy"] == {"automated": True}
    assert "finishedAt" not in running

    await argocd.set_status("dex-pr-42", operation_phase="Succeeded")
    status = (await get(apps, "dex-pr-42"))["status"]
    assert (status["sync"]["status"], status["health"]["status"]) == ("Synced", "Healthy")
    assert status["sync"]["revision"] == SHA  # kept when not given, like Argo CD
    done = status["operationState"]
    assert done["phase"] == "Succeeded"
    assert done["message"] == "successfully synced (all tasks run)"
    assert done["startedAt"] == running["startedAt"]
    assert done["finishedAt"]
    assert done["syncResult"]["revision"] == SHA
    assert [h["revision"] for h in status["history"]] == [SHA]

    await argocd.set_status(
        "dex-pr-42",
        sync="OutOfSync",
        health="Degraded",
        operation_phase="Failed",
        message="one or more objects failed to apply",
    )
    failed = (await get(apps, "dex-pr-42"))["status"]
    assert failed["health"]["status"] == "Degraded"
    assert failed["operationState"]["message"] == "one or more objects failed to apply"
    assert len(failed["history"]) == 1  # only successful syncs are history

    # The bot re-applying its spec (server-side apply, another field manager) keeps the status.
    await apply(apps, preview_app())
    assert (await get(apps, "dex-pr-42"))["status"]["health"]["status"] == "Degraded"


async def test_stand_in_rejects_a_message_without_an_operation(kube_client: ApiClient) -> None:
    with pytest.raises(ValueError, match="operation_phase"):
        await ArgoCDStandIn(kube_client).set_status("dex-pr-42", message="hello")


async def test_finalizer_holds_deletion_until_the_stand_in_finishes_it(
    apps: client.CustomObjectsApi, kube_client: ApiClient, argocd_ns: str
) -> None:
    await create(apps, preview_app())
    argocd = ArgoCDStandIn(kube_client)
    assert await argocd.finish_deletion("dex-pr-42") is False  # not being deleted: untouched
    assert (await get(apps, "dex-pr-42"))["metadata"]["finalizers"] == [RESOURCES_FINALIZER]

    await delete(apps, "dex-pr-42")
    pending = await get(apps, "dex-pr-42")  # no Argo CD yet: the object stays
    assert pending["metadata"]["deletionTimestamp"]

    assert await argocd.finish_deletion("dex-pr-42") is True
    await argocd.wait_gone("dex-pr-42")
    assert await argocd.finish_deletion("dex-pr-42") is False  # gone: nothing to do


@pytest.fixture
async def running_argocd(kube_client: ApiClient, argocd_ns: str) -> AsyncIterator[ArgoCDStandIn]:
    async with ArgoCDStandIn(kube_client, argocd_ns) as argocd:
        yield argocd


async def test_running_stand_in_finishes_deletions_except_stuck_ones(
    apps: client.CustomObjectsApi, running_argocd: ArgoCDStandIn
) -> None:
    await create(apps, preview_app(42))
    await create(apps, preview_app(43))
    running_argocd.stick("dex-pr-43")
    # 43 is deleted first: the watch delivers events in order and the stand-in handles them
    # one by one, so by the time 42 is gone it has already seen (and skipped) 43.
    await delete(apps, "dex-pr-43")
    await delete(apps, "dex-pr-42")
    await running_argocd.wait_gone("dex-pr-42")

    stuck = await get(apps, "dex-pr-43")
    assert stuck["metadata"]["deletionTimestamp"]
    assert stuck["metadata"]["finalizers"] == [RESOURCES_FINALIZER]
    assert running_argocd.finished == ["dex-pr-42"]

    running_argocd.unstick("dex-pr-43")
    await running_argocd.wait_gone("dex-pr-43")
    assert running_argocd.finished == ["dex-pr-42", "dex-pr-43"]


async def test_stand_in_that_cannot_watch_fails_on_entry(kube: KubeRig) -> None:
    forbidden = kube.kubeconfig_for_user("developer")
    async with await config.new_client_from_config_dict(forbidden) as api:
        with pytest.raises(RuntimeError, match="stand-in loop failed") as failed:
            async with ArgoCDStandIn(api):
                pytest.fail("entered a stand-in that cannot list Applications")
    cause = failed.value.__cause__
    assert isinstance(cause, ApiException)
    assert cause.status == 403


async def test_clean_up_removes_stuck_applications(
    apps: client.CustomObjectsApi, kube: KubeRig, argocd_ns: str
) -> None:
    await create(apps, preview_app())
    await delete(apps, "dex-pr-42")
    delete_all_applications(kube, argocd_ns)
    listing = await apps.list_namespaced_custom_object(GROUP, VERSION, "argocd", PLURAL)
    assert listing["items"] == []


@pytest.fixture
async def rbac_grant(kube_client: ApiClient) -> AsyncIterator[None]:
    """Lets the bot's ServiceAccount list Applications in argocd, for the length of a test."""
    rbac = client.RbacAuthorizationV1Api(kube_client)
    role = client.V1Role(
        metadata=client.V1ObjectMeta(name="rig-list-apps"),
        rules=[client.V1PolicyRule(api_groups=[GROUP], resources=[PLURAL], verbs=["list"])],
    )
    binding = client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="rig-list-apps"),
        role_ref=client.V1RoleRef(
            api_group="rbac.authorization.k8s.io", kind="Role", name="rig-list-apps"
        ),
        subjects=[
            client.RbacV1Subject(kind="ServiceAccount", name="preview-bot", namespace="argocd")
        ],
    )
    await rbac.create_namespaced_role("argocd", role)
    await rbac.create_namespaced_role_binding("argocd", binding)
    yield
    await rbac.delete_namespaced_role_binding("rig-list-apps", "argocd")
    await rbac.delete_namespaced_role("rig-list-apps", "argocd")


async def list_apps_status(kubeconfig: dict[str, Any]) -> int:
    async with await config.new_client_from_config_dict(kubeconfig) as api:
        try:
            await client.CustomObjectsApi(api).list_namespaced_custom_object(
                GROUP, VERSION, "argocd", PLURAL
            )
        except ApiException as exc:
            return int(exc.status)
    return 200


async def test_service_account_is_forbidden_until_rbac_allows_it(kube: KubeRig) -> None:
    static = kube.kubeconfig_for_user("system:serviceaccount:argocd:preview-bot")
    # A real bound token from the TokenRequest API; 403 (not 401) shows it authenticated.
    minted = await kube.make_service_account_kubeconfig("argocd", "preview-bot")
    assert minted["users"][0]["user"]["token"].count(".") == 2  # a JWT
    assert await list_apps_status(static) == 403
    assert await list_apps_status(minted) == 403
    assert await list_apps_status(kube.kubeconfig_for_user("developer")) == 403
    with pytest.raises(KeyError, match="not pre-registered"):
        kube.kubeconfig_for_user("nobody")


async def test_service_account_is_allowed_with_a_role_binding(
    kube: KubeRig, rbac_grant: None
) -> None:
    minted = await kube.make_service_account_kubeconfig("argocd", "preview-bot")
    assert await list_apps_status(minted) == 200
    static = kube.kubeconfig_for_user("system:serviceaccount:argocd:preview-bot")
    assert await list_apps_status(static) == 200
    # The binding names only that ServiceAccount: other identities stay forbidden.
    assert await list_apps_status(kube.kubeconfig_for_user("developer")) == 403
