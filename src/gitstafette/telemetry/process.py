"""A process's OpenTelemetry, started and stopped with it: its tracer, and the OTLP export of its metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp

from gitstafette.config import OtelSettings
from gitstafette.telemetry.otlp_metrics import OtlpMetricsBridge
from gitstafette.telemetry.tracing import Tracer, Tracing

__all__ = ["Telemetry"]

logger = logging.getLogger(__name__)

#: requests that get no HTTP server span: probes and scrapes, many and uninteresting
UNTRACED_PATHS = "healthz,readyz,metrics,health,ready"


class Telemetry:
    """Traces and OTLP metrics of one server or client, when ``settings.enabled``; nothing at all when not.

    :attr:`tracer` is what the process hands the components that make spans, from their construction on
    (spans leave once :meth:`start` ran); None while tracing is off.

    :param before_export: refreshes what is measured on demand before each OTLP export (the backlog).
    """

    def __init__(
        self,
        settings: OtelSettings,
        registry: CollectorRegistry,
        before_export: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.before_export = before_export
        self.tracing = Tracing(settings) if settings.enabled else None
        #: the process's tracer; None while tracing is off
        self.tracer: Tracer | None = None if self.tracing is None else self.tracing.tracer
        self.bridge: OtlpMetricsBridge | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def start(self) -> None:
        """Start exporting spans and metrics (in the running event loop)."""
        if self.tracing is None:
            return
        self.tracing.start()
        resource = self.tracing.provider.resource
        self.bridge = OtlpMetricsBridge.from_settings(self.settings, self.registry, resource, self.before_export)
        self._task = asyncio.create_task(self.bridge.run(), name="otlp-metrics")

    def instrument_http(self, app: ASGIApp) -> ASGIApp:
        """``app`` under OpenTelemetry's ASGI middleware (HTTP server spans, W3C context of the caller)."""
        if self.tracing is None:
            return app
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        return OpenTelemetryMiddleware(
            app,
            excluded_urls=UNTRACED_PATHS,
            exclude_spans=["receive", "send"],
            tracer_provider=self.tracing.provider,
        )

    def grpc_interceptors(self) -> list[Any]:
        """OpenTelemetry's gRPC server interceptors (see :meth:`Tracing.grpc_server_interceptors`); none while off."""
        return [] if self.tracing is None else self.tracing.grpc_server_interceptors()

    def grpc_client_interceptors(self) -> list[Any] | None:
        """OpenTelemetry's gRPC client interceptors, for a channel whose calls continue the current trace (a
        ``grpc://`` target's); None while off."""
        return None if self.tracing is None else self.tracing.grpc_client_interceptors()

    async def aclose(self) -> None:
        """Export the last metrics and the spans still pending."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.bridge is not None:
            try:
                await self.bridge.aclose()
            except Exception:
                logger.exception("the last OTLP metrics export failed")
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)

    def __repr__(self) -> str:
        return f"Telemetry({self.settings.describe()})"
