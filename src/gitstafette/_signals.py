"""Signal handling for the long-running commands: handlers on the running loop, put back afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator, Mapping
from types import FrameType
from typing import Any

__all__ = ["handling_signals"]

#: What ``signal.getsignal`` returns: a Python handler, SIG_DFL or SIG_IGN, or None (one not set from Python).
_Handler = Callable[[int, FrameType | None], Any] | int | None


@contextlib.contextmanager
def handling_signals(handlers: Mapping[int, Callable[[], None]]) -> Iterator[None]:
    """Run ``handlers[sig]`` on the event loop when ``sig`` arrives, for the duration of the block; on the
    way out each signal gets back the handler it had before (as uvicorn's ``capture_signals()`` does).

    The loop's own ``remove_signal_handler`` would leave ``SIG_DFL`` (``default_int_handler`` for SIGINT)
    instead: whatever embedded the server, a test runner or another tool's handler, would lose its own.
    """
    loop = asyncio.get_running_loop()
    previous: dict[int, _Handler] = {}
    try:
        for sig, handler in handlers.items():
            previous[sig] = signal.getsignal(sig)
            loop.add_signal_handler(sig, handler)
        yield
    finally:
        for sig, before in previous.items():
            loop.remove_signal_handler(sig)
            # None: the handler was not set from Python (the interpreter cannot tell it); the loop's default stays.
            if before is not None:
                signal.signal(sig, before)
