"""The Helm chart: lint, render, validate, dry-run apply, and wiring that the bot can read."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from bot.config import (
    CONFIG_ENV,
    SPECS,
    SPECS_BY_NAME,
    Kind,
    Settings,
    Spec,
    load_settings,
    parse_value,
)
from tests.deploy.chart import (
    BIN,
    CHART,
    INLINE_VALUES,
    PEM,
    PRODUCTION_VALUES,
    REQUIRED,
    VALUE_SETS,
    bot_settings,
    container_view,
    documents,
    helm,
    kinds,
    one,
    pod_spec,
    render,
)
from tests.deploy.conftest import ensure_namespace, for_the_test_server, kubectl
from tests.deploy.dockerfile import parse
from tests.deploy.tools import ROOT, VALUES_KEYS, settings_schema, value_schema
from tests.rig.kube import KubeRig

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_strict(name: str) -> None:
    done = helm("lint", "--strict", str(CHART), *REQUIRED, *VALUE_SETS[name])
    assert "0 chart(s) failed" in done.stdout
    assert "[ERROR]" not in done.stdout and "[WARNING]" not in done.stdout, done.stdout


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_output_passes_kubernetes_validate_strict(
    name: str, rendered: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(rendered[name])
    count = len(documents(rendered[name]))
    # The oldest and the newest Kubernetes that kubernetes-validate has schemas for.
    for version in ("1.25", "1.37"):
        done = subprocess.run(
            [str(BIN / "kubernetes-validate"), "--strict", "-k", version, str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        out = done.stdout + done.stderr
        assert done.returncode == 0, out
        # Only CRD kinds are left unchecked (kubernetes-validate has no schema for them).
        warned = re.findall(r"WARN .*?kind (\w+)", out)
        assert set(warned) <= {"ServiceMonitor", "AppProject"}, out
        assert out.count(" passed for resource ") == count - len(warned), out


def test_value_sets_render_what_they_enable(rendered: dict[str, str]) -> None:
    assert kinds(documents(rendered["default"])) == [
        "AppProject",
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "Role",
        "RoleBinding",
        "Secret",
        "Service",
        "ServiceAccount",
    ]
    production = documents(rendered["production"])
    # existingSecret: the chart makes none; every optional template is on.
    assert "Secret" not in kinds(production)
    assert {"Ingress", "ServiceMonitor"} <= set(kinds(production))
    # Leader election on: a second Role and RoleBinding, for the Lease.
    assert kinds(production).count("Role") == kinds(production).count("RoleBinding") == 2
    assert "PodDisruptionBudget" in kinds(documents(rendered["inline"]))


def _served(kube: KubeRig, docs: list[dict[str, Any]]) -> tuple[str, set[str]]:
    """The documents whose apiVersion this API server serves (as YAML), and the other kinds."""
    versions = set(kubectl(kube, "api-versions").stdout.split())
    keep = [doc for doc in docs if doc["apiVersion"] in versions]
    skipped = {doc["kind"] for doc in docs if doc["apiVersion"] not in versions}
    return for_the_test_server(keep), skipped


def _dry_run(kube: KubeRig, text: str) -> list[str]:
    done = kubectl(
        kube,
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=helm",
        "-f",
        "-",
        stdin=text,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_default_output_applies_with_server_side_dry_run(
    kube: KubeRig, rendered: dict[str, str]
) -> None:
    ensure_namespace(kube, "preview-bot")
    docs = documents(rendered["default"])
    lines = _dry_run(kube, for_the_test_server(docs))
    assert len(lines) == len(docs)
    assert all(line.endswith("serverside-applied (server dry run)") for line in lines), lines
    assert "appproject.argoproj.io/previews serverside-applied (server dry run)" in lines
    policy = "networkpolicy.networking.k8s.io/preview-bot serverside-applied (server dry run)"
    assert policy in lines


def test_production_output_applies_with_server_side_dry_run(
    kube: KubeRig, rendered: dict[str, str]
) -> None:
    # The 1.20 test server has no Prometheus Operator CRD and serves PDBs as policy/v1beta1
    # only; helm renders policy/v1 without a cluster. Everything else must apply.
    ensure_namespace(kube, "preview-bot")
    text, skipped = _served(kube, documents(rendered["production"]))
    assert skipped <= {"ServiceMonitor", "PodDisruptionBudget"}
    lines = _dry_run(kube, text)
    assert any(line.startswith("ingress.networking.k8s.io/") for line in lines)


def test_notes_tell_the_webhook_url(kube: KubeRig) -> None:
    # NOTES.txt is only rendered by install; a client dry-run still asks the server for its
    # version and kinds, and this one has no ServiceMonitor CRD.
    def notes(*values: str) -> str:
        return helm(
            "install",
            "notes",
            str(CHART),
            "--dry-run=client",
            "--namespace",
            "preview-bot",
            "--kubeconfig",
            str(kube.kubeconfig_path),
            *REQUIRED,
            *values,
            "--set",
            "serviceMonitor.enabled=false",
        ).stdout

    with_ingress = notes("-f", str(PRODUCTION_VALUES))
    assert "https://preview-bot.example.com/webhook" in with_ingress
    assert "read from Secret preview-bot-github" in with_ingress
    without = notes()
    assert "No Ingress was created" in without
    assert "WARNING: github.appId, github.privateKey and github.webhookSecret" in without
    assert "https://bot.example.org/webhook" in notes(*INLINE_VALUES)
    fence = "AppProject previews (namespace argocd) admits only\n  https://github.com/data-literate/DEX\n"
    assert fence in without
    assert "WARNING: project.create=false" in notes("--set", "project.create=false")


def test_pod_is_locked_down(default_docs: list[dict[str, Any]]) -> None:
    pod = pod_spec(default_docs)
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # The only writable path is an emptyDir at /tmp.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert all(m.get("readOnly") for path, m in mounts.items() if path != "/tmp")
    # Secrets reach the bot as files only.
    env = {e["name"]: e for e in container["env"]}
    assert "GITHUB_PRIVATE_KEY" not in env and "GITHUB_WEBHOOK_SECRET" not in env
    assert env["GITHUB_PRIVATE_KEY_FILE"]["value"].startswith(
        mounts["/var/run/secrets/preview-bot"]["mountPath"]
    )


def test_pod_matches_the_image(default_docs: list[dict[str, Any]]) -> None:
    """The chart's user and port are the Dockerfile's: runAsNonRoot can only check a number."""
    _, stages = parse((ROOT / "Dockerfile").read_text())
    final = {ins.keyword: ins.args for ins in stages[-1].instructions}
    uid, _, gid = final["USER"].partition(":")
    pod = pod_spec(default_docs)
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
        int(uid),
        int(gid),
    )
    (container,) = pod["containers"]
    assert [p["containerPort"] for p in container["ports"]] == [int(final["EXPOSE"])]
    assert container["args"][0] == json.loads(final["CMD"])[0]
    probes = {
        container["livenessProbe"]["httpGet"]["path"],
        container["readinessProbe"]["httpGet"]["path"],
    }
    assert probes == {"/healthz", "/readyz"}
    service = one(default_docs, "Service")["spec"]["ports"]
    assert [(p["port"], p["targetPort"]) for p in service] == [(80, "http")]


def test_pod_anti_affinity_presets() -> None:
    def affinity(*values: str) -> Any:
        return pod_spec(documents(render(values))).get("affinity")

    assert affinity() is None
    soft = affinity("--set", "podAntiAffinity=soft")["podAntiAffinity"]
    assert list(soft) == ["preferredDuringSchedulingIgnoredDuringExecution"]
    hard = affinity("--set", "podAntiAffinity=hard")["podAntiAffinity"]
    assert list(hard) == ["requiredDuringSchedulingIgnoredDuringExecution"]
    assert (
        helm(
            "template", "x", str(CHART), *REQUIRED, "--set", "podAntiAffinity=always", check=False
        ).returncode
        != 0
    )


Rule = tuple[str, str, tuple[str, ...], str]


def _rules(role: dict[str, Any]) -> list[Rule]:
    return [
        (
            r["apiGroups"][0],
            r["resources"][0],
            tuple(r.get("resourceNames", ())),
            ",".join(r["verbs"]),
        )
        for r in role["rules"]
    ]


def _roles(docs: list[dict[str, Any]]) -> dict[tuple[str, str], list[Rule]]:
    return {
        (d["metadata"]["namespace"], d["metadata"]["name"]): _rules(d)
        for d in docs
        if d["kind"] == "Role"
    }


def test_role_grants_only_applications_and_leases_when_asked(
    default_docs: list[dict[str, Any]],
) -> None:
    apps = [("argoproj.io", "applications", (), "get,list,watch,create,patch,delete")]
    assert _roles(default_docs) == {("argocd", "preview-bot"): apps}
    leader = documents(
        render(("--set", "leaderElection.enabled=true", "--set", "argocd.namespace=gitops"))
    )
    # Leader election adds one Role, for the Lease in its namespace (the release's), and
    # changes nothing else.
    assert _roles(leader) == {
        ("gitops", "preview-bot"): apps,
        ("preview-bot", "preview-bot-leader-election"): [
            ("coordination.k8s.io", "leases", (), "create"),
            ("coordination.k8s.io", "leases", ("preview-bot",), "get,update"),
        ],
    }
    elsewhere = documents(
        render(
            (
                "--set",
                "leaderElection.enabled=true",
                "--set",
                "leaderElection.namespace=locks",
                "--set",
                "leaderElection.leaseName=bot-lock",
            )
        )
    )
    assert _roles(elsewhere)[("locks", "preview-bot-leader-election")][1][2] == ("bot-lock",)
    bindings = {d["metadata"]["namespace"]: d for d in leader if d["kind"] == "RoleBinding"}
    assert set(bindings) == {"gitops", "preview-bot"}
    for binding in bindings.values():
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "preview-bot", "namespace": "preview-bot"}
        ]
        assert binding["roleRef"]["name"] == binding["metadata"]["name"]


def _env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = pod_spec(docs)["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_leader_election_values_do_what_they_say(tmp_path: Path) -> None:
    off = _env(documents(render()))
    assert off["PREVIEW_BOT_LEADER_ELECTION"] == "false"
    assert not {k for k in off if k.startswith("PREVIEW_BOT_LEASE_")}
    # The downward API, always: the pod's name is its identity in the election.
    assert off["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert off["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    on = documents(
        render(
            (
                "--set",
                "leaderElection.enabled=true",
                "--set",
                "leaderElection.leaseSeconds=30",
                "--set",
                "replicaCount=3",
            )
        )
    )
    settings = bot_settings(on, tmp_path)
    assert settings.leader_election is True
    assert (settings.lease_name, settings.lease_namespace, settings.lease_seconds) == (
        "preview-bot",
        "preview-bot",
        30.0,
    )
    (lease_role,) = [
        d for d in on if d["kind"] == "Role" and d["metadata"]["name"].endswith("-leader-election")
    ]
    assert lease_role["metadata"]["namespace"] == settings.lease_namespace
    assert settings.lease_name in lease_role["rules"][1]["resourceNames"]
    # The settings file cannot turn it on behind the Role's back: it is not a settings key.
    done = helm(
        "template",
        "x",
        str(CHART),
        *REQUIRED,
        "--set",
        "settings.leader_election=true",
        check=False,
    )
    assert done.returncode != 0 and "leader_election" in done.stderr


def test_several_replicas_need_leader_election_and_roll_all_at_once() -> None:
    done = helm("template", "x", str(CHART), *REQUIRED, "--set", "replicaCount=2", check=False)
    assert done.returncode != 0 and "needs leaderElection.enabled=true" in done.stderr
    pair = ("--set", "leaderElection.enabled=true", "--set", "podDisruptionBudget.enabled=true")
    done = helm("template", "x", str(CHART), *REQUIRED, *pair, check=False)
    assert done.returncode != 0 and "never let its node drain" in done.stderr
    # Followers are never ready: a rollout waiting for ready new pods would never end.
    leader = one(
        documents(render(("--set", "leaderElection.enabled=true", "--set", "replicaCount=2"))),
        "Deployment",
    )
    assert leader["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "100%"},
    }
    assert "strategy" not in one(documents(render()), "Deployment")["spec"]


def test_ingress_exposes_only_the_webhook(rendered: dict[str, str]) -> None:
    ingress = one(documents(rendered["production"]), "Ingress")["spec"]
    (rule,) = ingress["rules"]
    assert rule["http"]["paths"][0]["path"] == "/webhook"
    assert rule["http"]["paths"][0]["pathType"] == "Exact"
    assert ingress["tls"] == [
        {"hosts": ["preview-bot.example.com"], "secretName": "preview-bot-tls"}
    ]


def test_inline_values_reach_the_bot_through_secret_and_config_file(
    rendered: dict[str, str], tmp_path: Path
) -> None:
    docs = documents(rendered["inline"])
    secret = one(docs, "Secret")["stringData"]
    env, _ = container_view(docs, secret, tmp_path)
    settings = load_settings(environ=env)
    assert settings.github_app_id == 1234567
    assert settings.github_private_key == PEM
    assert settings.github_webhook_secret == "s3cret"
    assert (settings.trigger_label, settings.queue_size) == ("deploy-me", 50)
    assert settings.argocd_namespace == "gitops" == one(docs, "Role")["metadata"]["namespace"]


def test_production_values_reach_the_bot(rendered: dict[str, str], tmp_path: Path) -> None:
    docs = documents(rendered["production"])
    existing = {"GITHUB_APP_ID": "42", "GITHUB_PRIVATE_KEY": PEM, "GITHUB_WEBHOOK_SECRET": "x"}
    env, _ = container_view(docs, existing, tmp_path)
    settings = load_settings(environ=env)
    written = yaml.safe_load(PRODUCTION_VALUES.read_text())["settings"]
    # As the bot reads each value (a YAML list becomes a tuple).
    expected = {k: parse_value(SPECS_BY_NAME[k], v) for k, v in written.items()}
    assert {k: getattr(settings, k) for k in expected} == expected
    assert settings.github_app_id == 42


def test_app_id_written_as_a_yaml_number_stays_an_integer(tmp_path: Path) -> None:
    # Helm decodes numbers in values files as float64: 1234567 would print as 1.234567e+06.
    values = tmp_path / "values.yaml"
    values.write_text("github:\n  appId: 1234567\n")
    secret = one(documents(render(("-f", str(values)))), "Secret")
    assert secret["stringData"]["GITHUB_APP_ID"] == "1234567"


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("settings.github_private_key=x", "github_private_key"),
        ("settings.argocd_namespace=x", "argocd_namespace"),
        ("settings.no_such_setting=1", "no_such_setting"),
        ("settings.workers=0", "workers"),
        ("github.appId=abc", "appId"),
    ],
)
def test_schema_rejects_misplaced_or_bad_values(flag: str, message: str) -> None:
    done = helm("template", "x", str(CHART), *REQUIRED, "--set", flag, check=False)
    assert done.returncode != 0
    assert message in done.stderr


def test_a_count_setting_takes_zero_and_more() -> None:
    """max_previews (Kind.COUNT): 0 means no cap, so the schema must take it, as the bot does."""
    for good in ("0", "3"):
        settings = one(documents(render(("--set", f"settings.max_previews={good}"))), "ConfigMap")
        assert yaml.safe_load(settings["data"]["config.yaml"])["max_previews"] == int(good)
    done = helm(
        "template", "x", str(CHART), *REQUIRED, "--set", "settings.max_previews=-1", check=False
    )
    assert done.returncode != 0 and "max_previews" in done.stderr


# The JSON type a setting's value has in values.yaml, by kind; any other kind is a string.
JSON_TYPES = {
    Kind.INT: "integer",
    Kind.COUNT: "integer",
    Kind.FLOAT: "number",
    Kind.BOOL: "boolean",
    Kind.LIST: "array",
}


def test_schema_settings_are_the_bots_settings() -> None:
    """Every setting the chart does not manage itself is a documented, typed `settings` key."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    properties = schema["properties"]["settings"]["properties"]
    assert set(properties) == {s.name for s in SPECS} - set(VALUES_KEYS)
    assert properties == settings_schema(), (
        "out of step with bot.config.SPECS: run `python -m tests.deploy.tools settings`"
    )
    for spec in SPECS:
        if spec.name in properties:
            types = properties[spec.name]["type"]
            types = types if isinstance(types, list) else [types]
            assert JSON_TYPES.get(spec.kind, "string") in types
            assert ("null" in types) == spec.optional, spec.name
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in (key for keys in VALUES_KEYS.values() for key in keys):
        group, field = key.split(".")
        assert field in values[group], key


