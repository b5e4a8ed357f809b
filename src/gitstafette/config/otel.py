"""OpenTelemetry settings, from the original's variables and the standard ones (the standard ones win).

=========================  ==================================================  ===================================
the original's variable    the standard one that wins over it                  meaning
=========================  ==================================================  ===================================
``OTEL_ENABLED``           (none; ``GITSTAFETTE_OTEL_ENABLED``, ``--otel``)    export traces and metrics over OTLP
``OTEL_HOSTNAME``          ``OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]ENDPOINT``   the collector's host
``OTEL_PORT``              ``OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]ENDPOINT``   its port (4317 for grpc, 4318 http)
``OTEL_PROTOCOL``          ``OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]PROTOCOL``   ``grpc`` or ``http``
``OTEL_SERVICE_NAME``      (the same name)                                     the service name
``OTEL_TRACE_SAMPLING_RATE`` ``OTEL_TRACES_SAMPLER`` (+ ``_ARG``)              share of new traces kept, 0 to 1
=========================  ==================================================  ===================================

The other standard variables (``OTEL_EXPORTER_OTLP_HEADERS``, ``…_CERTIFICATE``, ``…_TIMEOUT``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_BSP_*``, ``OTEL_METRIC_EXPORT_INTERVAL``) are read by the SDK and the
exporters themselves.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from gitstafette.exceptions import ConfigError

__all__ = ["OtelSettings", "Protocol", "Signal"]

Protocol = Literal["grpc", "http/protobuf"]
Signal = Literal["traces", "metrics"]

#: the collector's ports by protocol, when OTEL_PORT does not say
OTLP_GRPC_PORT = 4317
OTLP_HTTP_PORT = 4318
#: how often metrics are exported over OTLP unless OTEL_METRIC_EXPORT_INTERVAL (milliseconds) says
METRIC_EXPORT_INTERVAL_MS = 60_000

_PROTOCOLS: dict[str, Protocol] = {"grpc": "grpc", "http": "http/protobuf", "http/protobuf": "http/protobuf"}


def _protocol(environ: Mapping[str, str], signal: Signal) -> Protocol:
    for name in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_PROTOCOL"):
        value = environ.get(name, "").strip().lower()
        if value:
            if value not in _PROTOCOLS:
                raise ConfigError(f"{name}: {value!r} is not an OTLP protocol this build speaks (grpc or http)")
            return _PROTOCOLS[value]
    return "grpc"


def _endpoint(environ: Mapping[str, str], signal: Signal, protocol: Protocol) -> str | None:
    """The endpoint the original's OTEL_HOSTNAME / OTEL_PORT give, or None when a standard variable is set
    (the exporter reads it) or neither is (the exporter's default, localhost)."""
    if environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    host = environ.get("OTEL_HOSTNAME", "").strip()
    port = environ.get("OTEL_PORT", "").strip()
    if not host and not port:
        return None
    if port and not port.isdigit():
        raise ConfigError(f"OTEL_PORT: {port!r} is not a port number")
    port = port or str(OTLP_GRPC_PORT if protocol == "grpc" else OTLP_HTTP_PORT)
    base = f"http://{host or 'localhost'}:{port}"  # the original's collector speaks plaintext
    return base if protocol == "grpc" else f"{base}/v1/{signal}"


def _sampling_rate(environ: Mapping[str, str]) -> float | None:
    if environ.get("OTEL_TRACES_SAMPLER"):
        return None  # the SDK reads the standard sampler variables itself
    text = environ.get("OTEL_TRACE_SAMPLING_RATE", "").strip()
    if not text:
        return None
    try:
        rate = float(text)
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"OTEL_TRACE_SAMPLING_RATE: {text!r} is not a share between 0 and 1 (e.g. 0.1)")
    return rate


def _interval_s(environ: Mapping[str, str]) -> float:
    text = environ.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip()
    if not text:
        return METRIC_EXPORT_INTERVAL_MS / 1000
    if not text.isdigit() or int(text) == 0:
        raise ConfigError(f"OTEL_METRIC_EXPORT_INTERVAL: {text!r} is not a positive number of milliseconds")
    return int(text) / 1000


@dataclass(frozen=True)
class OtelSettings:
    """Where and how a process exports its traces and metrics over OTLP.

    :param traces_endpoint: None: the exporter's own (a standard variable, or localhost).
    :param sampling_rate: None: the SDK's sampler (``OTEL_TRACES_SAMPLER``, or every trace).
    """

    enabled: bool
    service_name: str
    traces_protocol: Protocol = "grpc"
    metrics_protocol: Protocol = "grpc"
    traces_endpoint: str | None = None
    metrics_endpoint: str | None = None
    sampling_rate: float | None = None
    metric_interval_s: float = METRIC_EXPORT_INTERVAL_MS / 1000

    @classmethod
    def from_env(
        cls, enabled: bool, default_service_name: str, environ: Mapping[str, str] | None = None
    ) -> OtelSettings:
        """:raises ConfigError: a variable that cannot be used, naming it."""
        env = os.environ if environ is None else environ
        service_name = env.get("OTEL_SERVICE_NAME", "").strip() or default_service_name
        if not enabled:
            return cls(False, service_name)
        traces_protocol, metrics_protocol = _protocol(env, "traces"), _protocol(env, "metrics")
        return cls(
            enabled=True,
            service_name=service_name,
            traces_protocol=traces_protocol,
            metrics_protocol=metrics_protocol,
            traces_endpoint=_endpoint(env, "traces", traces_protocol),
            metrics_endpoint=_endpoint(env, "metrics", metrics_protocol),
            sampling_rate=_sampling_rate(env),
            metric_interval_s=_interval_s(env),
        )

    def describe(self) -> str:
        """For the startup log line."""
        if not self.enabled:
            return "off"
        traces = self.traces_endpoint or "the OTEL_EXPORTER_OTLP_* endpoint (default localhost)"
        rate = "" if self.sampling_rate is None else f", sampling {self.sampling_rate:g}"
        return f"service {self.service_name}, traces to {traces} over {self.traces_protocol}{rate}"
