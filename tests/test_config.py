from __future__ import annotations

import subprocess
import sys

import pytest

from gitstafette import constants
from gitstafette.config import (
    RedisSettings,
    ServerConfig,
    StoreConfig,
    parse_duration,
    parse_size,
)
from gitstafette.exceptions import ConfigError, GitstafetteError
from gitstafette.model import Watchlist
from gitstafette.security.secret import Secret


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("250ms", 0.25),
        ("15m", 900),
        ("1.5h", 5400),
        ("24h", 86400),
        ("7d", 7 * 86400),
        ("2w", 14 * 86400),
        (" 30 s ", 30),
        ("0", 0),
        (45, 45),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "abc", "10x", "-5s", "5 minutes", "1h30m", "1e3"])
def test_parse_duration_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ConfigError, match="retention"):
        parse_duration(text, "retention")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1024", 1024),
        ("10b", 10),
        ("512KB", 512_000),
        ("1k", 1000),
        ("1KiB", 1024),
        ("1ki", 1024),
        ("25MB", 25_000_000),
        ("25MiB", 26_214_400),
        ("25mib", 26_214_400),
        ("0.5MiB", 524_288),
        ("2GiB", 2 * 1024**3),
        ("1G", 10**9),
        (" 64 KiB ", 65_536),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "abc", "-1", "25TB", "25 MiBs", "1,000"])
def test_parse_size_refuses_what_is_not_a_size(text: str) -> None:
    with pytest.raises(ConfigError, match="max-body-size"):
        parse_size(text, "max-body-size")


def test_watchlist_parses_ids_names_and_everything() -> None:
    watchlist = Watchlist.parse(" 537845873 , Codertocat/Hello-World,,my.org/my-repo_2 ")
    assert watchlist.ids == {"537845873"}
    assert watchlist.names == {"codertocat/hello-world", "my.org/my-repo_2"}
    assert not watchlist.everything
    assert watchlist.entries() == ["537845873", "codertocat/hello-world", "my.org/my-repo_2"]

    assert watchlist.watches("537845873")
    assert watchlist.watches_id("537845873")
    assert not watchlist.watches("186853002")
    # owner/name matches whatever the id, ignoring case; an id-only check does not look at names.
    assert watchlist.watches("186853002", "codertocat/HELLO-world")
    assert not watchlist.watches_id("186853002")
    assert not watchlist.watches("186853002", "Codertocat/Hello-World-2")
    assert not watchlist.watches("186853002", "Octocoders/Hello-World")


def test_watchlist_star_watches_every_repository() -> None:
    watchlist = Watchlist.parse("*")
    assert watchlist.everything
    assert watchlist.watches("1") and watchlist.watches_id("186853002")
    assert watchlist.entries() == ["*"]
    assert str(watchlist) == "*"
    assert ServerConfig().repositories.everything  # the default


def test_empty_watchlist_watches_nothing() -> None:
    watchlist = Watchlist.parse(" , ")
    assert not watchlist.watches("186853002", "Codertocat/Hello-World")
    assert watchlist.entries() == []
    assert str(watchlist) == "(none)"


@pytest.mark.parametrize("item", ["Hello-World", "a/b/c", "-1", "https://github.com/a/b", "owner/", "12 34"])
def test_watchlist_refuses_what_is_not_a_repository(item: str) -> None:
    with pytest.raises(ConfigError, match="repositories") as caught:
        Watchlist.parse(f"537845873,{item}")
    assert repr(item) in str(caught.value)


@pytest.mark.parametrize(
    ("url", "scheme", "path"),
    [
        ("memory://", "memory", ""),
        ("sqlite:///events.db", "sqlite", "events.db"),
        ("sqlite:///data/events.db", "sqlite", "data/events.db"),
        ("sqlite:////var/lib/gitstafette/events.db", "sqlite", "/var/lib/gitstafette/events.db"),
    ],
)
def test_store_config_from_url(url: str, scheme: str, path: str) -> None:
    config = StoreConfig.from_url(url)
    assert (config.scheme, config.path) == (scheme, path)
    assert str(config) == url
    assert StoreConfig.from_url(str(config)) == config


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "events.db", "postgres://db/events", "", "file:///x.db"])
def test_store_config_refuses_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError, match="store"):
        StoreConfig.from_url(url)


#: every scheme a store URL may have (a new one goes here and into config/store.py's one list)
STORE_SCHEMES = ("memory", "sqlite", "redis", "rediss", "redis+sentinel", "rediss+sentinel")


def test_an_unknown_store_scheme_is_refused_with_every_supported_one_listed() -> None:
    with pytest.raises(ConfigError) as caught:
        StoreConfig.from_url("postgres://db/events")
    message = str(caught.value)
    assert "'postgres://db/events' has an unknown scheme" in message
    for scheme in STORE_SCHEMES:
        assert f" {scheme}://" in message, (scheme, message)


@pytest.mark.parametrize(
    "url",
    ["memory://", "sqlite:///x.db", "redis://h/0", "rediss://h/0", "redis+sentinel://s/m/0", "rediss+sentinel://s/m/0"],
)
def test_every_listed_store_scheme_is_accepted(url: str) -> None:
    assert StoreConfig.from_url(url).scheme in ("memory", "sqlite", "redis")
    assert url.partition("://")[0] in STORE_SCHEMES


def test_server_config_defaults_run() -> None:
    config = ServerConfig()
    assert (config.http_port, config.grpc_port) == (1323, 50051)
    assert config.store == StoreConfig("sqlite", constants.DEFAULT_SQLITE_PATH)
    assert config.max_body_bytes == 25 * 1024 * 1024
    assert config.max_event_age_s >= config.retention_s > 0
    # A gRPC message must carry the largest body accepted, plus its headers.
    assert config.grpc_max_message_bytes > config.max_body_bytes


