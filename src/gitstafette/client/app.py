"""The client process: the stream from the server, one delivery lane per repository, and a small HTTP
port for health and metrics.

Lifecycle: ``startup`` (HTTP client and target, health port, the stream) → wait for a stop (SIGTERM,
SIGINT or ``request_stop``) → ``shutdown``: take no new events, let each lane finish the delivery it is
in (up to the grace; an event still retrying is abandoned unacknowledged and the server sends it again),
send the last acknowledgements, half-close the stream, close everything.

Order: a repository's events go through one lane, one after another, in the order the server sent
them; lanes of different repositories deliver in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections import OrderedDict
from collections.abc import Callable

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gitstafette import __version__
from gitstafette._http import EmbeddedHttpServer
from gitstafette._ready_file import ReadyFile
from gitstafette._runtime import Backoff, handling_signals, hold_gc_threshold, running_loop_name
from gitstafette.client.consumer import Consumer, Received, Stream
from gitstafette.client.metrics import ClientMetrics
from gitstafette.client.relay import Relay, Settlement, TargetHealth, create_http_client, create_target
from gitstafette.client.retry import RetryPolicy
from gitstafette.config import ClientConfig
from gitstafette.constants import CLIENT_SERVICE_NAME, HEADER_SIGNATURE_256
from gitstafette.github.signature import WebhookSecrets
from gitstafette.model import WebhookEvent
from gitstafette.security.secret_files import load_webhook_secrets
from gitstafette.security.tls import client_credentials, describe_client_tls
from gitstafette.telemetry import tracing
from gitstafette.telemetry.logs import bind_event, unbind_event
from gitstafette.telemetry.process import Telemetry
from gitstafette.telemetry.sentry import Sentry

__all__ = ["Client"]

logger = logging.getLogger(__name__)

#: Settled events remembered per repository, so one the server sends again is not delivered again. The
#: server keeps at most 256 events per repository unacknowledged, so it never re-sends one older than that.
SETTLED_MEMORY = 4096
#: How long the stream may take to end after the client half-closed it on shutdown.
STREAM_CLOSE_S = 5.0


class _DeliveryLane:
    """One repository's events, delivered one after another, and the outcomes of the latest ones. (The
    client's side; the server's ``dispatch.Lane`` is what sends a repository's events on one stream.)"""

    def __init__(self, repository_id: str) -> None:
        self.repository_id = repository_id
        self.queue: asyncio.Queue[Received | None] = asyncio.Queue()
        self.settled: OrderedDict[int, tuple[str, Settlement]] = OrderedDict()
        self.busy = False
        self.task: asyncio.Task[None] | None = None

    def remember(self, event: WebhookEvent, settlement: Settlement) -> None:
        self.settled[event.sequence] = (event.delivery_id, settlement)
        self.settled.move_to_end(event.sequence)
        while len(self.settled) > SETTLED_MEMORY:
            self.settled.popitem(last=False)

    def recall(self, event: WebhookEvent) -> Settlement | None:
        """The settlement of this very event (same sequence *and* delivery id: a store that was reset
        numbers new events from 1 again, and those must not be taken for old ones)."""
        known = self.settled.get(event.sequence)
        if known is None or known[0] != event.delivery_id:
            return None
        return known[1]


def _end_delivery_span(span: tracing.Span, token: object, settlement: Settlement | None) -> None:
    if settlement is None:  # abandoned: shutdown, or its stream ended
        tracing.end_delivery_span(span, token, None, 0, 0, "")
    else:
        acknowledged, attempts = settlement.acknowledged, settlement.attempts
        tracing.end_delivery_span(span, token, acknowledged, attempts, settlement.status_code, settlement.reason)


def _status_label(settlement: Settlement) -> str:
    return str(settlement.status_code) if settlement.status_code else "none"


