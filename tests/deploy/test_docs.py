"""The operator's guide stays in step with the code: its settings table is bot.config.SPECS."""

from __future__ import annotations

import re

from bot.config import SPECS
from tests.deploy.tools import GUIDE, TABLE_END, TABLE_START, default_cell, values_keys

HEADER = "| setting | environment variable | chart value | default | meaning |"


def table_rows() -> list[list[str]]:
    text = GUIDE.read_text()
    assert TABLE_START in text and TABLE_END in text, "the settings table's markers are gone"
    block = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip().splitlines()
    assert block[0] == HEADER
    # Split on pipes that are not escaped (a meaning may contain `\|`).
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in block[2:]]


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_settings_table_lists_exactly_the_settings() -> None:
    rows = table_rows()
    assert [_ticked(row[0]) for row in rows] == [[spec.name] for spec in SPECS], (
        "out of step with bot.config.SPECS: run `python -m tests.deploy.tools settings`"
    )
    for row, spec in zip(rows, SPECS, strict=True):
        name, env, key, default, meaning = row
        assert _ticked(env) == [spec.env, *([spec.file_env] if spec.file_env else [])], name
        assert _ticked(key) == list(values_keys(spec.name)), name
        assert default == default_cell(spec), name
        assert meaning, f"{name}: say what it means"


def test_guide_covers_what_operators_ask() -> None:
    text = GUIDE.read_text()
    for needle in (
        "helm install",
        "helm upgrade",
        "helm uninstall",
        "app-manifests/CODE/conversions",
        "Redeliver",
        "rate limit",
        "resources-finalizer.argocd.argoproj.io",
        '{"metadata":{"finalizers":null}}',
        "/metrics",
        "kubectl -n preview-bot logs",
        # The chart's fences and modes, which other sections link to.
        "### What the chart fences",
        "application.namespaces",
        "argocd-cmd-params-cm",
        "sourceNamespaces",
        "leaderElection.enabled",
        "holderIdentity",
        "terminationGracePeriodSeconds",
        "settings.repositories is required",
    ):
        assert needle in text, needle
