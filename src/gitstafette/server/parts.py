"""What the server's two front doors share: the HTTP app (webhooks, REST, health, metrics) and the gRPC
service (streams, pushes) are both made of the same parts, made once by :class:`~gitstafette.server.server.Server`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gitstafette.config import ServerConfig
    from gitstafette.server.audit import AuditLog
    from gitstafette.server.auth import Authenticator
    from gitstafette.server.dispatch import Dispatcher
    from gitstafette.server.ingest import Ingest
    from gitstafette.server.metrics import ServerMetrics
    from gitstafette.store import EventStore
    from gitstafette.telemetry.tracing import Tracer

__all__ = ["ServerParts"]


@dataclass(frozen=True)
class ServerParts:
    """:param store: the store every part uses (the server's timed wrapper of the backend).
    :param tracer: the server's tracer; None while tracing is off."""

    config: ServerConfig
    store: EventStore
    ingest: Ingest
    metrics: ServerMetrics
    dispatcher: Dispatcher
    auth: Authenticator
    audit: AuditLog
    tracer: Tracer | None = None
