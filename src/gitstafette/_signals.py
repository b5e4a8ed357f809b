"""Signal handling for the long-running commands: handlers on the running loop, put back afterwards."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping

__all__ = ["handling_signals"]


@contextlib.contextmanager
def handling_signals(handlers: Mapping[int, Callable[[], None]]) -> Iterator[None]:
    """Run ``handlers[sig]`` on the event loop when ``sig`` arrives, for the duration of the block."""
    loop = asyncio.get_running_loop()
    for sig, handler in handlers.items():
        loop.add_signal_handler(sig, handler)
    try:
        yield
    finally:
        for sig in handlers:
            loop.remove_signal_handler(sig)
