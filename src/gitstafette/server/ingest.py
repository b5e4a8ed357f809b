"""Storing an incoming event, shared by the HTTP webhook endpoint and ``WebhookEventPush``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from gitstafette.config import ServerConfig
from gitstafette.constants import HEADER_SIGNATURE_256
from gitstafette.exceptions import StoreError, StoreUnavailable, WebhookRejected
from gitstafette.github.signature import WebhookSecrets
from gitstafette.github.webhook import webhook_payload
from gitstafette.model import WebhookEvent
from gitstafette.server.metrics import ServerMetrics
from gitstafette.store import AppendResult, EventStore
from gitstafette.telemetry import tracing
from gitstafette.telemetry.logs import bind_event
from gitstafette.telemetry.sentry import Sentry

__all__ = ["Ingest", "Outcome"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """How an incoming webhook was answered."""

    status_code: int
    detail: str
    #: for the metrics label: stored, duplicate, rejected-unwatched, rejected-invalid, rejected-signature,
    #: too-large, timeout, unavailable (the store, 503), store-failed (500)
    outcome: str
    event: WebhookEvent | None = None


class Ingest:
    """Checks an incoming event (watched repository, signature, body) and stores it.

    The checks, in this order: 406 for a repository that is not watched; 401 for a signature that is
    missing or wrong while a secret applies; 415 or 400 for a body that is not a GitHub payload (a JSON
    object, or a form whose ``payload`` is one). The body comes after the signature so that a sender
    without the secret is told 401 and nothing about what it sent; the watchlist it may learn of is
    public (``GET /v1/watchlist``). Nothing refused is stored.

    :param secrets: the webhook secrets; replaced as a whole when they are reloaded.
    :param tracer: the server's tracer (``ingest`` and ``store append`` spans); None while tracing is off.
    :param sentry: where signature failures are reported; None: nowhere.
    """

    def __init__(
        self,
        config: ServerConfig,
        store: EventStore,
        metrics: ServerMetrics,
        secrets: WebhookSecrets | None = None,
        tracer: tracing.Tracer | None = None,
        sentry: Sentry | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.secrets = secrets or WebhookSecrets(config.webhook_secret)
        self.metrics = metrics
        self.tracer = tracer
        self.sentry = sentry

    def count(self, outcome: Outcome, repository_id: str, event_type: str) -> Outcome:
        self.metrics.webhooks(repository_id, event_type, outcome.outcome).inc()
        return outcome

    async def store_event(self, event: WebhookEvent, *, body_checked: bool = False) -> Outcome:
        """Check ``event`` and store it; how it was answered.

        :param body_checked: the body is already known to be a payload (the HTTP endpoint parsed it to
            route an organization or App hook), so it is not parsed again.
        """
        if self.tracer is None:
            bind_event(event.delivery_id)  # the rest of this request's log lines are about it
            outcome = await self._store_event(event, body_checked)
        else:
            outcome = await self._store_event_traced(event, body_checked, self.tracer)
        return self.count(outcome, event.repository_id, event.event_type)

    async def _store_event_traced(self, event: WebhookEvent, body_checked: bool, tracer: tracing.Tracer) -> Outcome:
        """The ``ingest`` span (under the HTTP or gRPC server span, if any); the event keeps its context."""
        with tracer.start_as_current_span("ingest", attributes=tracing.event_attributes(event)) as span:
            bind_event(event.delivery_id, format(span.get_span_context().trace_id, "032x"))
            event = replace(event, trace_context=tracing.current_trace_context())
            outcome = await self._store_event(event, body_checked)
            span.set_attribute("gitstafette.outcome", outcome.outcome)
            if outcome.event is not None:
                span.set_attribute("gitstafette.sequence", outcome.event.sequence)
            if outcome.status_code >= 500:
                span.set_status(tracing.Status(tracing.StatusCode.ERROR, outcome.detail))
            return outcome

    async def _append(self, event: WebhookEvent) -> AppendResult:
        if self.tracer is None:
            return await self.store.append(event)
        with self.tracer.start_as_current_span("store append", attributes={"db.system": self.store.kind}):
            return await self.store.append(event)

    async def _store_event(self, event: WebhookEvent, body_checked: bool) -> Outcome:
        if not event.delivery_id:
            return Outcome(400, "the event has no delivery id", "rejected-invalid")
        if not self.config.repositories.watches(event.repository_id, event.repository_name):
            return Outcome(406, f"repository {event.repository_id} is not watched by this server", "rejected-unwatched")
        problem = self.secrets.configured and self.secrets.problem(
            event.repository_id, event.body, event.header(HEADER_SIGNATURE_256), event.header("content-type") or ""
        )
        if problem:
            logger.warning("delivery %s for repository %s refused: %s", event.delivery_id, event.repository_id, problem)
            if self.sentry is not None:
                self.sentry.report(f"webhook signature check failed: {problem}", "signature-failure", event, status=401)
            return Outcome(401, f"signature check failed: {problem}", "rejected-signature")
        if not body_checked:
            try:
                webhook_payload(event.body, event.header("content-type"))
            except WebhookRejected as exc:
                logger.info("delivery %s for repository %s refused: %s", event.delivery_id, event.repository_id, exc)
                return Outcome(exc.status_code, exc.detail, "rejected-invalid")
        try:
            result = await self._append(event)
        except StoreUnavailable as exc:  # may pass: the sender is to redeliver
            logger.error("cannot store delivery %s: %s", event.delivery_id, exc)
            return Outcome(503, "the event store is unavailable; redeliver later", "unavailable")
        except StoreError as exc:  # will not pass by itself: an operator must look (the traceback goes along)
            logger.error("cannot store delivery %s, the store failed: %s", event.delivery_id, exc, exc_info=exc)
            return Outcome(500, "the event store failed; the event is not stored", "store-failed")
        stored = result.event
        if not result.created:
            logger.info(
                "delivery %s for repository %s: duplicate of #%d",
                event.delivery_id,
                event.repository_id,
                stored.sequence,
            )
            return Outcome(204, "already stored", "duplicate", stored)
        logger.info(
            "delivery %s: %s event for repository %s stored as #%d (%d bytes)",
            event.delivery_id,
            event.event_type,
            event.repository_id,
            stored.sequence,
            len(event.body),
        )
        return Outcome(201, f"stored as #{stored.sequence}", "stored", stored)
