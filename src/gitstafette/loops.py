"""How the server and the client run: on which asyncio event loop, and with which garbage collector threshold.

uvloop (libuv under asyncio's interface) comes with gitstafette through ``uvicorn[standard]``, whose own
default it is. Measured here (bench/README.md): a 7 KB POST with aiohttp, one at a time, 150 → 125 µs of
CPU; in the whole relay a few percent less CPU per event for the client and the server, within the
machine's noise for the server's ingest alone. gRPC's asyncio API runs on any loop that implements
asyncio's interface; the whole test suite passes on both.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable

from gitstafette.exceptions import ConfigError

__all__ = ["EVENT_LOOPS", "GC_THRESHOLD", "event_loop_factory", "raise_gc_threshold", "running_loop_name"]

EVENT_LOOPS = ("auto", "uvloop", "asyncio")
#: The garbage collector's first threshold while the server or the client runs (Python's default: 700
#: allocations). Each event leaves much that lives for a moment (messages, requests, acknowledgements, audit
#: records): at 700 a fan-out to 1,000 streams made about 16 collections per event, some of the whole heap,
#: ~18 % of the server's CPU (bench/streams.py); the client delivers 3-5 % more per second with one
#: repository (bench/relay.py). Objects that do not form cycles are freed at once whatever the threshold.
GC_THRESHOLD = 20_000


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The ``loop_factory`` for :class:`asyncio.Runner`: None means asyncio's own loop.

    ``auto`` takes uvloop when it can be imported; ``uvloop`` insists on it.
    """
    choice = name.strip().lower()
    if choice not in EVENT_LOOPS:
        raise ConfigError(f"--event-loop: {name!r} is not one of {', '.join(EVENT_LOOPS)}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError as exc:
        if choice == "auto":
            return None
        raise ConfigError(f"--event-loop uvloop: uvloop cannot be imported ({exc}); pip install uvloop") from exc
    return uvloop.new_event_loop


def running_loop_name() -> str:
    """``uvloop`` or ``asyncio``: what the running loop is, for the startup line."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"


def raise_gc_threshold() -> tuple[int, int, int]:
    """Raise the collector's first threshold to ``GC_THRESHOLD``; the thresholds before, to put back."""
    before = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, *before[1:])
    return before
