"""An in-process store: fast, and gone when the process ends. For trying things out and for tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from gitstafette.model import AuditRecord, DeadLetter, RepositoryState, WebhookEvent
from gitstafette.store.base import AppendResult, EventStore, prunable

__all__ = ["MemoryStore"]


@dataclass
class _Repository:
    name: str = ""
    last_sequence: int = 0
    events: list[WebhookEvent] = field(default_factory=list)
    by_delivery: dict[str, int] = field(default_factory=dict)
    audit: list[AuditRecord] = field(default_factory=list)


class MemoryStore(EventStore):
    url = "memory://"
    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._repositories: dict[str, _Repository] = {}
        self._cursors: dict[tuple[str, str], int] = {}
        self._dead_letters: list[DeadLetter] = []
        self._replays: dict[tuple[str, str], set[int]] = {}

    async def aclose(self) -> None:
        """Nothing to release."""

    async def append(self, event: WebhookEvent) -> AppendResult:
        repo = self._repositories.setdefault(event.repository_id, _Repository())
        if event.delivery_id in repo.by_delivery:
            sequence = repo.by_delivery[event.delivery_id]
            return AppendResult(event.with_sequence(sequence), created=False)
        repo.last_sequence += 1
        stored = event.with_sequence(repo.last_sequence)
        repo.events.append(stored)
        repo.by_delivery[event.delivery_id] = stored.sequence
        if event.repository_name:
            repo.name = event.repository_name
        self.committed.advance(event.repository_id, stored.sequence)
        return AppendResult(stored, created=True)

    async def read_after(self, repository_id: str, after_sequence: int, limit: int = 100) -> list[WebhookEvent]:
        repo = self._repositories.get(repository_id)
        if repo is None or not repo.events:
            return []
        # Sequences are dense from the first retained event on, so the position is arithmetic.
        start = max(0, after_sequence + 1 - repo.events[0].sequence)
        return repo.events[start : start + limit]

    async def get_cursor(self, client_id: str, repository_id: str) -> int | None:
        return self._cursors.get((client_id, repository_id))

    async def set_cursor(self, client_id: str, repository_id: str, sequence: int) -> None:
        key = (client_id, repository_id)
        self._cursors[key] = max(sequence, self._cursors.get(key, sequence))
        self._repositories.setdefault(repository_id, _Repository())

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        self._dead_letters.append(letter)

    async def dead_letters(self, repository_id: str | None = None) -> list[DeadLetter]:
        return [d for d in self._dead_letters if repository_id is None or d.repository_id == repository_id]

    async def add_replays(self, client_id: str, repository_id: str, sequences: list[int]) -> None:
        self._replays.setdefault((client_id, repository_id), set()).update(sequences)

    async def replays(self, client_id: str, repository_id: str) -> list[int]:
        return sorted(self._replays.get((client_id, repository_id), ()))

    async def settle_replay(self, client_id: str, repository_id: str, sequence: int, delivered: bool) -> None:
        self._replays.get((client_id, repository_id), set()).discard(sequence)
        if not delivered:
            return
        self._dead_letters = [
            d
            for d in self._dead_letters
            if (d.client_id, d.repository_id, d.sequence) != (client_id, repository_id, sequence)
        ]

    async def add_audit(self, records: Sequence[AuditRecord]) -> None:
        for record in records:
            repo = self._repositories.get(record.repository_id)
            if repo is not None:
                repo.audit.append(record)

    async def audit(self, repository_id: str, sequence: int | None = None) -> list[AuditRecord]:
        repo = self._repositories.get(repository_id)
        if repo is None:
            return []
        first = repo.events[0].sequence if repo.events else repo.last_sequence + 1
        return sorted(
            (r for r in repo.audit if r.sequence >= first and sequence in (None, r.sequence)),
            key=lambda r: r.sequence,
        )

    async def repositories(self) -> list[RepositoryState]:
        return [
            RepositoryState(
                repository_id=repository_id,
                repository_name=repo.name,
                event_count=len(repo.events),
                first_sequence=repo.events[0].sequence if repo.events else repo.last_sequence + 1,
                last_sequence=repo.last_sequence,
                cursors={client: seq for (client, rid), seq in self._cursors.items() if rid == repository_id},
            )
            for repository_id, repo in sorted(self._repositories.items())
        ]

    async def prune(self, now_ns: int, retention_s: float, max_age_s: float) -> int:
        pruned = 0
        for repository_id, repo in self._repositories.items():
            cursors = [seq for (_, rid), seq in self._cursors.items() if rid == repository_id]
            # Only a prefix may go, so that the retained sequences stay dense.
            drop = 0
            for event in repo.events:
                if not prunable(event.received_at_ns, event.sequence, cursors, now_ns, retention_s, max_age_s):
                    break
                drop += 1
            for event in repo.events[:drop]:
                del repo.by_delivery[event.delivery_id]
            if drop:
                last_dropped = repo.events[drop - 1].sequence
                repo.audit = [r for r in repo.audit if r.sequence > last_dropped]
            repo.events = repo.events[drop:]
            pruned += drop
        return pruned
