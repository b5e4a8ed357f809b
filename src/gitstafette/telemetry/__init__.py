"""Observability: metric label helpers, OpenTelemetry traces and the OTLP metrics bridge, Sentry."""

from __future__ import annotations

__all__: list[str] = []
