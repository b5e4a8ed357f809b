"""The acknowledged stream, from the client's side: connect, subscribe, receive, settle, reconnect.

One :class:`Stream` is one connection: the client subscribes, the server answers ``subscribed`` and then
sends events and heartbeats; each event is acknowledged (or reported failed) *on the stream it came on*,
because the server only accepts settlements for the events that connection holds. When a stream ends,
whatever it did not settle is sent again on the next one.

:class:`Consumer` keeps one stream open, trying the configured servers in turn with exponential backoff
and full jitter. It logs a change of state once (connected, disconnected, reconnecting); a failed retry
only at debug level, unless it failed for a new reason (another gRPC status).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

import grpc

from gitstafette._proto import gitstafette_pb2 as pb
from gitstafette._proto import gitstafette_pb2_grpc as pb_grpc
from gitstafette._runtime import Backoff
from gitstafette.client.metrics import ClientMetrics
from gitstafette.client.relay import wait_for_any
from gitstafette.config import ClientConfig
from gitstafette.constants import HEADER_EVENT, METADATA_AUTHORIZATION
from gitstafette.exceptions import ConfigError
from gitstafette.model import WebhookEvent
from gitstafette.security.tls import client_channel_options, client_credentials

__all__ = ["Consumer", "ConsumerState", "Received", "Stream", "event_from_relayed"]

logger = logging.getLogger(__name__)

#: A stream that lasted this long was a good one: the next reconnect starts from the shortest backoff.
STABLE_STREAM_S = 5.0
#: While a lane has more events waiting, its acknowledgements are held back this long at most, or until
#: this many gathered, so that they travel together: one gRPC message costs both sides far more CPU
#: than one more acknowledgement in it. An acknowledgement with nothing queued behind it goes at once.
ACK_LINGER_S = 0.005
ACK_BATCH_MAX = 128

ConsumerState = Literal["connecting", "connected", "disconnected", "reconnecting", "refused", "stopped"]

#: What the client can do when the server refuses it: a refusal repeats on every attempt until someone
#: changes the token (or the server's tokens file, re-read on SIGHUP), so it is retried slowly, not
#: with the backoff of a network blip.
_REFUSAL_HINTS = {
    grpc.StatusCode.UNAUTHENTICATED: (
        "the server does not accept this client's token: give the token the server knows with "
        "gitstafette client --token or GITSTAFETTE_TOKEN"
    ),
    grpc.StatusCode.PERMISSION_DENIED: (
        "the server's tokens file does not let this client's token read these repositories: check "
        "--repositories against the token's entry there (gitstafette client --token or GITSTAFETTE_TOKEN)"
    ),
}
#: In the details of a failed connection: a TLS handshake answered in plaintext (OpenSSL/BoringSSL's
#: word for a first record that is not TLS).
_NOT_TLS = "WRONG_VERSION_NUMBER"


def event_from_relayed(message: pb.RelayedEvent) -> WebhookEvent:
    """A relayed event as the model's ``WebhookEvent``, headers exactly as the server sent them."""
    headers = tuple((header.name, header.values) for header in message.webhook_event.headers)
    event_type = next((value for name, value in headers if name.lower() == HEADER_EVENT.lower()), "")
    return WebhookEvent(
        repository_id=message.repository_id,
        delivery_id=message.webhook_event.event_id,
        event_type=event_type,
        body=message.webhook_event.body,
        headers=headers,
        received_at_ns=message.received_at_unix_nanos,
        sequence=message.sequence,
        trace_context=tuple(message.trace_context.items()) if message.trace_context else (),
    )


