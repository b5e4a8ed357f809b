"""``gitstafette server`` with a store that flips one byte of every event body it hands out: a relay that
alters events between GitHub and the client.

    python tests/security/tampering_server.py server [the options of gitstafette server]

Webhooks are checked and stored as they came; every read (the streams, the REST API) gets the body with
its middle byte changed. A client that holds the webhook secret must refuse each such event.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from gitstafette import cli
from gitstafette.model import WebhookEvent
from gitstafette.server import server as server_module
from gitstafette.store import MemoryStore


def flip_a_byte(event: WebhookEvent) -> WebhookEvent:
    body = bytearray(event.body)
    body[len(body) // 2] ^= 0x01
    return replace(event, body=bytes(body))


class TamperingStore(MemoryStore):
    """A memory store whose reads return every event with one body byte flipped."""

    async def read_after(self, repository_id: str, after_sequence: int, limit: int = 100) -> list[WebhookEvent]:
        return [flip_a_byte(event) for event in await super().read_after(repository_id, after_sequence, limit)]


if __name__ == "__main__":
    # gitstafette's own server, with its own options, built on this store whatever --store says.
    server_module.create_store = lambda config: TamperingStore()  # type: ignore[assignment]
    sys.argv[0] = "gitstafette"
    cli.main()
