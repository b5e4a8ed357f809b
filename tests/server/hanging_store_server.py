"""``gitstafette server`` with a store whose close never returns: what a shutdown must still end, within
the grace, with the step that ran out of time named in the log.

    HANGING_STORE=cancellable|ignores-cancellation|blocked-thread \\
        python tests/server/hanging_store_server.py server [the options of gitstafette server]

- ``cancellable``: ``aclose`` waits for something that never comes (a connection that never answers);
- ``ignores-cancellation``: ``aclose`` catches its cancellation and waits again (a shielded write);
- ``blocked-thread``: ``aclose`` waits on a thread that never returns (a driver stuck in a system call).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading

from gitstafette import cli
from gitstafette.server import server as server_module
from gitstafette.store import MemoryStore


class HangingStore(MemoryStore):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    async def aclose(self) -> None:
        if self.mode == "blocked-thread":
            await asyncio.to_thread(threading.Event().wait)
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if self.mode == "cancellable":
                    raise


if __name__ == "__main__":
    mode = os.environ["HANGING_STORE"]
    server_module.create_store = lambda config: HangingStore(mode)  # type: ignore[assignment]
    sys.argv[0] = "gitstafette"
    cli.main()
