"""The server's Prometheus metrics, in the registry ``/metrics`` serves (and the OTLP bridge exports).

Recording stays on prometheus-client: an increment of a label child costs ~0.3 µs here, the
OpenTelemetry SDK's ``Counter.add`` ~6 µs (README, "Observability"), and metrics are always on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gitstafette.exceptions import StoreError
from gitstafette.model import AuditAction
from gitstafette.store import EventStore
from gitstafette.telemetry.labels import LabelChildren

__all__ = ["Backlog", "ServerMetrics", "STORE_OPERATIONS"]

logger = logging.getLogger(__name__)

# Counters without the extra *_created series: half the lines, nothing a dashboard uses.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: store operations whose latency is measured: the ones on the way of every event
STORE_OPERATIONS = ("append", "read_after", "set_cursor", "set_cursors", "add_audit", "add_dead_letter")
_STORE_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5, 10)


class ServerMetrics:
    """Every series of the server. Label children are bound once (:class:`LabelChildren`).

    :param streams: the number of open acknowledged streams.
    :param live_cursors: (client id, repository) → cursor of the streams open here (see :class:`Backlog`).
    """

    def __init__(
        self,
        store: EventStore,
        streams: Callable[[], int],
        live_cursors: Callable[[], dict[tuple[str, str], int]],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry = registry or CollectorRegistry()
        webhooks = Counter(
            "gitstafette_webhooks_received",
            "Webhooks received, by repository, event and outcome (stored, duplicate, rejected-signature, "
            "rejected-unwatched, rejected-invalid, too-large, timeout, unavailable)",
            ["repository", "event", "outcome"],
            registry=registry,
        )
        self.webhooks = LabelChildren(webhooks)
        streamed = Counter(
            "gitstafette_events_streamed",
            "Events sent on client streams (redeliveries included), by repository and client id",
            ["repository", "client_id"],
            registry=registry,
        )
        acknowledged = Counter(
            "gitstafette_events_acknowledged",
            "Events a client acknowledged (its target accepted them), by repository and client id",
            ["repository", "client_id"],
            registry=registry,
        )
        dead_letters = Counter(
            "gitstafette_dead_letters",
            "Events a client gave up on (dead letters), by repository and client id",
            ["repository", "client_id"],
            registry=registry,
        )
        #: audit action → its counter's children by (repository, client id)
        self.by_action: dict[str, LabelChildren[Counter]] = {
            "sent": LabelChildren(streamed, kept=0),
            "acknowledged": LabelChildren(acknowledged, kept=0),
            "failed": LabelChildren(dead_letters, kept=0),
        }
        self.store_seconds = Histogram(
            "gitstafette_store_operation_seconds",
            "Latency of store operations, by operation",
            ["operation"],
            buckets=_STORE_BUCKETS_S,
            registry=registry,
        )
        Gauge("gitstafette_streams_connected", "Open acknowledged streams", registry=registry).set_function(streams)
        self.backlog = Backlog(store, registry, live_cursors)

    def count_audit(self, client_id: str, repository_id: str, action: AuditAction) -> None:
        """An event sent to, acknowledged by, or failed by a client (the audit trail's records)."""
        self.by_action[action](repository_id, client_id).inc()

    def time_store(self, store: EventStore) -> None:
        """Measure the latency of ``store``'s :data:`STORE_OPERATIONS` (wraps those methods of the instance)."""
        for name in STORE_OPERATIONS:
            setattr(store, name, _timed(getattr(store, name), self.store_seconds.labels(name)))


#: set while a timed store operation runs: one it calls (``set_cursor`` → ``set_cursors``) is not counted again
_in_store_operation: ContextVar[bool] = ContextVar("gitstafette_in_store_operation", default=False)


def _timed(method: Callable[..., Awaitable[Any]], histogram: Histogram) -> Callable[..., Awaitable[Any]]:
    observe = histogram.observe
    clock = time.perf_counter

    async def timed(*args: Any, **kwargs: Any) -> Any:
        if _in_store_operation.get():
            return await method(*args, **kwargs)
        token = _in_store_operation.set(True)
        started = clock()
        try:
            return await method(*args, **kwargs)
        finally:
            observe(clock() - started)
            _in_store_operation.reset(token)

    return timed


class Backlog(Collector):
    """Unacknowledged events per repository and client id, and the age of the oldest of them.

    Worked out from the store by :meth:`refresh` (before each scrape and each OTLP export), not per
    event; the collector yields the last result.
    """

    def __init__(
        self, store: EventStore, registry: CollectorRegistry, live_cursors: Callable[[], dict[tuple[str, str], int]]
    ) -> None:
        self.store = store
        #: (client id, repository) → cursor of the streams open here: ahead of the store's (written behind),
        #: and there before a new client id acknowledged anything
        self.live_cursors = live_cursors
        #: (repository, client id) → (unacknowledged events, age of the oldest in seconds)
        self.snapshot: dict[tuple[str, str], tuple[int, float]] = {}
        registry.register(self)

    async def refresh(self) -> None:
        try:
            self.snapshot = await self._measure()
        except StoreError as exc:
            logger.warning("backlog not measured, the store is unavailable: %s", exc)

    async def _measure(self) -> dict[tuple[str, str], tuple[int, float]]:
        now_ns = time.time_ns()
        snapshot: dict[tuple[str, str], tuple[int, float]] = {}
        live = self.live_cursors()
        for state in await self.store.repositories():
            cursors = dict(state.cursors)
            for (client_id, repository_id), cursor in live.items():
                if repository_id == state.repository_id:
                    cursors[client_id] = max(cursor, cursors.get(client_id, cursor))
            for client_id, cursor in cursors.items():
                first = max(cursor + 1, state.first_sequence) if state.event_count else state.last_sequence + 1
                pending = max(0, state.last_sequence - first + 1)
                age_s = 0.0
                if pending:
                    oldest = await self.store.event_at(state.repository_id, first)
                    age_s = max(0.0, (now_ns - oldest.received_at_ns) / 1e9) if oldest is not None else 0.0
                snapshot[(state.repository_id, client_id)] = (pending, age_s)
        return snapshot

    def collect(self) -> Iterable[GaugeMetricFamily]:
        events = GaugeMetricFamily(
            "gitstafette_backlog_events",
            "Events not yet acknowledged, by repository and client id (dead letters count as settled)",
            labels=["repository", "client_id"],
        )
        age = GaugeMetricFamily(
            "gitstafette_backlog_oldest_age_seconds",
            "Age of the oldest event not yet acknowledged, by repository and client id (0: none)",
            labels=["repository", "client_id"],
        )
        for (repository_id, client_id), (pending, age_s) in sorted(self.snapshot.items()):
            events.add_metric([repository_id, client_id], pending)
            age.add_metric([repository_id, client_id], age_s)
        return [events, age]

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []
