"""The Redis store's appends, sent in batches: one pipeline for the webhooks that arrive together."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from gitstafette import constants
from gitstafette.exceptions import StoreUnavailable
from gitstafette.store.redis.connection import RedisConnections
from gitstafette.store.redis.scripts import APPEND

__all__ = ["AppendBatcher"]


class AppendBatcher:
    """Appends that arrive while a batch is on its way to Redis go out together, as one pipeline of EVALSHAs:
    one write and one read for many webhooks (and, with ``appendfsync always``, one fsync in Redis) instead of
    a pooled connection and a round trip each. Every caller still waits for its own script's answer, so a 201
    is never sent before Redis stored that event; one webhook alone goes out at once, as before.

    :param connections: the store's clients (appends go through the quick one).
    :param script: the append script (``scripts.APPEND``), registered.
    """

    def __init__(self, connections: RedisConnections, script: AsyncScript) -> None:
        self._connections = connections
        self._script = script
        #: (keys, args, body bytes, the caller's future)
        self._queue: deque[tuple[list[str], list[Any], int, asyncio.Future[Any]]] = deque()
        self._sending: asyncio.Task[None] | None = None

    async def append(self, keys: list[str], args: list[Any], size: int) -> Any:
        """Run the append script with ``keys`` and ``args`` (its body ``size`` bytes) in the next batch."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((keys, args, size, future))
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._send(), name="redis appends")
        return await future

    async def aclose(self) -> None:
        sending, self._sending = self._sending, None
        if sending is not None and not sending.done():
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending

    async def _send(self) -> None:
        while self._queue:
            batch = [self._queue.popleft()]
            size = batch[0][2]
            while (
                self._queue and len(batch) < constants.REDIS_APPEND_BATCH and size < constants.REDIS_APPEND_BATCH_BYTES
            ):
                batch.append(self._queue.popleft())
                size += batch[-1][2]
            try:
                answers = await self._execute([(keys, args) for keys, args, _, _ in batch])
            except Exception as exc:
                answers = [exc] * len(batch)
            except asyncio.CancelledError as exc:  # the store closes: nobody is left waiting
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(StoreUnavailable(f"Redis store {self._connections.url} closed"))
                raise exc
            for (*_, future), answer in zip(batch, answers, strict=True):
                if future.done():  # the caller went away (its client disconnected)
                    continue
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)

    async def _execute(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        client = self._connections.client_or_raise(quick=True)
        answers: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        for attempt in range(2):
            async with client.pipeline(transaction=False) as pipe:
                for i in pending:
                    keys, args = calls[i]
                    pipe.evalsha(self._script.sha, len(keys), *keys, *args)
                results = await pipe.execute(raise_on_error=False)
            for i, result in zip(pending, results, strict=True):
                answers[i] = result
            # Redis restarted without its scripts: load it once, and run again only what did not run.
            pending = [i for i in pending if isinstance(answers[i], NoScriptError)]
            if not pending or attempt:
                return answers
            await client.script_load(APPEND)
        return answers