def test_server_config_accepts_port_zero_and_equal_retention_and_max_age() -> None:
    config = ServerConfig(http_port=0, grpc_port=0, retention_s=60, max_event_age_s=60, max_body_bytes=1)
    assert (config.http_port, config.grpc_port) == (0, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"http_port": 65536}, "http-port"),
        ({"http_port": -1}, "http-port"),
        ({"grpc_port": 70000}, "grpc-port"),
        ({"max_body_bytes": 0}, "max-body-size"),
        ({"max_body_bytes": -5}, "max-body-size"),
        ({"retention_s": -1}, "retention"),
        ({"retention_s": 3600, "max_event_age_s": 60}, "max-event-age"),
        ({"max_streams_per_client": -1}, "max-streams-per-client"),
        ({"request_timeout_s": 0}, "request-timeout"),
        ({"keep_alive_timeout_s": -1}, "keep-alive-timeout"),
        ({"heartbeat_s": 0}, "heartbeat"),
        ({"max_header_bytes": 100}, "max-header-size"),
    ],
)
def test_server_config_refuses_invalid_values(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServerConfig(**kwargs)  # type: ignore[arg-type]


def test_config_error_is_a_gitstafette_error() -> None:
    assert issubclass(ConfigError, GitstafetteError)


def test_sqlite_url_may_trade_the_fsync_for_latency() -> None:
    assert StoreConfig.from_url("sqlite:///a.db").synchronous == "full"
    relaxed = StoreConfig.from_url("sqlite:////var/lib/g.db?synchronous=normal")
    assert (relaxed.path, relaxed.synchronous) == ("/var/lib/g.db", "normal")
    assert str(relaxed) == "sqlite:////var/lib/g.db?synchronous=normal"
    with pytest.raises(ConfigError, match="synchronous"):
        StoreConfig.from_url("sqlite:///a.db?synchronous=off")
    with pytest.raises(ConfigError, match="synchronous"):
        StoreConfig.from_url("sqlite:///a.db?cache=shared")


# ---- Redis ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected", "text"),
    [
        ("redis://localhost", RedisSettings(), "redis://localhost:6379/0"),
        ("redis://127.0.0.1:6380/11", RedisSettings("127.0.0.1", 6380, 11), "redis://127.0.0.1:6380/11"),
        (
            "rediss://cache.example:6390/2?prefix=team-a",
            RedisSettings("cache.example", 6390, 2, tls=True, prefix="team-a"),
            "rediss://cache.example:6390/2?prefix=team-a",
        ),
        (
            "redis://h/4?lease_ttl=2s&prefix=p",
            RedisSettings("h", 6379, 4, prefix="p", lease_ttl_ms=2000),
            "redis://h:6379/4?prefix=p&lease_ttl=2000ms",
        ),
        (
            "redis+sentinel://:s3cr%40t@s1:26380,s2,[::1]:26381/mymaster/3?prefix=p",
            RedisSettings(
                "s1",
                26380,
                3,
                password=Secret("s3cr@t"),
                prefix="p",
                sentinels=(("s1", 26380), ("s2", 26379), ("::1", 26381)),
                service_name="mymaster",
            ),
            "redis+sentinel://:**********@s1:26380,s2:26379,[::1]:26381/mymaster/3?prefix=p",
        ),
        (
            "redis+sentinel://s1/mymaster",
            RedisSettings("s1", 26379, 0, sentinels=(("s1", 26379),), service_name="mymaster"),
            "redis+sentinel://s1:26379/mymaster/0",
        ),
        (
            "redis://:s3cr%40t@redis/3",
            RedisSettings("redis", 6379, 3, password=Secret("s3cr@t")),
            "redis://:**********@redis:6379/3",
        ),
        (
            "redis://relay:pw@[::1]:6379/",
            RedisSettings("::1", 6379, 0, username="relay", password=Secret("pw")),
            "redis://relay:**********@[::1]:6379/0",
        ),
    ],
)
def test_store_config_from_redis_url(url: str, expected: RedisSettings, text: str) -> None:
    config = StoreConfig.from_url(url)
    assert config == StoreConfig("redis", redis=expected)
    assert str(config) == text
    assert "s3cr" not in repr(config) and "pw" not in repr(config.redis)
    if expected.password is None:
        assert StoreConfig.from_url(str(config)) == config


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://h/abc", "database number"),
        ("redis://h:99999/0", "invalid port"),
        ("redis://h/0?prefix=", "prefix"),
        ("redis://h/0?prefix=a%20b", "prefix"),
        ("redis://h/0?prefix=a:b", "prefix"),
        ("redis://h/0?db=1", "only options"),
        ("redis://h/0?lease_ttl=soon", "not a duration"),
        ("redis://h/0?lease_ttl=100ms", "at least 300 ms"),
        ("redis+sentinel://h:26379/", "name the sentinels and the master"),
        ("redis+sentinel://h:port/mymaster", "not host:port"),
        ("redis+cluster://h:7000/0", "unknown scheme"),
    ],
)
def test_store_config_refuses_bad_redis_urls_without_showing_the_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        StoreConfig.from_url(url.replace("://", "://:secret@", 1) if "secret" not in url else url)
    assert "secret" not in str(caught.value)


def test_config_is_a_leaf() -> None:
    """Building a config runs nothing: config imports no server, client, store, telemetry or CLI code."""
    code = "import sys, gitstafette.config; print(*sorted(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    layers = {name.split(".")[1] for name in loaded if name.startswith("gitstafette.")}
    assert not layers & {"server", "client", "store", "telemetry", "cli"}, sorted(layers)