class Client:
    """One gitstafette client: ``await Client(config).serve()`` runs until stopped.

    Kubernetes: ``terminationGracePeriodSeconds`` should exceed ``shutdown_grace_s`` plus a few seconds,
    so the last acknowledgements reach the server before the pod is killed.
    """

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.metrics = ClientMetrics()
        self.telemetry = Telemetry(config.otel, self.metrics.registry)
        #: the client's tracer (a ``deliver`` span per delivery); None while tracing is off
        self.tracer = self.telemetry.tracer
        #: where signature failures and dead letters are reported
        self.sentry = Sentry(config.sentry_dsn, CLIENT_SERVICE_NAME, config.client_id)
        self.consumer = Consumer(config, self._on_event, self.metrics)
        self.lanes: dict[str, _DeliveryLane] = {}
        self.health_port = config.health_port
        self.failed = False
        self._stop = asyncio.Event()
        self._stopping = asyncio.Event()
        self._http: httpx.AsyncClient | None = None
        self._relay: Relay | None = None
        self._health: TargetHealth | None = None
        self._consumer_task: asyncio.Task[None] | None = None
        #: lets go of the garbage collector's raised threshold (see _runtime.GC_THRESHOLD), at shutdown
        self._release_gc_threshold: Callable[[], None] | None = None
        self._http_server: EmbeddedHttpServer | None = None
        #: GitHub's webhook secrets: loaded at startup, checked before every delivery when there are any
        self.secrets = WebhookSecrets()
        self._ready_file = ReadyFile(config.ready_file)

    def request_stop(self) -> None:
        self._stop.set()

    async def serve(self) -> None:
        with handling_signals(
            {sig: functools.partial(self._on_signal, sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        ):
            try:
                await self.startup()
                await self._stop.wait()
            finally:
                await self.shutdown()

    def _on_signal(self, sig: int) -> None:
        logger.info("received %s: shutting down (grace %.0fs)", signal.Signals(sig).name, self.config.shutdown_grace_s)
        self.request_stop()

    # ---- startup -----------------------------------------------------------------------------------

    async def startup(self) -> None:
        config = self.config
        # A secrets file that cannot be used stops the client now (ConfigError).
        self.secrets = load_webhook_secrets(config.webhook_secret, config.webhook_secrets_file)
        if not config.insecure:
            client_credentials(config.tls)  # TLS files that cannot be used stop the client now (ConfigError)
        self._http = http = create_http_client(config)
        self._release_gc_threshold = hold_gc_threshold()
        self.telemetry.start()
        target = create_target(config, self.telemetry.grpc_client_interceptors())
        if config.target_health_url:
            self._health = TargetHealth(config.target_health_url, config.target_health_display, http, self.metrics)
        policy = RetryPolicy(
            Backoff(config.retry_initial_delay_s, config.retry_max_delay_s),
            retry_after_max_s=config.retry_after_max_s,
            max_age_s=config.max_delivery_age_s,
        )
        self._relay = Relay(target, policy, self.metrics, self._health)
        self.sentry.start(
            [
                config.token,
                config.target_token,
                self.secrets.default,
                *self.secrets.by_id.values(),
                *self.secrets.by_name.values(),
            ]
        )
        await self._start_health_port()
        if config.insecure:
            logger.warning(
                "plaintext: gRPC to the server without TLS (--insecure): events travel readable "
                "and the server is not authenticated"
            )
        else:
            logger.info("TLS to the server: %s", describe_client_tls(config.tls))
        self._consumer_task = asyncio.create_task(self.consumer.run(), name="consumer")
        self._consumer_task.add_done_callback(self._on_task_done)
        logger.info("OpenTelemetry: %s", config.otel.describe())
        logger.info(
            "gitstafette client %s (%s) listening: health=%s:%d servers=%s repositories=%s target=%s loop=%s",
            config.client_id,
            __version__,
            config.health_host,
            self.health_port,
            ",".join(config.servers),
            ",".join(config.repositories),
            config.target_display,
            running_loop_name(),
        )
        # After the line above, which stays for people: the file is what programs read.
        self._ready_file.write(health_host=config.health_host, health_port=self.health_port)

    async def _start_health_port(self) -> None:
        self._http_server = EmbeddedHttpServer(
            self._health_app(), self.config.health_host, self.config.health_port, grace_s=1, name="health-http"
        )
        await self._http_server.start()
        self.health_port = self._http_server.port

    def _health_app(self) -> Starlette:
        async def health(request: Request) -> Response:
            """Liveness: the process runs. The body tells the state of the stream and the target."""
            return JSONResponse(self.status())

        async def ready(request: Request) -> Response:
            """Readiness: connected to a server, and the target (if it has a health URL) is healthy. When not
            connected, ``reason`` says why (a refused token, a server that does not speak TLS, …)."""
            status = self.status()
            ok = status["connected"] and status["target_healthy"] is not False
            return JSONResponse(status, status_code=200 if ok else 503)

        async def metrics(request: Request) -> Response:
            return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

        return Starlette(
            routes=[
                Route("/health", health, methods=["GET"]),
                Route("/healthz", health, methods=["GET"]),
                Route("/ready", ready, methods=["GET"]),
                Route("/readyz", ready, methods=["GET"]),
                Route("/metrics", metrics, methods=["GET"]),
            ]
        )

    def status(self) -> dict[str, object]:
        stream = self.consumer.current
        connected = self.consumer.state == "connected"
        return {
            "status": "stopping" if self._stopping.is_set() else "ok",
            "client_id": self.config.client_id,
            "state": self.consumer.state,
            "connected": connected,
            # why it is not connected (the last attempt's failure, with what to do where that is known)
            "reason": None if connected else self.consumer.reason or None,
            "server": stream.server if stream is not None and connected else None,
            "repositories": list(stream.repositories) if stream is not None and connected else [],
            "target_healthy": None if self._health is None else self._health.healthy,
            "queued": {r: lane.queue.qsize() + int(lane.busy) for r, lane in self.lanes.items()},
        }

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopping.is_set():
            return
        error = task.exception()
        if error is not None:
            logger.error("%s failed: the client stops", task.get_name(), exc_info=error)
            self.failed = True
            self.request_stop()

    # ---- the main loop: lanes ----------------------------------------------------------------------

    def _on_event(self, received: Received) -> None:
        if self._stopping.is_set():
            return
        repository_id = received.event.repository_id
        lane = self.lanes.get(repository_id)
        if lane is None:
            lane = self.lanes[repository_id] = _DeliveryLane(repository_id)
            lane.task = asyncio.create_task(self._run_lane(lane), name=f"lane {repository_id}")
            lane.task.add_done_callback(self._on_task_done)
        lane.queue.put_nowait(received)

    async def _run_lane(self, lane: _DeliveryLane) -> None:
        assert self._relay is not None
        while not self._stopping.is_set():
            unbind_event()
            received = await lane.queue.get()
            if received is None or self._stopping.is_set():
                break
            stream, event = received.stream, received.event
            bind_event(event.delivery_id, tracing.trace_id_of(event.trace_context) if event.trace_context else "")
            if stream.closed:
                continue  # its stream is gone: the server sends it again on the next one
            # A replay (a dead letter sent again on request) is delivered again by definition.
            earlier = None if received.replay else lane.recall(event)
            if earlier is not None:
                logger.info(
                    "%s#%d (delivery %s) sent again (redelivery %d): settled before, not delivered again",
                    event.repository_id,
                    event.sequence,
                    event.delivery_id,
                    received.redelivery,
                )
                self.metrics.settled("already-settled").inc()
                self._settle(stream, event, earlier, not lane.queue.empty())
                continue
            refused = self._check_signature(event)
            if refused is not None:
                lane.remember(event, refused)
                self._settle(stream, event, refused, not lane.queue.empty())
                continue
            lane.busy = True
            span = None
            if self.tracer is not None:
                span, token = tracing.start_delivery_span(self.tracer, event, self.config.target_display)
            settlement = None
            try:
                settlement = await self._relay.deliver(event, self._stopping, stream.ended)
            finally:
                lane.busy = False
                if span is not None:
                    _end_delivery_span(span, token, settlement)
            if settlement is None:
                continue  # shutting down, or its stream ended: unacknowledged, so the server sends it again
            lane.remember(event, settlement)
            self._record(event, settlement)
            self._settle(stream, event, settlement, not lane.queue.empty())

    def _check_signature(self, event: WebhookEvent) -> Settlement | None:
        """A dead letter for an event whose GitHub signature does not hold (with a secret for its repository):
        whatever the relay did to it, it is not delivered. None when it may be delivered."""
        if not self.secrets.configured:
            return None
        problem = self.secrets.problem(
            event.repository_id, event.body, event.header(HEADER_SIGNATURE_256), event.header("content-type") or ""
        )
        if problem is None:
            return None
        self.metrics.settled("bad-signature").inc()
        self.metrics.dead_letters(event.repository_id).inc()
        reason = f"refused by the client, not delivered: {problem} (altered after GitHub signed it, or another secret)"
        self.sentry.report(f"event refused by the client: {problem}", "signature-failure", event, level="error")
        logger.warning(
            "%s#%d (delivery %s, %d bytes) not delivered: %s; reported to the server as a dead letter",
            event.repository_id,
            event.sequence,
            event.delivery_id,
            len(event.body),
            problem,
        )
        return Settlement(False, 0, reason, 0)

    def _record(self, event: WebhookEvent, settlement: Settlement) -> None:
        name = f"{event.repository_id}#{event.sequence}"
        if settlement.acknowledged:
            self.metrics.settled("delivered").inc()
            self.metrics.deliveries(event.repository_id, "delivered", _status_label(settlement)).inc()
            lag_s = max(0.0, time.time() - event.received_at_ns / 1e9) if event.received_at_ns else None
            if lag_s is not None:
                self.metrics.lag.observe(lag_s)
            if logger.isEnabledFor(logging.INFO):
                logger.info(
                    "delivered %s (%s event, delivery %s, %d bytes)%s",
                    name,
                    event.event_type or "?",
                    event.delivery_id,
                    len(event.body),
                    f" {lag_s * 1000:.0f} ms after the server got it" if lag_s is not None else "",
                )
        else:
            self.metrics.settled("dead-letter").inc()
            self.metrics.deliveries(event.repository_id, "dead-letter", _status_label(settlement)).inc()
            self.metrics.dead_letters(event.repository_id).inc()
            logger.warning(
                "dead letter %s (delivery %s) after %d attempts: %s",
                name,
                event.delivery_id,
                settlement.attempts,
                settlement.reason,
            )
            self.sentry.report(
                f"dead letter after {settlement.attempts} attempts: {settlement.reason[:200]}",
                "dead-letter",
                event,
                level="error",
                status=settlement.status_code or "none",
                attempts=settlement.attempts,
                target=self.config.target_display,
            )

    def _settle(self, stream: Stream, event: WebhookEvent, settlement: Settlement, more_coming: bool = False) -> None:
        """Acknowledge the event, or report it failed; ``more_coming``: its lane has more events waiting, so
        the acknowledgement may wait a moment for others to travel with (``consumer.ACK_LINGER_S``)."""
        if settlement.acknowledged:
            sent = stream.ack(event.repository_id, event.sequence, more_coming)
        else:
            sent = stream.fail(event.repository_id, event.sequence, settlement.reason[:1000], settlement.status_code)
        if not sent:
            logger.debug(
                "stream %d ended before %s#%d was settled on it; it is settled when the server sends it again",
                stream.id,
                event.repository_id,
                event.sequence,
            )

    # ---- shutdown ----------------------------------------------------------------------------------

    async def shutdown(self) -> None:
        grace = self.config.shutdown_grace_s
        self._ready_file.remove()  # first: from now on no new events are taken
        self._stopping.set()
        # 1. No new events; each lane finishes the delivery it is in.
        lanes = [lane.task for lane in self.lanes.values() if lane.task is not None]
        for lane in self.lanes.values():
            lane.queue.put_nowait(None)
        if lanes:
            _, pending = await asyncio.wait(lanes, timeout=grace)
            for task in pending:
                logger.warning(
                    "%s: delivery still running after %.0fs, abandoned (the server sends it again)",
                    task.get_name(),
                    grace,
                )
                task.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
        # 2. The last acknowledgements go out, the stream is half-closed and ends.
        self.consumer.close()
        if self._consumer_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._consumer_task), STREAM_CLOSE_S)
            except TimeoutError:
                self._consumer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer_task
        # 3. Target connections, then the health port.
        if self._relay is not None:
            await self._relay.target.aclose()
        if self._http is not None:
            await self._http.aclose()
        if self._http_server is not None:
            await self._http_server.stop()
        await self.telemetry.aclose()
        await asyncio.to_thread(self.sentry.stop)
        if self._release_gc_threshold is not None:
            self._release_gc_threshold()
        logger.info("gitstafette client stopped")
