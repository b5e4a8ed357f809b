"""Where events are kept: store URLs (``memory://``, ``sqlite:///…``, ``redis://…``, Redis Sentinel) parsed
into :class:`StoreConfig` and :class:`RedisSettings`. A password never shows in an error message or a ``str``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

from gitstafette import constants
from gitstafette.config.units import parse_duration
from gitstafette.exceptions import ConfigError
from gitstafette.security.secret import Secret

__all__ = ["RedisSettings", "StoreConfig"]


StoreScheme = Literal["memory", "sqlite", "redis"]

#: Every store URL scheme, the backend it picks and the form of its URL: the one list that parsing and
#: the error messages both read, so that a scheme added here is also offered when a URL is refused.
_STORE_URLS: dict[str, tuple[StoreScheme, str]] = {
    "memory": ("memory", "memory://"),
    "sqlite": ("sqlite", "sqlite:///PATH"),
    "redis": ("redis", "redis://HOST:PORT/DB"),
    "rediss": ("redis", "rediss://HOST:PORT/DB"),
    "redis+sentinel": ("redis", "redis+sentinel://SENTINEL:PORT/MASTER/DB"),
    "rediss+sentinel": ("redis", "rediss+sentinel://SENTINEL:PORT/MASTER/DB"),
}
_REDIS_SCHEMES = tuple(scheme for scheme, (backend, _) in _STORE_URLS.items() if backend == "redis")


def _url_forms(schemes: tuple[str, ...] | None = None) -> str:
    """``memory://, sqlite:///PATH, … or rediss+sentinel://…``: the URL forms of ``schemes`` (default: all)."""
    forms = [form for scheme, (_, form) in _STORE_URLS.items() if schemes is None or scheme in schemes]
    return ", ".join(forms[:-1]) + " or " + forms[-1]


_REDIS_PREFIX = re.compile(r"^[A-Za-z0-9_.-]+$")


def _hosts(netloc: str) -> list[str]:
    """``user:pw@h1:1,h2:2`` → ``["h1:1", "h2:2"]``."""
    return [h for h in netloc.rpartition("@")[2].split(",") if h]


