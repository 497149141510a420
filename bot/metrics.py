"""Prometheus metrics of the bot, in a registry of their own so tests can build many apps."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """The bot's metrics; one instance per running app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.deliveries = Counter(
            "preview_bot_deliveries",
            "Webhook deliveries by event (a known GitHub event, other, or unverified) and outcome.",
            ["event", "outcome"],
            registry=self.registry,
        )
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
        self.intake_seconds = Histogram(
            "preview_bot_intake_seconds",
            "Time from request to response on POST /webhook.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
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
