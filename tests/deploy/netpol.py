"""NetworkPolicy semantics, enough to ask whether one policy lets a connection through.

As the Kubernetes API reference defines them (networking.k8s.io/v1): a rule admits a
connection when one of its peers matches the other end and one of its ports matches the port
(no `from`/`to`, or no `ports`, matches everything). A peer with only podSelector means pods of
the policy's own namespace; with namespaceSelector, pods of the selected namespaces (all pods,
or those podSelector picks); an ipBlock matches addresses in `cidr` outside `except`. Named
ports are the selected pod's container ports. One policy alone: no other policy adds to it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

NAMESPACE_NAME = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Endpoint:
    """The other end of a connection: a pod (with its namespace's labels) or an address."""

    ip: str
    pod_labels: Mapping[str, str] | None = None  # None: not a pod of this cluster
    namespace_labels: Mapping[str, str] = field(default_factory=dict)


def pod(ip: str, namespace: str, **labels: str) -> Endpoint:
    return Endpoint(ip, labels, {NAMESPACE_NAME: namespace})


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _peer_matches(peer: Mapping[str, Any], policy_namespace: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        address = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(cidr) for cidr in block.get("except") or []
        )
    if other.pod_labels is None:
        return False
    if "namespaceSelector" in peer:
        in_namespace = selects(peer["namespaceSelector"], other.namespace_labels)
    else:
        in_namespace = other.namespace_labels.get(NAMESPACE_NAME) == policy_namespace
    return in_namespace and selects(peer.get("podSelector") or {}, other.pod_labels)


def _port_matches(
    ports: list[Mapping[str, Any]] | None, port: int, protocol: str, named: Mapping[str, int]
) -> bool:
    if not ports:
        return True
    for rule in ports:
        wanted = rule.get("port")
        if isinstance(wanted, str):
            wanted = named.get(wanted)
        if rule.get("protocol", "TCP") == protocol and wanted in (None, port):
            return True
    return False


@dataclass(frozen=True)
class Connection:
    """One connection to or from the policy's pod: the other end, the port, the protocol."""

    other: Endpoint
    port: int
    protocol: str = "TCP"


def allows(
    policy: Mapping[str, Any],
    direction: Literal["ingress", "egress"],
    conn: Connection,
    named_ports: Mapping[str, int],
) -> bool:
    """Whether `policy` lets `conn` reach (ingress) or leave (egress) the pods it selects."""
    spec = policy["spec"]
    if direction.capitalize() not in spec["policyTypes"]:
        return True
    peers_key = "from" if direction == "ingress" else "to"
    namespace = policy["metadata"]["namespace"]
    return any(
        (
            not rule.get(peers_key)
            or any(_peer_matches(p, namespace, conn.other) for p in rule[peers_key])
        )
        and _port_matches(rule.get("ports"), conn.port, conn.protocol, named_ports)
        for rule in spec.get(direction) or []
    )
