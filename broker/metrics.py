"""Prometheus metrics of the broker (prometheus-client).

In-process metrics, observed by the code that does the work (a worker's are scraped from
its own `--metrics-port`): deliveries by outcome and the event → Slack latency.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

DELIVERIES = Counter(
    "broker_deliveries_total",
    "Slack deliveries by outcome (sent, retry, failed, ...).",
    ["outcome"],
)
ALERT_LATENCY = Histogram(
    "broker_alert_latency_seconds",
    "From the ingest that wrote the market events to Slack accepting the alert.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0),
)


def observe_delivery(outcome: str, latency_s: float | None) -> None:
    """Count one delivery attempt's outcome; a sent one's latency when known."""
    DELIVERIES.labels(outcome=outcome).inc()
    if outcome == "sent" and latency_s is not None:
        ALERT_LATENCY.observe(max(0.0, latency_s))
