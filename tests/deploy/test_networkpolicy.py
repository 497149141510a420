"""The chart's NetworkPolicy: who may reach the bot, and where the bot may go.

Connections are judged by NetworkPolicy's own rules (tests/deploy/netpol.py) against the
policy the chart renders; kubernetes-validate and the server-side dry-run in test_chart.py
check that the API accepts it.
"""

from __future__ import annotations

from typing import Any, Literal

from tests.deploy.chart import documents, kinds, one, pod_spec, render
from tests.deploy.netpol import Connection, Endpoint, allows, pod, selects

RELEASE_NS = "preview-bot"
NGINX = pod("10.244.1.10", "ingress-nginx", **{"app.kubernetes.io/name": "ingress-nginx"})
PROMETHEUS = pod("10.244.2.20", "monitoring", **{"app.kubernetes.io/name": "prometheus"})
KUBE_DNS = pod("10.244.0.5", "kube-system", **{"k8s-app": "kube-dns"})
PREVIEW = pod("10.244.3.30", "dex-pr-42", app="dex-web")
GITHUB = Endpoint("140.82.112.3")
API_SERVER = Endpoint("172.18.0.2")


def _policy_and_ports(*values: str) -> tuple[dict[str, Any], dict[str, int]]:
    docs = documents(render(values, namespace=RELEASE_NS))
    (container,) = pod_spec(docs)["containers"]
    return one(docs, "NetworkPolicy"), {p["name"]: p["containerPort"] for p in container["ports"]}


def _judge(
    policy: dict[str, Any], ports: dict[str, int], direction: Literal["ingress", "egress"]
) -> Any:
    def ok(other: Endpoint, port: int, protocol: str = "TCP") -> bool:
        return allows(policy, direction, Connection(other, port, protocol), ports)

    return ok


def test_policy_selects_the_bots_pods_only() -> None:
    docs = documents(render(namespace=RELEASE_NS))
    policy = one(docs, "NetworkPolicy")
    template = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selects(policy["spec"]["podSelector"], template)
    assert (
        policy["spec"]["podSelector"]["matchLabels"]
        == (one(docs, "Deployment")["spec"]["selector"]["matchLabels"])
    )
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]


def test_only_the_ingress_controller_and_the_scraper_reach_the_bot() -> None:
    policy, ports = _policy_and_ports()
    reach = _judge(policy, ports, "ingress")
    assert reach(NGINX, ports["http"])
    assert reach(PROMETHEUS, ports["http"])
    # Preview pods run pull requests' code: they never reach the bot.
    assert not reach(PREVIEW, ports["http"])
    assert not reach(pod("10.244.3.31", "dex-pr-42", **NGINX.pod_labels or {}), ports["http"])
    assert not reach(pod("10.244.2.21", "monitoring", app="grafana"), ports["http"])
    assert not reach(pod("10.244.4.40", RELEASE_NS, app="other"), ports["http"])
    assert not reach(NGINX, 9000)
    assert not reach(GITHUB, ports["http"])


def test_the_bot_reaches_only_dns_https_and_the_api_server() -> None:
    policy, ports = _policy_and_ports()
    go = _judge(policy, ports, "egress")
    assert go(KUBE_DNS, 53, "UDP") and go(KUBE_DNS, 53, "TCP")
    assert go(GITHUB, 443)
    assert go(API_SERVER, 6443) and go(API_SERVER, 443)
    assert not go(Endpoint("1.1.1.1"), 53, "UDP")  # DNS only through the cluster's
    assert not go(GITHUB, 22)
    assert not go(GITHUB, 80)
    assert not go(PREVIEW, 8080)


def test_narrowed_addresses_keep_the_bot_off_previews_on_443_too() -> None:
    # The defaults admit any address on 443 (GitHub's ranges change, the API server's address
    # is the cluster's; see values.yaml), pods included; an operator who knows the pod CIDR
    # and the API server's address closes that too.
    policy, ports = _policy_and_ports()
    assert _judge(policy, ports, "egress")(PREVIEW, 443)
    narrowed, _ = _policy_and_ports(
        "--set-json",
        'networkPolicy.github=[{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.244.0.0/16"]}}]',
        "--set-json",
        'networkPolicy.apiServer.to=[{"ipBlock": {"cidr": "172.18.0.2/32"}}]',
    )
    go = _judge(narrowed, ports, "egress")
    assert not go(PREVIEW, 443)
    assert go(GITHUB, 443) and go(API_SERVER, 6443)
    assert not go(GITHUB, 6443)


def test_an_empty_peer_list_drops_its_rule_rather_than_opening_it() -> None:
    policy, ports = _policy_and_ports(
        "--set", "networkPolicy.metricsScraper=null", "--set", "networkPolicy.dns=null"
    )
    assert not _judge(policy, ports, "ingress")(PROMETHEUS, ports["http"])
    assert _judge(policy, ports, "ingress")(NGINX, ports["http"])
    assert not _judge(policy, ports, "egress")(KUBE_DNS, 53, "UDP")
    closed, _ = _policy_and_ports(
        "--set",
        "networkPolicy.ingressController=null",
        "--set",
        "networkPolicy.metricsScraper=null",
    )
    assert closed["spec"]["ingress"] == []
    assert not _judge(closed, ports, "ingress")(NGINX, ports["http"])


def test_extra_rules_and_disabling() -> None:
    policy, ports = _policy_and_ports(
        "--set-json",
        'networkPolicy.extraEgress=[{"to": [{"ipBlock": {"cidr": "10.0.0.9/32"}}], '
        '"ports": [{"port": 3128}]}]',
    )
    assert _judge(policy, ports, "egress")(Endpoint("10.0.0.9"), 3128)
    assert "NetworkPolicy" not in kinds(documents(render(("--set", "networkPolicy.enabled=false"))))
