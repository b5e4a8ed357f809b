"""The server's Prometheus metrics, in the registry ``/metrics`` serves (and the OTLP bridge exports).

Recording stays on prometheus-client: an increment of a label child costs ~0.3 µs here, the
OpenTelemetry SDK's ``Counter.add`` ~6 µs (README, "Observability"), and metrics are always on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gitstafette.exceptions import StoreError
from gitstafette.model import AuditAction, AuditRecord, DeadLetter, RepositoryState, WebhookEvent
from gitstafette.store import AppendResult, EventStore, Lease
from gitstafette.telemetry.labels import LabelChildren

__all__ = ["Backlog", "ServerMetrics", "STORE_OPERATIONS", "TimedStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Counters without the extra *_created series: half the lines, nothing a dashboard uses.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: store operations whose latency is measured (:class:`TimedStore`): the ones on the way of every event
STORE_OPERATIONS = (
    "append",
    "read_after",
    "read_streamable_after",
    "set_cursor",
    "set_cursors",
    "add_audit",
    "add_dead_letter",
)
_STORE_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5, 10)


class ServerMetrics:
    """Every series of the server. Label children are bound once (:class:`LabelChildren`).

    :param store: the backend; the server uses :attr:`store`, which times it.
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
            "rejected-unwatched, rejected-invalid, too-large, timeout, unavailable, store-failed)",
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
        #: ``store`` with its :data:`STORE_OPERATIONS` timed: the store the server's components use
        self.store = TimedStore(store, self.store_seconds)
        self.backlog = Backlog(self.store, registry, live_cursors)

    def count_audit(self, client_id: str, repository_id: str, action: AuditAction) -> None:
        """An event sent to, acknowledged by, or failed by a client (the audit trail's records)."""
        self.by_action[action](repository_id, client_id).inc()


class TimedStore(EventStore):
    """``inner`` with the latency of its :data:`STORE_OPERATIONS` in ``seconds`` (labelled by operation).

    Every operation is handed to ``inner``, looked up there at each call (so a test that replaces a method of
    the backend after startup is still called). What a backend does through another of its operations
    (SQLite's ``set_cursor`` through ``set_cursors``) stays inside it: each call counts once, under the name
    it was called by.
    """

    def __init__(self, inner: EventStore, seconds: Histogram) -> None:
        # No super().__init__(): the notifiers are the backend's own, and only it may touch them.
        self.inner = inner
        self.url = inner.url
        self.kind = inner.kind
        self._seconds = {name: seconds.labels(name) for name in STORE_OPERATIONS}

    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await call
        finally:
            self._seconds[operation].observe(time.perf_counter() - started)

    # ---- timed -------------------------------------------------------------------------------------

    async def append(self, event: WebhookEvent) -> AppendResult:
        return await self._timed("append", self.inner.append(event))

    async def read_after(self, repository_id: str, after_sequence: int, limit: int = 100) -> list[WebhookEvent]:
        return await self._timed("read_after", self.inner.read_after(repository_id, after_sequence, limit))

    async def read_streamable_after(
        self, repository_id: str, after_sequence: int, limit: int = 100
    ) -> list[WebhookEvent]:
        call = self.inner.read_streamable_after(repository_id, after_sequence, limit)
        return await self._timed("read_streamable_after", call)

    async def set_cursor(self, client_id: str, repository_id: str, sequence: int) -> None:
        await self._timed("set_cursor", self.inner.set_cursor(client_id, repository_id, sequence))

    async def set_cursors(self, cursors: Mapping[tuple[str, str], int]) -> None:
        await self._timed("set_cursors", self.inner.set_cursors(cursors))

    async def add_audit(self, records: Sequence[AuditRecord]) -> None:
        await self._timed("add_audit", self.inner.add_audit(records))

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        await self._timed("add_dead_letter", self.inner.add_dead_letter(letter))

    # ---- handed over as they are -------------------------------------------------------------------

    async def open(self) -> None:
        await self.inner.open()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def ping(self) -> None:
        await self.inner.ping()

    async def get_cursor(self, client_id: str, repository_id: str) -> int | None:
        return await self.inner.get_cursor(client_id, repository_id)

    async def start_cursor(self, client_id: str, repository_id: str) -> int:
        return await self.inner.start_cursor(client_id, repository_id)

    async def dead_letters(self, repository_id: str | None = None) -> list[DeadLetter]:
        return await self.inner.dead_letters(repository_id)

    async def add_replays(self, client_id: str, repository_id: str, sequences: list[int]) -> None:
        await self.inner.add_replays(client_id, repository_id, sequences)

    async def replays(self, client_id: str, repository_id: str) -> list[int]:
        return await self.inner.replays(client_id, repository_id)

    async def settle_replay(self, client_id: str, repository_id: str, sequence: int, delivered: bool) -> None:
        await self.inner.settle_replay(client_id, repository_id, sequence, delivered)

    async def audit(self, repository_id: str, sequence: int | None = None) -> list[AuditRecord]:
        return await self.inner.audit(repository_id, sequence)

    async def repositories(self) -> list[RepositoryState]:
        return await self.inner.repositories()

    async def repository(self, repository_id: str) -> RepositoryState | None:
        return await self.inner.repository(repository_id)

    async def event_at(self, repository_id: str, sequence: int) -> WebhookEvent | None:
        return await self.inner.event_at(repository_id, sequence)

    async def resolve_repository(self, spec: str) -> str | None:
        return await self.inner.resolve_repository(spec)

    async def prune(self, now_ns: int, retention_s: float, max_age_s: float) -> int:
        return await self.inner.prune(now_ns, retention_s, max_age_s)

    def on_replays(self, listener: Callable[[str, str], None]) -> None:
        self.inner.on_replays(listener)

    def lease(self, client_id: str, repository_id: str, holder: str) -> Lease:
        return self.inner.lease(client_id, repository_id, holder)

    @property
    def closed(self) -> bool:
        return self.inner.closed

    def stop_waiters(self) -> None:
        self.inner.stop_waiters()

    def changes(self) -> int:
        return self.inner.changes()

    async def wait_any(self, timeout: float | None, since: int | None = None) -> bool:
        return await self.inner.wait_any(timeout, since)

    async def wait_for_events(self, repository_id: str, after_sequence: int, timeout: float | None) -> bool:
        return await self.inner.wait_for_events(repository_id, after_sequence, timeout)

    async def wait_for_streamable(self, repository_id: str, after_sequence: int, timeout: float | None) -> bool:
        return await self.inner.wait_for_streamable(repository_id, after_sequence, timeout)

    def __repr__(self) -> str:
        return f"TimedStore({self.inner!r})"


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
