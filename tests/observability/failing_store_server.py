"""``gitstafette server`` with a store whose append fails with an unexpected exception (a bug, not a
``StoreError``): what Sentry must report once, as an error with its stack.

    python tests/observability/failing_store_server.py server [the options of gitstafette server]
"""

from __future__ import annotations

import sys

from gitstafette import cli
from gitstafette.model import WebhookEvent
from gitstafette.server import server as server_module
from gitstafette.store import AppendResult, MemoryStore

INDUCED = "induced by the test: append is broken"


class FailingStore(MemoryStore):
    async def append(self, event: WebhookEvent) -> AppendResult:
        raise RuntimeError(INDUCED)


if __name__ == "__main__":
    server_module.create_store = lambda config: FailingStore()  # type: ignore[assignment]
    sys.argv[0] = "gitstafette"
    cli.main()
