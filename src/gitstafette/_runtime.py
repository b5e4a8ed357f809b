"""How gitstafette's processes run: the asyncio event loop, the garbage collector's threshold, signal
handlers, and the backoff of loops that retry.

uvloop (libuv under asyncio's interface) comes with gitstafette through ``uvicorn[standard]``, whose own
default it is. Measured here (bench/README.md): a 7 KB POST with aiohttp, one at a time, 150 → 125 µs of
CPU; in the whole relay a few percent less CPU per event for the client and the server, within the
machine's noise for the server's ingest alone. gRPC's asyncio API runs on any loop that implements
asyncio's interface; the whole test suite passes on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import random
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

from gitstafette.exceptions import ConfigError

__all__ = [
    "EVENT_LOOPS",
    "GC_THRESHOLD",
    "Backoff",
    "Retrying",
    "event_loop_factory",
    "handling_signals",
    "hold_gc_threshold",
    "running_loop_name",
]


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


class _GcThresholdHolders:
    """Who holds the collector's first threshold at ``GC_THRESHOLD``. There is one collector per process, and
    a server and a client may share one (the demo, tests), each stopping when it will: the first holder
    raises the threshold, and only the last to let go puts back the thresholds the first found."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._before = gc.get_threshold()

    def hold(self) -> Callable[[], None]:
        with self._lock:
            if self._count == 0:
                self._before = gc.get_threshold()
                gc.set_threshold(GC_THRESHOLD, *self._before[1:])
            self._count += 1
        held = True

        def release() -> None:
            nonlocal held
            with self._lock:
                if not held:
                    return
                held = False
                self._count -= 1
                if self._count == 0:
                    gc.set_threshold(*self._before)

        return release


#: the process's, as the collector is
_gc_threshold_holders = _GcThresholdHolders()


def hold_gc_threshold() -> Callable[[], None]:
    """Hold the collector's first threshold at ``GC_THRESHOLD`` (see :class:`_GcThresholdHolders`); the function
    that lets go of it (more calls than one change nothing)."""
    return _gc_threshold_holders.hold()


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


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: attempt ``n`` (from 0) waits up to ``min(max_s, initial_s·2ⁿ)``.

    With ``jitter`` (full jitter) the wait is a random share of that bound, so that many clients that lost
    the same server or target do not come back in step; without, it is the bound itself.
    """

    initial_s: float
    max_s: float
    jitter: bool = True

    def bound_s(self, attempt: int) -> float:
        """The most attempt ``attempt`` may wait."""
        if attempt >= 64:  # 2**64 overflows nothing in Python, but the cap was reached long before
            return self.max_s
        return min(self.max_s, self.initial_s * math.pow(2, max(0, attempt)))

    def delay_s(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        return rng() * self.bound_s(attempt) if self.jitter else self.bound_s(attempt)

    def retrying(self) -> Retrying:
        """The state of one loop that retries under this backoff."""
        return Retrying(self)


class Retrying:
    """One loop's run of failures under a :class:`Backoff`: it says which failure starts a run and which
    success ends one (the two lines worth logging), and sleeps the pause after each failure.

    ::

        retrying = Backoff(0.1, 2.0, jitter=False).retrying()
        while running:
            try:
                await step()
            except StoreUnavailable as exc:
                if retrying.failed():
                    logger.warning("cannot …: %s; retrying", exc)
                await retrying.pause()
                continue
            if retrying.succeeded():
                logger.info("… answers again")

    :param sleep: what sleeps the pauses (asyncio's; a test's stand-in that records them).
    """

    __slots__ = ("_sleep", "backoff", "failures")

    def __init__(self, backoff: Backoff, sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        self.backoff = backoff
        #: failures in a row; 0 while things work
        self.failures = 0
        self._sleep = sleep

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def failed(self) -> bool:
        """Count a failure; True for the first of a run."""
        self.failures += 1
        return self.failures == 1

    def succeeded(self) -> bool:
        """Back to the shortest pause; True when this ends a run of failures."""
        ended, self.failures = self.failures > 0, 0
        return ended

    async def pause(self, at_most_s: float | None = None) -> None:
        """Sleep the pause after the latest failure (at most ``at_most_s``, e.g. until a deadline)."""
        delay_s = self.backoff.delay_s(max(0, self.failures - 1))
        await self._sleep(delay_s if at_most_s is None else max(0.0, min(delay_s, at_most_s)))
