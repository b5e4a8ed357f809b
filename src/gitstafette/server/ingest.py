"""Storing an incoming event, shared by the HTTP webhook endpoint and ``WebhookEventPush``."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics

from gitstafette.config import ServerConfig
from gitstafette.constants import HEADER_SIGNATURE_256
from gitstafette.exceptions import StoreError
from gitstafette.github.signature import WebhookSecrets
from gitstafette.model import WebhookEvent
from gitstafette.store import EventStore

__all__ = ["Ingest", "Outcome"]

logger = logging.getLogger("gitstafette.server.ingest")

# Counters without the extra *_created series: half the lines, nothing a dashboard uses.
disable_created_metrics()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Outcome:
    """How an incoming webhook was answered."""

    status_code: int
    detail: str
    #: for the metrics label: stored, duplicate, rejected-unwatched, rejected-invalid, rejected-signature,
    #: too-large, timeout, unavailable
    outcome: str
    event: WebhookEvent | None = None


class Ingest:
    """Checks an incoming event (watched repository, signature) and stores it.

    :param secrets: the webhook secrets; replaced as a whole when they are reloaded.
    """

    def __init__(
        self,
        config: ServerConfig,
        store: EventStore,
        registry: CollectorRegistry,
        secrets: WebhookSecrets | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.secrets = secrets or WebhookSecrets(config.webhook_secret)
        self.received = Counter(
            "gitstafette_webhooks_received",
            "Webhooks received, by outcome",
            ["outcome"],
            registry=registry,
        )
        #: the counter of each outcome label, looked up once (``labels`` takes a lock and builds a key)
        self._by_outcome: dict[str, Counter] = {}

    def count(self, outcome: Outcome) -> Outcome:
        counter = self._by_outcome.get(outcome.outcome)
        if counter is None:
            counter = self._by_outcome[outcome.outcome] = self.received.labels(outcome.outcome)
        counter.inc()
        return outcome

    async def store_event(self, event: WebhookEvent) -> Outcome:
        if not event.delivery_id:
            return self.count(Outcome(400, "the event has no delivery id", "rejected-invalid"))
        if not self.config.repositories.watches(event.repository_id, event.repository_name):
            return self.count(
                Outcome(406, f"repository {event.repository_id} is not watched by this server", "rejected-unwatched")
            )
        problem = self.secrets.configured and self.secrets.problem(
            event.repository_id, event.body, event.header(HEADER_SIGNATURE_256), event.header("content-type") or ""
        )
        if problem:
            logger.warning("delivery %s for repository %s refused: %s", event.delivery_id, event.repository_id, problem)
            return self.count(Outcome(401, f"signature check failed: {problem}", "rejected-signature"))
        try:
            result = await self.store.append(event)
        except StoreError as exc:
            logger.error("cannot store delivery %s: %s", event.delivery_id, exc)
            return self.count(Outcome(503, "the event store is unavailable; redeliver later", "unavailable"))
        stored = result.event
        if not result.created:
            logger.info(
                "delivery %s for repository %s: duplicate of #%d",
                event.delivery_id,
                event.repository_id,
                stored.sequence,
            )
            return self.count(Outcome(204, "already stored", "duplicate", stored))
        logger.info(
            "delivery %s: %s event for repository %s stored as #%d (%d bytes)",
            event.delivery_id,
            event.event_type,
            event.repository_id,
            stored.sequence,
            len(event.body),
        )
        return self.count(Outcome(201, f"stored as #{stored.sequence}", "stored", stored))