CHOICES = ("merge", "squash")


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        *((Kind.BOOL, v) for v in (True, False, "yes", "off", "maybe", None)),
        *((Kind.DURATION, v) for v in ("90s", "1.5h", "45", 45, 0, 2.5, "5w", -1, "", True, None)),
        *((Kind.LIST, v) for v in (["a", "b"], "a, b", [], [1], {"a": "b"}, None)),
        *((Kind.CHOICE, v) for v in ("merge", "rebase", "", 1, None)),
    ],
)
@pytest.mark.parametrize("optional", [False, True])
def test_schema_of_a_kind_takes_what_the_bot_takes(kind: Kind, value: Any, optional: bool) -> None:
    """Kinds no setting has yet: the schema the chart would get agrees with the bot's parser."""
    choices = CHOICES if kind is Kind.CHOICE else ()
    spec = Spec("thing", "THING", None if optional else "x", "A thing.", kind, choices=choices)
    schema_takes = jsonschema.Draft7Validator(value_schema(spec)).is_valid(value)
    if value is None:
        # YAML's null leaves the default: the schema allows it where the default is unset.
        assert schema_takes == optional
        return
    try:
        parse_value(spec, value)
        bot_takes = True
    except ValueError:
        bot_takes = False
    if optional and value == "":
        # The bot reads an empty value as unset (an environment variable cannot be null);
        # in values.yaml, null says that.
        assert bot_takes
        return
    # values.yaml is YAML: the schema asks for a real boolean where the bot also reads the
    # words an environment variable has to use.
    words_for_a_bool = kind is Kind.BOOL and isinstance(value, str)
    assert schema_takes == (bot_takes and not words_for_a_bool)


