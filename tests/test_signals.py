"""handling_signals: the loop runs our handlers for the duration of the block, and each signal gets back the
handler it had before (not SIG_DFL), on asyncio's loop and on uvloop alike."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Coroutine, Iterator
from types import FrameType
from typing import Any

import pytest

from gitstafette._runtime import event_loop_factory, handling_signals

LOOPS = ["asyncio", "uvloop"]


@pytest.fixture
def restored() -> Iterator[None]:
    """Whatever a test does to SIGTERM and SIGINT, the process gets its own handlers back afterwards."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _run(loop: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=event_loop_factory(loop)) as runner:
        runner.run(main())


@pytest.mark.parametrize("loop", LOOPS)
def test_the_previous_handlers_are_put_back_and_ours_ran_in_between(loop: str, restored: None) -> None:
    outside: list[int] = []

    def previous(sig: int, frame: FrameType | None) -> None:
        outside.append(sig)

    signal.signal(signal.SIGTERM, previous)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inside: list[str] = []

    async def main() -> None:
        got = asyncio.Event()

        def on_term() -> None:
            inside.append("term")
            got.set()

        with handling_signals({signal.SIGTERM: on_term, signal.SIGINT: lambda: inside.append("int")}):
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(got.wait(), 10)

    _run(loop, main)

    assert inside == ["term"]
    assert outside == []  # the loop's handler took it, not the one from before
    assert signal.getsignal(signal.SIGTERM) is previous
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    # And the one put back is the one that runs.
    os.kill(os.getpid(), signal.SIGTERM)
    assert outside == [signal.SIGTERM]


@pytest.mark.parametrize("loop", LOOPS)
def test_python_s_own_sigint_handler_comes_back(loop: str, restored: None) -> None:
    # What the loops put back on their own, too: Ctrl-C after the block still raises KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    async def main() -> None:
        with handling_signals({signal.SIGINT: lambda: None}):
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler

    _run(loop, main)

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("loop", LOOPS)
def test_the_handlers_are_put_back_when_the_block_fails(loop: str, restored: None) -> None:
    def previous(sig: int, frame: FrameType | None) -> None:
        pass

    signal.signal(signal.SIGTERM, previous)

    async def main() -> None:
        with handling_signals({signal.SIGTERM: lambda: None}):
            raise RuntimeError("the block failed")

    with pytest.raises(RuntimeError, match="the block failed"):
        _run(loop, main)

    assert signal.getsignal(signal.SIGTERM) is previous
