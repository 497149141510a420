"""The intake's plain-number metrics export what prometheus_client's own would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from bot.metrics import INTAKE_BUCKETS, IntakeCounts, Metrics


def test_intake_counts_export_what_prometheus_clients_counter_and_histogram_would() -> None:
    ours = CollectorRegistry()
    counts = IntakeCounts()
    ours.register(counts)
    theirs = CollectorRegistry()
    deliveries = Counter("preview_bot_deliveries", "d", ["event", "outcome"], registry=theirs)
    seconds = Histogram("preview_bot_intake_seconds", "s", buckets=INTAKE_BUCKETS, registry=theirs)
    # Every bound exactly (Prometheus' `le` is inclusive), just above it, zero, and past them all.
    observed = [0.0, *INTAKE_BUCKETS, *(b * 1.01 for b in INTAKE_BUCKETS), 3600.0]
    for value in observed:
        counts.observe(value)
        seconds.observe(value)
    for event, outcome in [("pull_request", "queued")] * 3 + [("unverified", "rejected")]:
        counts.delivered(event, outcome)
        deliveries.labels(event=event, outcome=outcome).inc()

    def samples(
        registry: CollectorRegistry,
    ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in registry.collect()
            for s in metric.samples
            if not s.name.endswith("_created")  # a creation time: differs by construction
        }

    assert samples(ours) == samples(theirs)
    assert samples(ours)[("preview_bot_intake_seconds_count", ())] == len(observed)
    # The text exposition a scrape gets, too (HELP texts aside).
    lines = [
        line
        for line in generate_latest(ours).decode().splitlines()
        if not line.startswith("# HELP")
    ]
    theirs_lines = [
        line
        for line in generate_latest(theirs).decode().splitlines()
        if not line.startswith("# HELP") and "_created" not in line
    ]
    assert sorted(lines) == sorted(theirs_lines)


def test_a_second_metric_of_the_same_name_is_refused_as_for_prometheus_clients_own() -> None:
    registry = Metrics().registry
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("preview_bot_deliveries", "again", registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Histogram("preview_bot_intake_seconds", "again", registry=registry)
