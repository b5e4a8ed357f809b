"""The client's Prometheus metrics, in a registry of its own (served on the health port at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from gitstafette.telemetry.labels import LabelChildren

__all__ = ["ClientMetrics"]

# Counters without the extra *_created series: half the lines, nothing a dashboard uses.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LAG_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class ClientMetrics:
    """Every series of the client. Label children of per-event series are bound once (:class:`LabelChildren`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.events_received = LabelChildren(
            Counter(
                "gitstafette_client_events_received",
                "Events received from the server, by repository",
                ["repository"],
                registry=registry,
            ),
            kept=0,
        )
        self.settled = LabelChildren(
            Counter(
                "gitstafette_client_events_settled",
                "Events settled, by outcome: delivered, dead-letter, or already-settled (sent again by the server "
                "and acknowledged without another delivery)",
                ["outcome"],
                registry=registry,
            )
        )
        self.attempts = Counter(
            "gitstafette_client_delivery_attempts",
            "Delivery attempts, by result: the target's status class, connect-error, timeout or error",
            ["result"],
            registry=registry,
        )
        self.deliveries = LabelChildren(
            Counter(
                "gitstafette_client_deliveries",
                "Events settled after delivery attempts, by repository, outcome (delivered, dead-letter) and the "
                "target's last HTTP status (none: no answer)",
                ["repository", "outcome", "status"],
                registry=registry,
            ),
            kept=2,
        )
        self.retries = LabelChildren(
            Counter(
                "gitstafette_client_delivery_retries",
                "Delivery attempts that failed and are tried again, by repository",
                ["repository"],
                registry=registry,
            ),
            kept=0,
        )
        self.dead_letters = LabelChildren(
            Counter(
                "gitstafette_client_dead_letters",
                "Events given up on and reported to the server as dead letters, by repository",
                ["repository"],
                registry=registry,
            ),
            kept=0,
        )
        self.lag = Histogram(
            "gitstafette_client_delivery_lag_seconds",
            "End-to-end latency: from the server receiving a webhook to the target accepting it",
            buckets=_LAG_BUCKETS_S,
            registry=registry,
        )
        self.connected = Gauge(
            "gitstafette_client_connected", "1 while a stream to a server is open", registry=registry
        )
        self.connections = Counter("gitstafette_client_connections", "Streams opened and subscribed", registry=registry)
        self.connection_failures = Counter(
            "gitstafette_client_connection_failures", "Connection attempts that failed", registry=registry
        )
        self.target_healthy = Gauge(
            "gitstafette_client_target_healthy",
            "1 while the target's health URL passes (always 1 without one)",
            registry=registry,
        )
        self.target_healthy.set(1)
        self.health_checks = Counter(
            "gitstafette_client_target_health_checks",
            "Checks of the target's health URL, by result",
            ["result"],
            registry=registry,
        )
