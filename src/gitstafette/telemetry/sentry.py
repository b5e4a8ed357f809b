"""Sentry (``SENTRY_DSN``): unexpected exceptions, signature failures and dead letters, with context and
without secrets or payloads.

What is sent:

- every log record at ERROR with an exception (``logger.exception``) or without, and uncaught
  exceptions: the logging integration; other log lines ride along as breadcrumbs;
- a webhook whose signature does not hold (server: 401; client: refused before delivery) and a dead
  letter (client): :meth:`Sentry.report`, one event each, tagged with repository, delivery id, event and
  sequence.

Each process owns its :class:`Sentry`, made with it and started at startup when it has a DSN, and hands
it to what reports (the server's ``Ingest``; the client reports itself); while it is off, reports are
nothing. The SDK's client that sends them is the process's (``sentry_sdk.init``): the logging integration
needs it.

What is never sent: payload bodies, headers, frame local variables (they may hold a secret or a body),
the command line (it may hold a token), request data. ``before_send`` also replaces any configured
secret's value that would still appear anywhere in an event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any, Literal

import sentry_sdk
from sentry_sdk.integrations.argv import ArgvIntegration
from sentry_sdk.integrations.logging import LoggingIntegration

from gitstafette import __version__
from gitstafette.model import WebhookEvent
from gitstafette.security.secret import Secret

__all__ = ["Sentry"]

logger = logging.getLogger(__name__)

REDACTED = "[redacted]"
#: how long pending events may take to leave at shutdown
FLUSH_TIMEOUT_S = 5.0


def _scrubber(secrets: list[str]) -> Any:
    def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
        event.pop("request", None)
        extra = event.get("extra")
        if isinstance(extra, dict):
            extra.pop("sys.argv", None)
        if not secrets:
            return event
        text = json.dumps(event, default=str)
        if not any(secret in text for secret in secrets):
            return event
        for secret in secrets:
            text = text.replace(json.dumps(secret)[1:-1], REDACTED)
        scrubbed: dict[str, Any] = json.loads(text)
        return scrubbed

    return before_send


class Sentry:
    """Reports of one server or client to Sentry, when ``dsn`` is set; nothing when it is not.

    :param service: the ``service`` tag of every event (``gitstafette-server``, ``gitstafette-client``).
    :param server_name: the process's name in Sentry (the server or client id).
    """

    def __init__(self, dsn: Secret | None, service: str, server_name: str) -> None:
        self.dsn = dsn
        self.service = service
        self.server_name = server_name
        #: started and not stopped: reports are sent
        self.enabled = False

    def start(self, secrets: Iterable[Secret | None] = ()) -> bool:
        """Report from now on, when there is a DSN; ``secrets`` are values never to appear in an event."""
        dsn = self.dsn
        if not dsn:
            return False
        values = sorted({s.reveal() for s in secrets if s} | {dsn.reveal()}, key=len, reverse=True)
        sentry_sdk.init(
            dsn=dsn.reveal(),
            release=f"gitstafette@{__version__}",
            server_name=self.server_name,
            send_default_pii=False,
            include_local_variables=False,
            max_request_body_size="never",
            # No patching of starlette, aiohttp, grpc or redis: the hot paths stay as they are measured.
            auto_enabling_integrations=False,
            disabled_integrations=[ArgvIntegration()],
            integrations=[LoggingIntegration(level=logging.INFO, event_level=logging.ERROR)],
            auto_session_tracking=False,
            send_client_reports=False,
            before_send=_scrubber(values),
        )
        sentry_sdk.set_tag("service", self.service)
        self.enabled = True
        logger.info("Sentry on: errors, signature failures and dead letters are reported (as %s)", self.service)
        return True

    def stop(self) -> None:
        """Send what is pending (at the end of the process)."""
        if self.enabled:
            sentry_sdk.flush(timeout=FLUSH_TIMEOUT_S)
            self.enabled = False

    def report(
        self,
        message: str,
        kind: str,
        event: WebhookEvent,
        level: Literal["warning", "error"] = "warning",
        **tags: str | int,
    ) -> None:
        """One Sentry event about ``event`` (never its body or headers); nothing when Sentry is off."""
        if not self.enabled:
            return
        with sentry_sdk.new_scope() as scope:
            scope.set_tag("kind", kind)
            scope.set_tag("repository", event.repository_id)
            scope.set_tag("delivery_id", event.delivery_id)
            scope.set_tag("event", event.event_type or "?")
            if event.sequence:
                scope.set_tag("sequence", str(event.sequence))
            for name, value in tags.items():
                scope.set_tag(name, str(value))
            scope.set_context("webhook", {"body_bytes": len(event.body), "received_at_ns": event.received_at_ns})
            # one issue per kind and repository, whatever the delivery id in the message
            scope.fingerprint = ["gitstafette", kind, event.repository_id]
            sentry_sdk.capture_message(message, level=level)

    def __repr__(self) -> str:
        return f"Sentry({self.service!r}, {'on' if self.enabled else 'off'})"