_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z][A-Za-z0-9]*):(?P<rest>.*)$")


def test_every_value_is_documented() -> None:
    """Each value has a `# --` comment, or sits inside one that has (a preset block)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented: list[str] = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    for number, line in enumerate(lines):
        match = _KEY.match(line)
        if not match or line.lstrip().startswith("#"):
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        # A doc comment may run over several lines; its first line starts with `# --`.
        first = number - 1
        while first >= 0 and not lines[first].strip():
            first -= 1
        while first > 0 and lines[first - 1].strip().startswith("#"):
            first -= 1
        documented = first >= 0 and lines[first].strip().startswith("# --")
        inherited = any(doc for _, _, doc in stack)
        following = next(
            (
                line
                for line in lines[number + 1 :]
                if line.strip() and not line.strip().startswith("#")
            ),
            "",
        )
        # A group (`image:` over documented keys) needs no comment of its own.
        is_group = match["rest"].strip() == "" and (
            len(following) - len(following.lstrip()) > indent
        )
        if not (documented or inherited or is_group):
            undocumented.append(".".join([*(k for _, k, _ in stack), match["key"]]))
        stack.append((indent, match["key"], documented))
    assert undocumented == []


def test_extra_env_cannot_override_what_the_chart_manages() -> None:
    # The chart's list, read from the template that defines it.
    names = yaml.safe_load(
        (CHART / "templates" / "_helpers.tpl")
        .read_text()
        .split('define "preview-bot.managedEnv" -}}', 1)[1]
        .split("{{- end }}", 1)[0]
    )
    # The bot's settings, its config file, and the downward API's pod name and namespace.
    known = {spec.env for spec in SPECS} | {CONFIG_ENV, "POD_NAME", "POD_NAMESPACE"}
    assert set(names) <= known and "PREVIEW_BOT_NAMESPACE_TEMPLATE" in names
    for name in names:
        flags = ("--set", f"extraEnv[0].name={name}", "--set", "extraEnv[0].value=x")
        done = helm("template", "x", str(CHART), *REQUIRED, *flags, check=False)
        assert done.returncode != 0 and f"extraEnv sets {name}" in done.stderr
    proxy = render(("--set", "extraEnv[0].name=HTTPS_PROXY", "--set", "extraEnv[0].value=x"))
    (container,) = pod_spec(documents(proxy))["containers"]
    assert {"name": "HTTPS_PROXY", "value": "x"} in container["env"]


def test_labels_stay_text_whatever_the_release_is_called() -> None:
    # YAML 1.1 reads an unquoted no, on or y as a boolean: Kubernetes then refuses the object.
    docs = documents(render(release="no"))
    labels = [value for doc in docs for value in doc["metadata"].get("labels", {}).values()]
    assert labels and all(isinstance(value, str) for value in labels)
    selector = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert selector["app.kubernetes.io/instance"] == "no"


def _shutdown(docs: list[dict[str, Any]]) -> tuple[int, list[str] | None, str]:
    """(terminationGracePeriodSeconds, the preStop command or None, the bot's grace)."""
    pod = pod_spec(docs)
    (container,) = pod["containers"]
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    grace = {e["name"]: e.get("value") for e in container["env"]}
    return (
        pod["terminationGracePeriodSeconds"],
        pre_stop,
        grace["PREVIEW_BOT_SHUTDOWN_GRACE_SECONDS"],
    )


def test_shutdown_fits_inside_the_termination_grace_period(tmp_path: Path) -> None:
    docs = documents(render())
    # 5 s preStop sleep, then the bot's 20 s for running syncs, then a 5 s margin.
    assert _shutdown(docs) == (30, ["sleep", "5"], "20")
    defaults = Settings(github_app_id=1, github_private_key="", github_webhook_secret="")
    assert bot_settings(docs, tmp_path).shutdown_grace_seconds == defaults.shutdown_grace_seconds
    quick = documents(
        render(("--set-json", "shutdown.graceSeconds=2.5", "--set", "shutdown.preStopSeconds=0"))
    )
    assert _shutdown(quick) == (8, None, "2.5")  # 0 + 3 (2.5 rounded up) + 5
    assert _shutdown(documents(render(("--set", "terminationGracePeriodSeconds=60"))))[0] == 60
    short = ("--set", "terminationGracePeriodSeconds=29")
    done = helm("template", "x", str(CHART), *REQUIRED, *short, check=False)
    assert done.returncode != 0 and "kill the bot mid-shutdown" in done.stderr


def test_pre_stop_runs_a_program_the_image_has() -> None:
    # `sleep` comes with coreutils, which Debian-based python:*-slim images have (a distroless
    # base would not): the runtime stage must stay on one.
    text = (ROOT / "Dockerfile").read_text()
    default = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.MULTILINE)
    assert default is not None and re.fullmatch(
        r"python:3\.\d+-slim(@sha256:[0-9a-f]{64})?", default[1]
    )
    _, stages = parse(text)
    assert stages[-1].base == "${PYTHON_IMAGE}"
