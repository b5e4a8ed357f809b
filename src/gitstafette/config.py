"""Configuration objects: one per process, built once by the CLI and passed to constructors."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from gitstafette import constants
from gitstafette.exceptions import ConfigError

__all__ = [
    "ServerConfig",
    "StoreConfig",
    "Watchlist",
    "parse_duration",
    "parse_size",
]

StoreScheme = Literal["memory", "sqlite"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, None: 1}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3}


def parse_duration(text: str | float, name: str = "duration") -> float:
    """``"90"``, ``"90s"``, ``"15m"``, ``"24h"``, ``"7d"`` → seconds."""
    if isinstance(text, int | float):
        return float(text)
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"{name}: {text!r} is not a duration (examples: 30s, 15m, 24h, 7d)")
    return float(match.group(1)) * _DURATION_UNITS_S[match.group(2)]


def parse_size(text: str | int, name: str = "size") -> int:
    """``"25MB"``, ``"25MiB"``, ``"1024"`` → bytes (MB = 1,000,000 bytes; MiB = 1,048,576)."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"{name}: {text!r} is not a size (examples: 26214400, 25MiB, 512KB)")
    unit = (match.group(2) or "").lower().removesuffix("b")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


@dataclass(frozen=True)
class Watchlist:
    """The repositories a server accepts webhooks for: numeric ids, ``owner/name``, or every one (``*``)."""

    ids: frozenset[str] = frozenset()
    names: frozenset[str] = frozenset()
    everything: bool = False

    @classmethod
    def parse(cls, text: str) -> Watchlist:
        ids: set[str] = set()
        names: set[str] = set()
        everything = False
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            if item == "*":
                everything = True
            elif item.isdigit():
                ids.add(item)
            elif re.fullmatch(r"[\w.-]+/[\w.-]+", item):
                names.add(item.lower())
            else:
                raise ConfigError(
                    f"repositories: {item!r} is neither a GitHub repository id (digits) nor owner/name nor *"
                )
        return cls(frozenset(ids), frozenset(names), everything)

    def watches_id(self, repository_id: str) -> bool:
        return self.everything or repository_id in self.ids

    def watches(self, repository_id: str, full_name: str = "") -> bool:
        return self.watches_id(repository_id) or (bool(full_name) and full_name.lower() in self.names)

    def entries(self) -> list[str]:
        return ["*"] if self.everything else sorted(self.ids) + sorted(self.names)

    def __str__(self) -> str:
        return ",".join(self.entries()) or "(none)"


@dataclass(frozen=True)
class StoreConfig:
    """Where events are kept, from a URL: ``memory://`` or ``sqlite:///path`` (``sqlite:////abs/path``)."""

    scheme: StoreScheme
    path: str = ""

    @classmethod
    def from_url(cls, url: str) -> StoreConfig:
        parts = urlsplit(url)
        if parts.scheme == "memory":
            return cls("memory")
        if parts.scheme == "sqlite":
            path = url[len("sqlite://") :]
            path = path[1:] if path.startswith("/") else path
            if not path:
                raise ConfigError(f"store: {url!r} names no file; use sqlite:///relative.db or sqlite:////abs/path.db")
            return cls("sqlite", path)
        raise ConfigError(f"store: {url!r} has an unknown scheme; use memory:// or sqlite:///PATH")

    def __str__(self) -> str:
        return "memory://" if self.scheme == "memory" else f"sqlite:///{self.path}"


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``gitstafette server`` needs."""

    repositories: Watchlist = field(default_factory=lambda: Watchlist(everything=True))
    host: str = "0.0.0.0"
    http_port: int = constants.DEFAULT_HTTP_PORT
    grpc_port: int = constants.DEFAULT_GRPC_PORT
    store: StoreConfig = field(default_factory=lambda: StoreConfig("sqlite", constants.DEFAULT_SQLITE_PATH))
    retention_s: float = constants.DEFAULT_RETENTION_S
    max_event_age_s: float = constants.DEFAULT_MAX_EVENT_AGE_S
    max_body_bytes: int = constants.DEFAULT_MAX_BODY_BYTES
    heartbeat_s: float = constants.DEFAULT_HEARTBEAT_S
    shutdown_grace_s: float = constants.DEFAULT_SHUTDOWN_GRACE_S
    server_id: str = field(default_factory=socket.gethostname)

    @property
    def grpc_max_message_bytes(self) -> int:
        return self.max_body_bytes + constants.GRPC_MESSAGE_OVERHEAD_BYTES

    def __post_init__(self) -> None:
        for name in ("http_port", "grpc_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name.replace('_', '-')}: {port} is not a TCP port (0-65535)")
        if self.max_body_bytes <= 0:
            raise ConfigError("max-body-size must be positive")
        if self.retention_s < 0 or self.max_event_age_s < self.retention_s:
            raise ConfigError("retention must be >= 0 and max-event-age >= retention")
