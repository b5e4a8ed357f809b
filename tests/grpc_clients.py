"""In-test gRPC clients of the server, built on the generated code."""

from __future__ import annotations

import asyncio

import grpc

from gitstafette._proto import gitstafette_pb2 as pb
from gitstafette._proto import gitstafette_pb2_grpc as pb_grpc

OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.max_send_message_length", 64 * 1024 * 1024)]


def bearer(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """gRPC metadata carrying ``token`` as gitstafette's client sends it; None without a token."""
    return None if token is None else (("authorization", f"Bearer {token}"),)


class AckStream:
    """One connection of the acknowledged stream."""

    def __init__(
        self,
        target: str,
        client_id: str,
        repository_ids: list[str],
        token: str | None = None,
        accepts_batches: bool = False,
    ) -> None:
        self.channel = grpc.aio.insecure_channel(target, options=OPTIONS)
        self.call = pb_grpc.GitstafetteStub(self.channel).StreamWebhookEvents(metadata=bearer(token))
        self.client_id = client_id
        self.repository_ids = repository_ids
        self.assigned: list[str] = []
        self.accepts_batches = accepts_batches
        #: how many events each message that carried events had, in the order they came
        self.message_sizes: list[int] = []
        self._batched: list[pb.RelayedEvent] = []  # the rest of the last batch, not yet returned
        # Reads happen in one task: cancelling a pending read would cancel the whole call.
        self.responses: asyncio.Queue[pb.StreamResponse | BaseException | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AckStream:
        await self.call.write(
            pb.StreamRequest(
                subscribe=pb.Subscribe(
                    client_id=self.client_id, repository_ids=self.repository_ids, accepts_batches=self.accepts_batches
                )
            )
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for response in self.call:
                self.responses.put_nowait(response)
            self.responses.put_nowait(None)
        except grpc.aio.AioRpcError as exc:
            self.responses.put_nowait(exc)
        except asyncio.CancelledError:
            self.responses.put_nowait(None)

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self.call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.channel.close()

    async def next_event(self, timeout: float = 10) -> pb.RelayedEvent | None:
        """The next event, or None when nothing came within ``timeout``."""
        if self._batched:
            return self._batched.pop(0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                response = await asyncio.wait_for(self.responses.get(), remaining)
            except TimeoutError:
                return None
            if response is None:
                return None
            if isinstance(response, BaseException):
                raise response
            kind = response.WhichOneof("kind")
            if kind == "event":
                self.message_sizes.append(1)
                return response.event
            if kind == "events":
                self.message_sizes.append(len(response.events.events))
                first, *self._batched = response.events.events
                return first
            if kind == "subscribed":
                self.assigned = list(response.subscribed.repository_ids)

    async def receive_and_ack(self, count: int, timeout: float = 10) -> list[str]:
        """The delivery ids of the next ``count`` events, each acknowledged as it comes (fails on a missing one)."""
        ids = []
        for _ in range(count):
            event = await self.next_event(timeout)
            assert event is not None, f"{len(ids)} of {count} events came"
            ids.append(event.webhook_event.event_id)
            await self.ack(event)
        return ids

    async def ack(self, event: pb.RelayedEvent) -> None:
        await self.call.write(pb.StreamRequest(ack=pb.Ack(repository_id=event.repository_id, sequence=event.sequence)))

    async def fail(self, event: pb.RelayedEvent, reason: str, status_code: int) -> None:
        await self.call.write(
            pb.StreamRequest(
                failure=pb.Failure(
                    repository_id=event.repository_id, sequence=event.sequence, reason=reason, status_code=status_code
                )
            )
        )