class Stream:
    """One acknowledged stream: the messages to send on it, and the repositories it serves now."""

    def __init__(self, stream_id: int, server: str) -> None:
        self.id = stream_id
        self.server = server
        self.server_id = ""
        #: repositories the server says this stream serves (another stream of the same client id has the rest)
        self.repositories: tuple[str, ...] = ()
        self.subscribed = False
        self.subscribed_at = 0.0
        #: set when the stream has ended: what was received on it and not settled will come again
        self.ended = asyncio.Event()
        self._finishing = False
        self._outbox: asyncio.Queue[pb.StreamRequest | None] = asyncio.Queue()
        #: acknowledgements held back (see ACK_LINGER_S), and the timer that sends them
        self._acks: list[pb.Ack] = []
        self._ack_timer: asyncio.TimerHandle | None = None

    @property
    def closed(self) -> bool:
        return self.ended.is_set()

    def send(self, request: pb.StreamRequest) -> bool:
        """Queue a message (after the acknowledgements held back); False when the stream is ending and it
        would never be sent."""
        if self.closed or self._finishing:
            return False
        self._flush_acks()
        self._outbox.put_nowait(request)
        return True

    def ack(self, repository_id: str, sequence: int, more_coming: bool = False) -> bool:
        """Queue an acknowledgement; with ``more_coming`` (its lane has more events to deliver) it may wait
        up to ``ACK_LINGER_S`` for others to travel with. False when the stream is ending."""
        if self.closed or self._finishing:
            return False
        self._acks.append(pb.Ack(repository_id=repository_id, sequence=sequence))
        if not more_coming or len(self._acks) >= ACK_BATCH_MAX:
            self._flush_acks()
        elif self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_LINGER_S, self._flush_acks)
        return True

    def _flush_acks(self) -> None:
        """Queue the acknowledgements held back, as one message."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        if not self._acks:
            return
        acks, self._acks = self._acks, []
        if len(acks) == 1:
            self._outbox.put_nowait(pb.StreamRequest(ack=acks[0]))
        else:
            self._outbox.put_nowait(pb.StreamRequest(acks=pb.Acks(acks=acks)))

    def fail(self, repository_id: str, sequence: int, reason: str, status_code: int) -> bool:
        failure = pb.Failure(repository_id=repository_id, sequence=sequence, reason=reason, status_code=status_code)
        return self.send(pb.StreamRequest(failure=failure))

    def finish(self) -> None:
        """Half-close after what is queued: the server then ends the stream too."""
        if not self._finishing:
            self._flush_acks()
            self._finishing = True
            self._outbox.put_nowait(None)

    def close(self) -> None:
        self.ended.set()
        self.finish()

    async def requests(self) -> AsyncIterator[pb.StreamRequest]:
        """The queued messages, in order; acknowledgements that queued up meanwhile travel as one message."""
        held: list[pb.StreamRequest | None] = []  # taken from the queue while gathering acks, sent next
        while True:
            request = held.pop() if held else await self._outbox.get()
            if request is None:
                return
            kind = request.WhichOneof("kind")
            if kind == "ack" or kind == "acks":
                acks = [request.ack] if kind == "ack" else list(request.acks.acks)
                merged = False
                while not self._outbox.empty():
                    following = self._outbox.get_nowait()
                    following_kind = None if following is None else following.WhichOneof("kind")
                    if following is None or (following_kind != "ack" and following_kind != "acks"):
                        held.append(following)
                        break
                    if following_kind == "ack":
                        acks.append(following.ack)
                    else:
                        acks.extend(following.acks.acks)
                    merged = True
                if merged:
                    request = pb.StreamRequest(acks=pb.Acks(acks=acks))
            yield request

    def __repr__(self) -> str:
        return f"Stream(id={self.id}, server={self.server!r}, repositories={list(self.repositories)})"


@dataclass(frozen=True)
class Received:
    """An event, the stream to settle it on, and how often the server sent it to this client id before.

    :param replay: the server sends a settled event again on request (a dead letter being replayed): it
        is delivered even though its sequence was settled before.
    """

    stream: Stream
    event: WebhookEvent
    redelivery: int
    replay: bool = False


class _StreamEnded(Exception):
    """Why a stream ended (or never started); ``refused``: the server turned this client away (its token),
    which trying again soon will not change."""

    def __init__(self, reason: str, refused: bool = False) -> None:
        super().__init__(reason)
        self.refused = refused


def _rpc_failure(error: grpc.aio.AioRpcError, insecure: bool) -> _StreamEnded:
    """The reason of a failed call, with what to do where the client can tell."""
    code, details = error.code(), error.details() or ""
    hint = _REFUSAL_HINTS.get(code)
    if hint is not None:
        return _StreamEnded(f"{code.name}: {details}: {hint}", refused=True)
    if not insecure and _NOT_TLS in details:
        # gRPC's own words end in the OpenSSL error name, which says nothing to most readers.
        return _StreamEnded(
            f"{code.name}: the server does not speak TLS: use --insecure or give the server a certificate "
            f"(--tls-cert and --tls-key) ({details})"
        )
    return _StreamEnded(f"{code.name}: {details}")


class Consumer:
    """Keeps one acknowledged stream open and hands every event it receives to ``on_event``.

    :param on_event: called for each event, on the event loop; it must not block.
    """

    def __init__(self, config: ClientConfig, on_event: Callable[[Received], None], metrics: ClientMetrics) -> None:
        self.config = config
        self.on_event = on_event
        self.metrics = metrics
        self.state: ConsumerState = "connecting"
        #: why the last attempt failed, while not connected (shown on /ready); "" once connected
        self.reason = ""
        self.current: Stream | None = None
        self.backoff = Backoff(config.reconnect_initial_delay_s, config.reconnect_max_delay_s)
        self._closing = asyncio.Event()
        self._stream_ids = 0
        #: the token goes as metadata on every call: call credentials would be refused on an insecure channel
        self._metadata = (
            ((METADATA_AUTHORIZATION, f"Bearer {config.token.reveal()}"),) if config.token is not None else None
        )

    def _channel_options(self) -> list[tuple[str, int | str]]:
        size = self.config.grpc_max_message_bytes
        return [
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
            # Pings keep NAT tables and proxies from dropping an idle stream, and find a dead peer.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # Each attempt gets a fresh channel; a shared subchannel would carry over gRPC's own backoff.
            ("grpc.use_local_subchannel_pool", 1),
        ]

    def _channel(self, server: str) -> grpc.aio.Channel:
        if self.config.insecure:
            return grpc.aio.insecure_channel(server, options=self._channel_options())
        # The files are read for each attempt: a renewed client certificate is used from the next one on.
        try:
            credentials = client_credentials(self.config.tls)
        except ConfigError as exc:
            raise _StreamEnded(str(exc)) from exc
        options = [*self._channel_options(), *client_channel_options(self.config.tls)]
        return grpc.aio.secure_channel(server, credentials, options=options)

    def _set_state(self, state: ConsumerState) -> bool:
        changed = state != self.state
        self.state = state
        self.metrics.connected.set(1 if state == "connected" else 0)
        return changed

    async def run(self) -> None:
        """Connect, stream, reconnect; until :meth:`close`."""
        servers = self.config.servers
        index = 0
        failures = 0
        #: the gRPC status (or other first word) of the last failure: a new kind of failure is worth a line
        failure_kind = ""
        while not self._closing.is_set():
            server = servers[index % len(servers)]
            self._stream_ids += 1
            stream = Stream(self._stream_ids, server)
            self.current = stream
            refused = False
            try:
                await self._stream(stream, failures)
                reason = "the server ended the stream"
            except _StreamEnded as exc:
                reason, refused = str(exc), exc.refused
            except Exception as exc:  # a bug must not end the client: log it whole and reconnect
                logger.exception("stream %d to %s failed unexpectedly", stream.id, server)
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                stream.close()
            if self._closing.is_set():
                break
            self.reason = reason
            delay_s = None
            if stream.subscribed:
                # A stream that ends as soon as it began (a server failing each one) backs off as a failure does.
                lasted_s = time.monotonic() - stream.subscribed_at
                failures = 0 if lasted_s >= STABLE_STREAM_S else failures + 1
                failure_kind = ""
                if self._set_state("disconnected"):
                    logger.warning("disconnected from %s: %s", server, reason)
            else:
                failures += 1
                index += 1
                self.metrics.connection_failures.inc()
                kind, failure_kind = failure_kind, reason.split(":", 1)[0]
                if refused:
                    delay_s = self.config.refused_retry_delay_s
                    if self._set_state("refused") or kind != failure_kind:
                        logger.error("refused by %s: %s (trying again every %gs)", server, reason, delay_s)
                    else:
                        logger.debug("attempt %d: %s: %s", failures, server, reason)
                elif self._set_state("reconnecting") or kind != failure_kind:
                    logger.warning(
                        "reconnecting: %s: %s (retrying %s with backoff up to %.0fs)",
                        server,
                        reason,
                        ", ".join(servers),
                        self.config.reconnect_max_delay_s,
                    )
                else:
                    logger.debug("attempt %d: %s: %s", failures, server, reason)
            if delay_s is None:
                delay_s = self.backoff.delay_s(max(0, failures - 1), random.random)
            await wait_for_any(delay_s, self._closing)
        self._set_state("stopped")

    async def _stream(self, stream: Stream, failures: int) -> None:
        """Run one stream until it ends; raises ``_StreamEnded`` with the reason unless it ended cleanly."""
        config = self.config
        channel = self._channel(stream.server)
        call = None
        try:
            stub = pb_grpc.GitstafetteStub(channel)  # type: ignore[no-untyped-call]
            call = stub.StreamWebhookEvents(stream.requests(), metadata=self._metadata)
            stream.send(
                pb.StreamRequest(
                    subscribe=pb.Subscribe(
                        client_id=config.client_id, repository_ids=list(config.repositories), accepts_batches=True
                    )
                )
            )
            while True:
                try:
                    async with asyncio.timeout(config.idle_timeout_s):
                        message = await call.read()
                except TimeoutError:
                    raise _StreamEnded(f"heard nothing for {config.idle_timeout_s:g}s") from None
                if message is grpc.aio.EOF:
                    return
                self._receive(stream, message, failures)
        except grpc.aio.AioRpcError as exc:
            raise _rpc_failure(exc, config.insecure) from exc
        finally:
            if call is not None:
                call.cancel()
            await channel.close()

    def _receive(self, stream: Stream, message: pb.StreamResponse, failures: int) -> None:
        kind = message.WhichOneof("kind")
        if kind == "event":
            self._receive_event(stream, message.event)
        elif kind == "events":
            for relayed in message.events.events:
                self._receive_event(stream, relayed)
        elif kind == "subscribed":
            repositories = tuple(message.subscribed.repository_ids)
            first = not stream.subscribed
            if first:
                stream.subscribed_at = time.monotonic()
            stream.subscribed = True
            stream.server_id = message.subscribed.server_id
            if first:
                self.metrics.connections.inc()
            self.reason = ""
            if self._set_state("connected"):
                logger.info(
                    "connected to %s (server %s)%s: serving repositories %s",
                    stream.server,
                    stream.server_id,
                    f" after {failures + 1} attempts" if failures else "",
                    ",".join(repositories) or "(none: other connections of this client id hold them)",
                )
            elif repositories != stream.repositories:
                logger.info("now serving repositories %s", ",".join(repositories) or "(none)")
            stream.repositories = repositories
        # a heartbeat only proves the stream is alive, which reading it already did

    def _receive_event(self, stream: Stream, relayed: pb.RelayedEvent) -> None:
        if self._closing.is_set():
            return  # shutting down: left unacknowledged, the server sends it again next time
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "stream %d: received %s#%d (redelivery %d%s)",
                stream.id,
                relayed.repository_id,
                relayed.sequence,
                relayed.redelivery,
                ", replay" if relayed.replay else "",
            )
        self.metrics.events_received(relayed.repository_id).inc()
        self.on_event(Received(stream, event_from_relayed(relayed), relayed.redelivery, relayed.replay))

    def close(self) -> None:
        """Stop reconnecting; send what is queued and half-close the stream, so that :meth:`run` returns once
        the server has ended it too (the caller bounds that wait)."""
        self._closing.set()
        if self.current is not None:
            self.current.finish()
