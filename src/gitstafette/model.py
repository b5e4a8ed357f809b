"""The event that travels through the relay, and its conversion to and from protobuf; the repositories a
server watches."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from gitstafette._proto import gitstafette_pb2 as pb
from gitstafette.constants import HEADER_DELIVERY, HEADER_EVENT, RELAYED_HEADER_PREFIXES, RELAYED_HEADERS
from gitstafette.exceptions import ConfigError

__all__ = [
    "AuditAction",
    "AuditRecord",
    "DeadLetter",
    "RepositoryState",
    "Watchlist",
    "WebhookEvent",
    "canonical_header_name",
    "event_from_pb",
    "event_to_pb",
    "relayed_headers",
]

_SPECIAL_WORDS = {"github": "GitHub", "id": "ID"}


def canonical_header_name(name: str) -> str:
    """``x-github-hook-installation-target-id`` → ``X-GitHub-Hook-Installation-Target-ID`` (GitHub's spelling)."""
    return "-".join(_SPECIAL_WORDS.get(part, part.capitalize()) for part in name.lower().split("-"))


#: header name as received → its GitHub spelling when it is relayed, None when it is not; bounded, so that
#: senders making up names cannot grow it without end (past the bound, names are worked out each time)
_RELAYED_NAMES: dict[str, str | None] = {}
_RELAYED_NAMES_MAX = 1024


def _relayed_name(name: str) -> str | None:
    lower = name.lower()
    relayed = lower in RELAYED_HEADERS or lower.startswith(RELAYED_HEADER_PREFIXES)
    canonical = canonical_header_name(lower) if relayed else None
    if len(_RELAYED_NAMES) < _RELAYED_NAMES_MAX:
        _RELAYED_NAMES[name] = canonical
    return canonical


def relayed_headers(items: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The headers of a webhook request that are stored and relayed, in GitHub's spelling and order.

    Only GitHub's own headers, the signatures, ``Content-Type`` and ``User-Agent`` travel: never
    ``Authorization``, cookies or proxy headers.
    """
    known = _RELAYED_NAMES
    kept: list[tuple[str, str]] = []
    for name, value in items:
        canonical = known[name] if name in known else _relayed_name(name)
        if canonical is not None:
            kept.append((canonical, value))
    return tuple(kept)


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One GitHub delivery for one repository.

    :param repository_id: GitHub's numeric repository id, as a string.
    :param delivery_id: ``X-GitHub-Delivery``; unique per repository.
    :param sequence: position in the repository's stream, assigned by the store (0 until stored).
    """

    repository_id: str
    delivery_id: str
    event_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    received_at_ns: int
    repository_name: str = ""
    sequence: int = 0
    #: W3C trace context (traceparent, …) of the span that ingested it, while tracing is on; kept by the
    #: store in memory only (an event read back from disk starts a trace of its own when it is streamed)
    trace_context: tuple[tuple[str, str], ...] = ()

    def with_sequence(self, sequence: int) -> WebhookEvent:
        return replace(self, sequence=sequence)

    def header(self, name: str) -> str | None:
        lower = name.lower()
        for key, value in self.headers:
            if key.lower() == lower:
                return value
        return None

    def __repr__(self) -> str:
        return (
            f"WebhookEvent(repository_id={self.repository_id!r}, delivery_id={self.delivery_id!r}, "
            f"event_type={self.event_type!r}, sequence={self.sequence}, body_bytes={len(self.body)})"
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a client could not deliver and gave up on."""

    client_id: str
    repository_id: str
    sequence: int
    delivery_id: str
    reason: str
    status_code: int
    failed_at_ns: int


#: sent: the event went out on a client's stream; acknowledged: the client delivered it; failed: the
#: client gave up on it (a dead letter)
AuditAction = Literal["sent", "acknowledged", "failed"]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """Which client id was sent, or settled, which event, and when."""

    client_id: str
    repository_id: str
    sequence: int
    action: AuditAction
    at_ns: int


@dataclass(frozen=True, slots=True)
class RepositoryState:
    """What the store holds for one repository."""

    repository_id: str
    repository_name: str
    event_count: int
    first_sequence: int
    last_sequence: int
    #: client id → highest acknowledged sequence
    cursors: Mapping[str, int] = field(default_factory=dict)


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


def event_to_pb(event: WebhookEvent) -> pb.WebhookEvent:
    return pb.WebhookEvent(
        event_id=event.delivery_id,
        body=event.body,
        headers=[pb.Header(name=name, values=value) for name, value in event.headers],
    )


def event_from_pb(message: pb.WebhookEvent, repository_id: str, received_at_ns: int) -> WebhookEvent:
    """An event pushed over gRPC (a chained server); its id is the delivery id."""
    headers = relayed_headers((header.name, header.values) for header in message.headers)
    event = WebhookEvent(
        repository_id=repository_id,
        delivery_id=message.event_id,
        event_type="",
        body=message.body,
        headers=headers,
        received_at_ns=received_at_ns,
    )
    delivery = event.header(HEADER_DELIVERY)
    return replace(event, delivery_id=message.event_id or delivery or "", event_type=event.header(HEADER_EVENT) or "")
