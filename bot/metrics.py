"""Prometheus metrics of the bot, in a registry of their own so tests can build many apps."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Why the bot released an Application (preview_bot_applications_released_total's `reason`):
# a sync's plan finished its PR's teardown, or the resync let go of an Application of a
# repository the App no longer covers.
RELEASE_REASONS = ("teardown", "uninstalled")
# Upper bounds of preview_bot_intake_seconds' buckets.
INTAKE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_INTAKE_SECONDS_HELP = "Time from request to response on POST /webhook."


class IntakeCounts(Collector):
    """The two metrics every delivery moves, as plain numbers read at scrape time.

    prometheus_client's Counter and Histogram take a lock and look up their child on every
    call: a tenth of the intake's own work per delivery. The intake and /metrics both run on
    the event loop's thread, so plain numbers need no lock. Exported as
    preview_bot_deliveries_total{event,outcome} and the preview_bot_intake_seconds histogram.
    """

    def __init__(self) -> None:
        # (event label, outcome) -> deliveries: both from fixed sets, so this stays small.
        self.deliveries: dict[tuple[str, str], int] = {}
        self._buckets = [0] * (len(INTAKE_BUCKETS) + 1)  # the last one is +Inf
        self._seconds = 0.0

    def delivered(self, event: str, outcome: str) -> None:
        key = (event, outcome)
        self.deliveries[key] = self.deliveries.get(key, 0) + 1

    def observe(self, seconds: float) -> None:
        # bisect_left: the first bound >= seconds, as Prometheus' `le` (less or equal).
        self._buckets[bisect_left(INTAKE_BUCKETS, seconds)] += 1
        self._seconds += seconds

    def describe(self) -> Iterator[Metric]:
        """The metrics without samples: the registry checks their names against the others'."""
        yield self._deliveries()
        yield HistogramMetricFamily("preview_bot_intake_seconds", _INTAKE_SECONDS_HELP)

    def collect(self) -> Iterator[Metric]:
        deliveries = self._deliveries()
        for (event, outcome), count in sorted(self.deliveries.items()):
            deliveries.add_metric([event, outcome], count)
        yield deliveries
        cumulative, total = [], 0
        bounds = [*map(floatToGoString, INTAKE_BUCKETS), "+Inf"]
        for bound, count in zip(bounds, self._buckets, strict=True):
            total += count
            cumulative.append((bound, float(total)))
        yield HistogramMetricFamily(
            "preview_bot_intake_seconds",
            _INTAKE_SECONDS_HELP,
            buckets=cumulative,
            sum_value=self._seconds,
        )

    @staticmethod
    def _deliveries() -> CounterMetricFamily:
        return CounterMetricFamily(
            "preview_bot_deliveries",
            "Webhook deliveries by event (a known GitHub event, other, or unverified) and outcome.",
            labels=["event", "outcome"],
        )


class Metrics:
    """The bot's metrics; one instance per running app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.intake = IntakeCounts()
        self.registry.register(self.intake)
        self.queue_depth = Gauge(
            "preview_bot_queue_depth", "PRs waiting for a sync.", registry=self.registry
        )
        self.syncs_running = Gauge(
            "preview_bot_syncs_running", "Syncs running now.", registry=self.registry
        )
        self.webhooks_in_flight = Gauge(
            "preview_bot_webhooks_in_flight",
            "Webhook requests being handled now (capped by max_in_flight).",
            registry=self.registry,
        )
        self.syncs = Counter(
            "preview_bot_syncs",
            "Finished syncs by result (ok, retry, failed).",
            ["result"],
            registry=self.registry,
        )
        self.sync_seconds = Histogram(
            "preview_bot_sync_seconds",
            "Duration of one sync of one PR.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.time_to_ready = Histogram(
            "preview_bot_time_to_ready_seconds",
            "Time from the push (or label) of a head to Argo CD reporting its preview ready.",
            buckets=(15, 30, 60, 120, 180, 300, 600, 900, 1800, 3600),
            registry=self.registry,
        )
        self.resync_deferred = Counter(
            "preview_bot_resync_deferred",
            "Installations whose resync waited because their rate-limit budget ran low.",
            registry=self.registry,
        )
        self.resync_skipped = Counter(
            "preview_bot_resync_skipped",
            "Repositories a resync could not list (GitHub refused: no access, gone).",
            registry=self.registry,
        )
        self.stray_deployments = Counter(
            "preview_bot_stray_deployments",
            "Deployments in a running preview's environment that are not the one it runs, by "
            "result: marked inactive by the resync, or failed (tried again at the next one).",
            ["result"],
            registry=self.registry,
        )
        self.applications_released = Counter(
            "preview_bot_applications_released",
            "Applications whose teardown finalizer the bot took off, by reason (teardown: a "
            "sync's plan; uninstalled: the resync, for a repository the App no longer covers).",
            ["reason"],
            registry=self.registry,
        )
        for reason in RELEASE_REASONS:  # both series exported from the start, at 0
            self.applications_released.labels(reason)
        self.github_requests = Counter(
            "preview_bot_github_requests",
            "Requests sent to GitHub by method and status.",
            ["method", "status"],
            registry=self.registry,
        )
        self.github_rate_remaining = Gauge(
            "preview_bot_github_rate_remaining",
            "Requests left in GitHub's hourly budget, per installation ('app': the App's own).",
            ["installation"],
            registry=self.registry,
        )
        self.github_pauses = Counter(
            "preview_bot_github_pauses",
            "Pauses of GitHub requests by kind (primary, secondary rate limit; circuit open).",
            ["kind"],
            registry=self.registry,
        )
        self.github_refused = Counter(
            "preview_bot_github_refused",
            "GitHub requests not sent because a pause forbade them, by kind.",
            ["kind"],
            registry=self.registry,
        )
