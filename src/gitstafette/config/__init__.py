"""Configuration objects: one per process, built once by the CLI and passed to constructors.

A leaf: it parses and checks settings and imports nothing that runs (no server, client, store or
telemetry); only constants, exceptions, the model's :class:`~gitstafette.model.Watchlist` and
:class:`~gitstafette.security.secret.Secret`.

=============  ================================================================
``units``      durations and sizes (``15m``, ``25MiB``)
``store``      store URLs: :class:`StoreConfig`, :class:`RedisSettings`
``server``     :class:`ServerConfig`, :class:`ServerTlsConfig`
``client``     :class:`ClientConfig`, :class:`ClientTlsConfig`
``otel``       :class:`OtelSettings`, from the ``OTEL_*`` environment variables
=============  ================================================================
"""

from __future__ import annotations

from gitstafette.config.client import ClientConfig, ClientTlsConfig
from gitstafette.config.otel import OtelSettings
from gitstafette.config.server import ServerConfig, ServerTlsConfig
from gitstafette.config.store import RedisSettings, StoreConfig
from gitstafette.config.units import parse_duration, parse_size

__all__ = [
    "ClientConfig",
    "ClientTlsConfig",
    "OtelSettings",
    "RedisSettings",
    "ServerConfig",
    "ServerTlsConfig",
    "StoreConfig",
    "parse_duration",
    "parse_size",
]
