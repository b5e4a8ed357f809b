"""A process's OpenTelemetry, started and stopped with it: the tracer, and the OTLP export of its metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp

from gitstafette.config import OtelSettings
from gitstafette.telemetry import tracing
from gitstafette.telemetry.otlp_metrics import OtlpMetricsBridge

__all__ = ["Telemetry"]

logger = logging.getLogger(__name__)

#: requests that get no HTTP server span: probes and scrapes, many and uninteresting
UNTRACED_PATHS = "healthz,readyz,metrics,health,ready"


class Telemetry:
    """Traces and OTLP metrics of one server or client, when ``settings.enabled``; nothing at all when not.

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
        self.bridge: OtlpMetricsBridge | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def start(self) -> None:
        """Set the tracer up and start exporting metrics (in the running event loop)."""
        if not self.enabled:
            return
        tracing.start_tracing(self.settings)
        resource = tracing.resource(self.settings)
        self.bridge = OtlpMetricsBridge.from_settings(self.settings, self.registry, resource, self.before_export)
        self._task = asyncio.create_task(self.bridge.run(), name="otlp-metrics")

    def instrument_http(self, app: ASGIApp) -> ASGIApp:
        """``app`` under OpenTelemetry's ASGI middleware (HTTP server spans, W3C context of the caller)."""
        if not self.enabled:
            return app
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        return OpenTelemetryMiddleware(app, excluded_urls=UNTRACED_PATHS, exclude_spans=["receive", "send"])

    def grpc_interceptors(self) -> list[Any]:
        """OpenTelemetry's gRPC server interceptors (see :func:`tracing.grpc_server_interceptors`); none while off."""
        return tracing.grpc_server_interceptors() if self.enabled else []

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
        if self.enabled:
            await asyncio.to_thread(tracing.shutdown_tracing)

    def __repr__(self) -> str:
        return f"Telemetry({self.settings.describe()})"
