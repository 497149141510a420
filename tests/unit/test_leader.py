"""bot.leader's pure parts: MicroTime, who campaigns, and where the Lease lives."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from bot.config import Settings
from bot.kubeapi import ClusterConfig, KubeApi
from bot.leader import (
    Elector,
    LeaseRef,
    default_identity,
    elector_for,
    lease_namespace,
    micro_time,
    parse_time,
)

SETTINGS = Settings(github_app_id=1, github_private_key="k", github_webhook_secret="s")


def test_micro_time_is_utc_with_microseconds() -> None:
    moment = datetime(2026, 12, 3, 10, 18, 59, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert micro_time(moment) == "2026-12-03T09:18:59.123456Z"
    assert micro_time(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000000Z"


def test_parse_time_reads_what_writers_write() -> None:
    expected = datetime(2026, 12, 3, 9, 18, 59, 123456, tzinfo=UTC)
    assert parse_time("2026-12-03T09:18:59.123456Z") == expected
    assert parse_time("2026-12-03T09:18:59Z") == expected.replace(microsecond=0)  # metav1.Time
    # kubernetes_asyncio's elector writes str() of a naive UTC datetime.
    assert parse_time("2026-12-03 09:18:59.123456") == expected
    assert parse_time(None) is None
    assert parse_time("") is None
    assert parse_time("yesterday") is None


def test_identity_is_the_pod_name_else_host_and_process() -> None:
    assert default_identity({"POD_NAME": "preview-bot-7d9c-x2"}) == "preview-bot-7d9c-x2"
    assert default_identity({}) == f"{socket.gethostname()}_{os.getpid()}"


def test_lease_namespace_setting_then_pod_then_argocd(tmp_path: Path) -> None:
    (tmp_path / "namespace").write_text("from-account\n")
    chosen = Settings(
        github_app_id=1, github_private_key="k", github_webhook_secret="s", lease_namespace="x"
    )
    assert lease_namespace(chosen, {"POD_NAMESPACE": "pod"}, tmp_path) == "x"
    assert lease_namespace(SETTINGS, {"POD_NAMESPACE": "pod"}, tmp_path) == "pod"
    assert lease_namespace(SETTINGS, {}, tmp_path) == "from-account"
    assert lease_namespace(SETTINGS, {}, tmp_path / "no-such-dir") == SETTINGS.argocd_namespace


def test_elector_from_settings() -> None:
    api = KubeApi(ClusterConfig("https://k8s.example", ssl_context=False))
    settings = Settings(
        github_app_id=1,
        github_private_key="k",
        github_webhook_secret="s",
        lease_name="bots",
        lease_namespace="ops",
        lease_seconds=9.0,
    )
    elector = elector_for(api, settings)
    assert elector.lease == LeaseRef("ops", "bots")
    assert (elector.lease_seconds, elector.retry_seconds) == (9.0, 1.5)
    assert elector.identity == default_identity()
    assert not elector.is_leader
    assert elector.holder is None
    with pytest.raises(ValueError, match="positive"):
        Elector(api, LeaseRef("ops", "bots"), "me", lease_seconds=0)