def _host_port(text: str, default_port: int, masked_url: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` → (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = text.partition(":")
    if not host or (port_text and not port_text.isdigit()) or not 0 < int(port_text or default_port) < 65536:
        raise ConfigError(f"store: {masked_url!r}: {text!r} is not host:port")
    return host, int(port_text or default_port)


def _masked_url(url: str) -> str:
    """``url`` with its password (if any) replaced: store URLs end up in error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:**********@{host}").geturl()


@dataclass(frozen=True)
class RedisSettings:
    """A Redis server, from ``redis://[[user]:password@]host[:port][/db][?prefix=NAME]`` (``rediss://``: TLS), or
    the master Redis Sentinel names: ``redis+sentinel://[[user]:password@]sentinel[:port][,sentinel…]/master[/db]``
    (the credentials are the master's; the sentinels are asked without; the default port 26379).

    :param prefix: the first part of every key (``prefix:…``), so that several installations can share one
        Redis database; the replicas of one installation must use the same prefix.
    :param lease_ttl_ms: ``?lease_ttl=5s``: how long the repositories a replica serves to a client id stay
        its own without renewal, so how long they wait for another replica when it dies (shorter: faster
        takeover, but a replica that stalls this long loses them).

    Cluster is not supported.
    """

    host: str = "localhost"
    port: int = constants.DEFAULT_REDIS_PORT
    database: int = 0
    username: str | None = None
    password: Secret | None = None
    tls: bool = False
    prefix: str = constants.DEFAULT_REDIS_PREFIX
    lease_ttl_ms: int = constants.DEFAULT_REDIS_LEASE_TTL_MS
    #: Sentinel: (host, port) of each sentinel, which say where the master of ``service_name`` is
    sentinels: tuple[tuple[str, int], ...] = ()
    service_name: str = ""

    @classmethod
    def from_url(cls, url: str) -> RedisSettings:
        masked = _masked_url(url)
        parts = urlsplit(url)
        sentinel = parts.scheme.endswith("+sentinel")
        if parts.scheme not in _REDIS_SCHEMES:
            raise ConfigError(f"store: {masked!r} is not a Redis URL; use {_url_forms(_REDIS_SCHEMES)}")
        sentinels: tuple[tuple[str, int], ...] = ()
        service_name, path = "", parts.path.strip("/")
        if sentinel:
            sentinels = tuple(_host_port(h, constants.DEFAULT_SENTINEL_PORT, masked) for h in _hosts(parts.netloc))
            service_name, _, path = path.partition("/")
            if not sentinels or not service_name:
                raise ConfigError(
                    f"store: {masked!r}: name the sentinels and the master, e.g. "
                    "redis+sentinel://sentinel-1:26379,sentinel-2:26379/mymaster/0"
                )
            host, port = sentinels[0]
        else:
            try:
                host, port = parts.hostname or "localhost", parts.port or constants.DEFAULT_REDIS_PORT
            except ValueError as exc:
                raise ConfigError(f"store: {masked!r} has an invalid port") from exc
        if path and not path.isdigit():
            raise ConfigError(f"store: {masked!r}: the path is the database number, e.g. redis://localhost:6379/0")
        options = parse_qs(parts.query, keep_blank_values=True)
        prefix = options.pop("prefix", [constants.DEFAULT_REDIS_PREFIX])[-1]
        lease_ttl = options.pop("lease_ttl", [f"{constants.DEFAULT_REDIS_LEASE_TTL_MS}ms"])[-1]
        if options:
            raise ConfigError(
                f"store: {masked!r}: the only options of a Redis store are ?prefix=NAME and &lease_ttl=DURATION"
            )
        if not _REDIS_PREFIX.match(prefix):
            raise ConfigError(f"store: {masked!r}: the prefix must be letters, digits, '_', '.' or '-'")
        lease_ttl_ms = round(parse_duration(lease_ttl, f"store: {masked!r}: lease_ttl") * 1000)
        if lease_ttl_ms < constants.MIN_REDIS_LEASE_TTL_MS:
            raise ConfigError(
                f"store: {masked!r}: lease_ttl must be at least {constants.MIN_REDIS_LEASE_TTL_MS} ms "
                "(it is renewed every third of it)"
            )
        return cls(
            host=host,
            port=port,
            database=int(path or 0),
            username=unquote(parts.username) if parts.username else None,
            password=Secret.optional(unquote(parts.password)) if parts.password else None,
            tls=parts.scheme.startswith("rediss"),
            prefix=prefix,
            lease_ttl_ms=lease_ttl_ms,
            sentinels=sentinels,
            service_name=service_name,
        )

    def __str__(self) -> str:
        """The URL, with the password masked."""
        credentials = ""
        if self.username or self.password:
            credentials = quote(self.username or "", safe="") + (":**********" if self.password else "") + "@"
        hosts = ",".join(
            f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels or [(self.host, self.port)]
        )
        options = {}
        if self.prefix != constants.DEFAULT_REDIS_PREFIX:
            options["prefix"] = self.prefix
        if self.lease_ttl_ms != constants.DEFAULT_REDIS_LEASE_TTL_MS:
            options["lease_ttl"] = f"{self.lease_ttl_ms}ms"
        query = "?" + "&".join(f"{k}={v}" for k, v in options.items()) if options else ""
        scheme = ("rediss" if self.tls else "redis") + ("+sentinel" if self.sentinels else "")
        service = f"/{self.service_name}" if self.sentinels else ""
        return f"{scheme}://{credentials}{hosts}{service}/{self.database}{query}"

    def __repr__(self) -> str:
        return f"RedisSettings({str(self)!r})"


@dataclass(frozen=True)
class StoreConfig:
    """Where events are kept, from a URL: ``memory://``, ``sqlite:///path`` (``sqlite:////abs/path``) or
    ``redis://host:port/db`` (see :class:`RedisSettings`: several server replicas may share it).

    ``sqlite:///path?synchronous=normal`` trades the fsync of each commit for latency: a stored event then
    survives a crash of the process but not a power cut of the machine.
    """

    scheme: StoreScheme
    path: str = ""
    synchronous: Literal["full", "normal"] = "full"
    redis: RedisSettings | None = None

    @classmethod
    def from_url(cls, url: str) -> StoreConfig:
        parts = urlsplit(url)
        if parts.scheme == "memory":
            return cls("memory")
        if parts.scheme == "sqlite":
            path = parts.path[1:] if parts.path.startswith("/") else parts.path
            if parts.netloc or not path:
                raise ConfigError(f"store: {url!r} names no file; use sqlite:///relative.db or sqlite:////abs/path.db")
            options = parse_qs(parts.query)
            synchronous = options.pop("synchronous", ["full"])[-1].lower()
            if synchronous not in ("full", "normal") or options:
                raise ConfigError(f"store: {url!r}: the only option is ?synchronous=full (default) or normal")
            return cls("sqlite", path, "normal" if synchronous == "normal" else "full")
        if parts.scheme in _REDIS_SCHEMES:
            return cls("redis", redis=RedisSettings.from_url(url))
        raise ConfigError(f"store: {_masked_url(url)!r} has an unknown scheme; use {_url_forms()}")

    def __str__(self) -> str:
        if self.scheme == "memory":
            return "memory://"
        if self.scheme == "redis":
            return str(self.redis)
        return f"sqlite:///{self.path}" + ("?synchronous=normal" if self.synchronous == "normal" else "")
