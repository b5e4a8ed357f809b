"""The server process: HTTP and gRPC listeners on one event loop, sharing one store.

Lifecycle: ``startup`` (open the store, bind both ports, start background tasks) → wait for a stop
(SIGTERM, SIGINT or ``request_stop``) → ``shutdown`` (stop taking requests, let in-flight requests
finish, end every stream cleanly, close the store), each step bounded by the shutdown grace.

The grace is one deadline for the whole shutdown, set when it starts: requests and streams in flight get
until the grace is over, and the closing steps (the last cursors and audit records, telemetry, the store's
close) share what is left of it plus ``SHUTDOWN_MARGIN_S``. A step still running then is cancelled, logged
with what it leaves undone, and left behind: the process exits anyway, before Kubernetes' SIGKILL (a step
started after the deadline gets ``SHUTDOWN_STEP_FLOOR_S``, so the bound is a little more with each).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from gitstafette import constants
from gitstafette._http import EmbeddedHttpServer, HttpLimits
from gitstafette._proto import gitstafette_info_pb2, gitstafette_info_pb2_grpc, gitstafette_pb2, gitstafette_pb2_grpc
from gitstafette._ready_file import ReadyFile
from gitstafette._runtime import handling_signals, hold_gc_threshold, running_loop_name
from gitstafette.config import ServerConfig
from gitstafette.constants import SERVER_SERVICE_NAME
from gitstafette.exceptions import ConfigError, StoreError, StoreUnavailable
from gitstafette.security.secret_files import load_webhook_secrets
from gitstafette.security.tls import ServerTls
from gitstafette.server.audit import AuditLog
from gitstafette.server.auth import Authenticator, AuthInterceptor
from gitstafette.server.dispatch import Dispatcher
from gitstafette.server.grpc_service import GitstafetteService, InfoService
from gitstafette.server.http_app import create_app
from gitstafette.server.ingest import Ingest
from gitstafette.server.metrics import ServerMetrics, TimedStore
from gitstafette.server.parts import ServerParts
from gitstafette.store import EventStore, create_store
from gitstafette.telemetry.process import Telemetry
from gitstafette.telemetry.sentry import Sentry

__all__ = ["Server"]

logger = logging.getLogger(__name__)

#: How often the store is checked for the gRPC health status.
HEALTH_INTERVAL_S = 5.0
#: How often the store is checked while it is unreachable.
UNHEALTHY_INTERVAL_S = 0.5
#: How often old events are pruned.
PRUNE_INTERVAL_S = 60.0
#: What the closing steps of a shutdown may take past the grace when the requests and streams in flight
#: used all of it: those steps take milliseconds, but they are the ones that commit the last writes. Keep
#: ``terminationGracePeriodSeconds`` above the grace plus this (and a second for the process to exit).
SHUTDOWN_MARGIN_S = 2.0
#: What a shutdown step started after the deadline still gets: one with nothing to wait for (no Sentry
#: reports pending, say) finishes instead of being reported. At most this much per step past the deadline.
SHUTDOWN_STEP_FLOOR_S = 0.2

_SERVICE_NAMES = (
    gitstafette_pb2.DESCRIPTOR.services_by_name["Gitstafette"].full_name,
    gitstafette_info_pb2.DESCRIPTOR.services_by_name["Info"].full_name,
)


def _bind_problem(host: str, port: int) -> str:
    """Why ``host:port`` cannot be listened on, asked of the OS: grpcio only says that binding failed (its C
    core logs the reason on stderr, outside our log, and the CLI turns that off)."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"the host {host!r} is neither an address of this machine nor a name that resolves ({exc.strerror})"
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: TIME_WAIT is no conflict
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return f"the port {port} is taken (another process listens on it)"
                if exc.errno == errno.EADDRNOTAVAIL:
                    return f"{host!r} is not an address of this machine"
                return exc.strerror or str(exc)
    return "gRPC could not bind it (GRPC_VERBOSITY=debug shows why)"


class _Shutdown:
    """The steps of one shutdown against one deadline: ``grace_end`` for the work in flight, ``end`` (the
    grace plus ``SHUTDOWN_MARGIN_S``) for every step. ``unfinished`` names the steps that ran out of time."""

    def __init__(self, grace_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.grace_s = grace_s
        self.grace_end = self._loop.time() + grace_s
        self.end = self.grace_end + SHUTDOWN_MARGIN_S
        self.unfinished: list[str] = []

    def left(self, until: float) -> float:
        return max(0.0, until - self._loop.time())

    async def step(self, what: str, undone: str, work: Awaitable[object]) -> None:
        """Await ``work`` until the end of the shutdown; past it, cancel it and say what is ``undone``.

        asyncio.wait, not wait_for: wait_for waits for the cancelled work to end, and work stuck where a
        cancellation cannot reach (a shielded write, a driver's thread) would hold the shutdown forever.
        """
        task = asyncio.ensure_future(work)
        await asyncio.wait({task}, timeout=max(self.left(self.end), SHUTDOWN_STEP_FLOOR_S))
        if task.done():
            task.result()  # an error is the caller's, as it was before steps were bounded
            return
        task.cancel()
        self.unfinished.append(what)
        logger.error(
            "%s did not finish within the grace (%gs, then %gs for the last writes): %s",
            what,
            self.grace_s,
            SHUTDOWN_MARGIN_S,
            undone,
        )


class Server:
    """One gitstafette server: ``await Server(config).serve()`` runs until stopped.

    SIGHUP re-reads the tokens file, the admin token file and the webhook secrets file (:meth:`reload`).

    Shutdown is bounded by ``config.shutdown_grace_s`` plus ``SHUTDOWN_MARGIN_S``: Kubernetes'
    ``terminationGracePeriodSeconds`` should exceed that sum by a second or more.

    :raises ConfigError: a secrets or tokens file cannot be used.
    """

    def __init__(self, config: ServerConfig, store: EventStore | None = None) -> None:
        self.config = config
        # The files of secrets first: one that cannot be used stops the server before it opens anything.
        self.auth = Authenticator(config)
        secrets = load_webhook_secrets(config.webhook_secret, config.webhook_secrets_file)
        # The gauges ask the dispatcher, made below: it needs the store the metrics time.
        self.metrics = ServerMetrics(
            store or create_store(config.store),
            lambda: self.dispatcher.connection_count(),
            lambda: self.dispatcher.cursors(),
        )
        #: the store every component uses: the backend (``store.inner``) with its operations timed
        self.store: TimedStore = self.metrics.store
        self.dispatcher = Dispatcher(self.store)
        self.telemetry = Telemetry(config.otel, self.metrics.registry, self.metrics.backlog.refresh)
        self.sentry = Sentry(config.sentry_dsn, SERVER_SERVICE_NAME, config.server_id)
        self.ingest = Ingest(config, self.store, self.metrics, secrets, self.telemetry.tracer, self.sentry)
        self.audit = AuditLog(self.store, self.metrics)
        #: what the HTTP app and the gRPC service are made of
        self.parts = ServerParts(
            config, self.store, self.ingest, self.metrics, self.dispatcher, self.auth, self.audit, self.telemetry.tracer
        )
        self.health = HealthServicer()
        self.http_port = config.http_port
        self.grpc_port = config.grpc_port
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._http: EmbeddedHttpServer | None = None
        self._grpc: grpc.aio.Server | None = None
        #: the certificate both listeners present, watched for renewal; None: plaintext
        self.tls: ServerTls | None = None
        #: lets go of the garbage collector's raised threshold (see _runtime.GC_THRESHOLD), at shutdown
        self._release_gc_threshold: Callable[[], None] | None = None
        self._info = InfoService(config)
        #: startup completed: only a server that started says it stopped
        self._started = False
        self._ready_file = ReadyFile(config.ready_file)
        #: the shutdown steps that ran out of time and were left behind, still running or cancelled: the
        #: process should exit without waiting for them (the CLI does, with exit code 1)
        self.unfinished_steps: list[str] = []

    def request_stop(self) -> None:
        self._stop.set()

    async def serve(self) -> None:
        handlers: dict[int, Callable[[], None]] = {
            sig: functools.partial(self._on_signal, sig) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        with handling_signals({**handlers, signal.SIGHUP: self.reload}):
            try:
                await self.startup()
                self._started = True
                await self._stop.wait()
            finally:
                # After a failed startup this only releases what it opened; the caller reports the failure.
                await self.shutdown()

    def reload(self) -> None:
        """Re-read the files of tokens and secrets; open streams whose token still grants what they read go
        on. A file that cannot be used leaves what is in use as it was."""
        logger.info("reloading tokens and webhook secrets")
        self.auth.reload()
        if self.config.webhook_secrets_file:
            try:
                self.ingest.secrets = load_webhook_secrets(self.config.webhook_secret, self.config.webhook_secrets_file)
            except ConfigError as exc:
                logger.error("reload refused, the webhook secrets in use stay: %s", exc)
                return
            logger.info("webhook secrets reloaded: %d", len(self.ingest.secrets))

    def _on_signal(self, sig: int) -> None:
        logger.info("received %s: shutting down (grace %.0fs)", signal.Signals(sig).name, self.config.shutdown_grace_s)
        self.request_stop()

    async def startup(self) -> None:
        config = self.config
        # The certificate first: files that cannot be used stop the server before it opens anything.
        self.tls = ServerTls(config.tls) if config.tls.enabled else None
        secrets = self.ingest.secrets
        self.sentry.start(
            [
                config.oauth_token,
                config.admin_token,
                secrets.default,
                *secrets.by_id.values(),
                *secrets.by_name.values(),
            ]
        )
        self.telemetry.start()
        self._release_gc_threshold = hold_gc_threshold()
        await self.store.open()
        self._grpc = self._create_grpc_server()
        address = f"{config.host}:{config.grpc_port}"
        try:
            if self.tls is None:
                self.grpc_port = self._grpc.add_insecure_port(address)
            else:
                self.grpc_port = self._grpc.add_secure_port(address, self.tls.grpc_credentials())
        except RuntimeError as exc:  # grpcio's word for a port it cannot bind; it says no more than that
            raise OSError(
                f"cannot listen for gRPC on {address}: {_bind_problem(config.host, config.grpc_port)}"
            ) from exc
        if self.grpc_port == 0:
            raise OSError(f"cannot listen for gRPC on {address}: {_bind_problem(config.host, config.grpc_port)}")
        self._info.grpc_port = self.grpc_port
        await self._grpc.start()

        app = self.telemetry.instrument_http(create_app(self.parts))
        self._http = EmbeddedHttpServer(
            app,
            config.host,
            config.http_port,
            config.shutdown_grace_s,
            ssl_context=None if self.tls is None else self.tls.http_context(),
            limits=HttpLimits(config.request_timeout_s, config.max_header_bytes, config.keep_alive_timeout_s),
        )
        await self._http.start()
        self.http_port = self._http.port

        await self._set_health(True)
        self._tasks = [
            asyncio.create_task(self._watch_store(), name="health"),
            asyncio.create_task(self._prune_loop(), name="prune"),
            asyncio.create_task(self.audit.run(), name="audit"),
        ]
        self._warn_about_security()
        if self.tls is None:
            logger.warning(
                "plaintext: HTTP and gRPC without TLS, so webhooks, events and tokens cross the network readable; "
                "pass --tls-cert and --tls-key (or terminate TLS in front of both ports)"
            )
        else:
            self.tls.log_startup()
            self._tasks.append(asyncio.create_task(self.tls.watch(), name="tls-reload"))
        if config.repositories.everything:
            logger.warning("watching every repository: set --repositories to accept only yours")
        logger.info("OpenTelemetry: %s", config.otel.describe())
        logger.info(
            "gitstafette server %s listening: http=%s:%d grpc=%s:%d store=%s repositories=%s loop=%s",
            config.server_id,
            config.host,
            self.http_port,
            config.host,
            self.grpc_port,
            self.store.url,
            config.repositories,
            running_loop_name(),
        )
        # After the line above, which stays for people: the file is what programs read.
        self._ready_file.write(host=config.host, http_port=self.http_port, grpc_port=self.grpc_port)

    def _warn_about_security(self) -> None:
        """Say once, at startup, what is left open."""
        if not self.ingest.secrets.configured:
            logger.warning(
                "no webhook secret: anyone who can reach the webhook endpoint can post events; "
                "set --webhook-secret or --webhook-secrets-file (the secret of your GitHub hooks)"
            )
        if not self.auth.required:
            logger.warning(
                "no client tokens: any gRPC client can read every repository; set --tokens-file or OAUTH_TOKEN"
            )
        elif not self.auth.admin_configured:
            logger.info("no admin token: the REST read API stays closed; set --admin-token-file to open it")
        logger.info(
            "security: %d webhook secrets, %d client tokens, admin token %s, at most %s streams per client id",
            len(self.ingest.secrets),
            self.auth.token_count,
            "set" if self.auth.admin_configured else "not set",
            self.config.max_streams_per_client or "unlimited",
        )

    def _create_grpc_server(self) -> grpc.aio.Server:
        size = self.config.grpc_max_message_bytes
        server = grpc.aio.server(
            interceptors=[*self.telemetry.grpc_interceptors(), AuthInterceptor(self.auth)],
            options=[
                ("grpc.max_send_message_length", size),
                ("grpc.max_receive_message_length", size),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.http2.max_ping_strikes", 0),
                ("grpc.so_reuseport", 0),
                ("grpc.server.max_pending_requests", constants.GRPC_MAX_PENDING_STREAMS),
                ("grpc.server.max_pending_requests_hard_limit", constants.GRPC_MAX_PENDING_STREAMS_HARD_LIMIT),
                ("grpc.server_max_unrequested_time_in_server", constants.GRPC_MAX_UNREQUESTED_S),
            ],
        )
        gitstafette_pb2_grpc.add_GitstafetteServicer_to_server(  # type: ignore[no-untyped-call]
            GitstafetteService(self.parts),
            server,
        )
        gitstafette_info_pb2_grpc.add_InfoServicer_to_server(self._info, server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (*_SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        return server

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *_SERVICE_NAMES):
            await self.health.set(name, status)

    async def _watch_store(self) -> None:
        serving = True
        while True:
            # Checked more often while the store is away: SERVING again soon after it is back.
            await asyncio.sleep(HEALTH_INTERVAL_S if serving else UNHEALTHY_INTERVAL_S)
            try:
                await self.store.ping()
                healthy = True
            except StoreError as exc:
                healthy = False
                if serving:
                    logger.error("store unreachable, gRPC health NOT_SERVING: %s", exc)
            if healthy != serving:
                if healthy:
                    logger.info("store reachable again, gRPC health SERVING")
                await self._set_health(healthy)
                serving = healthy

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(min(PRUNE_INTERVAL_S, max(1.0, self.config.retention_s / 10)))
            try:
                pruned = await self.store.prune(time.time_ns(), self.config.retention_s, self.config.max_event_age_s)
            except StoreUnavailable as exc:
                logger.warning("pruning failed: %s", exc)
                continue
            except StoreError as exc:
                logger.error("pruning failed: %s", exc, exc_info=exc)
                continue
            if pruned:
                logger.info("pruned %d events past retention", pruned)

    async def shutdown(self) -> None:
        steps = _Shutdown(self.config.shutdown_grace_s)
        self.unfinished_steps = steps.unfinished
        self._ready_file.remove()  # first: from now on no new requests are taken
        for task in self._tasks:
            task.cancel()
        # 1. No new webhooks; in-flight requests finish (uvicorn waits until the grace is over).
        if self._http is not None:
            http = self._http
            graceful = True

            async def stop_http() -> None:
                nonlocal graceful
                graceful = await http.stop(steps.left(steps.grace_end))

            await steps.step("HTTP stop", "requests in flight were not answered", stop_http())
            if not graceful:
                logger.warning("HTTP requests still in flight when the grace was over were cut")
        # 2. Streams end cleanly: the acknowledged ones get end-of-stream, legacy ones wake and return.
        await self._set_health(False)
        self.dispatcher.close()
        self.store.stop_waiters()
        if self._grpc is not None:
            await steps.step(
                "gRPC stop",
                "streams still open were cut",
                self._grpc.stop(steps.left(steps.grace_end)),
            )
        # The health, prune and audit loops, cancelled above, are done with the store before it closes.
        if self._tasks:
            await steps.step(
                "background tasks",
                "a store call of the health, prune or audit loop may still be running",
                asyncio.gather(*self._tasks, return_exceptions=True),
            )
        # 3. Pending writes are committed (the last cursors and audit records too), then the store is closed.
        await steps.step(
            "hand-over of ended streams",
            "their last cursors may not be written, so clients may be sent acknowledged events again",
            self.dispatcher.wait_disconnected(),
        )
        await steps.step(
            "cursor flush",
            "the last cursors may not be written, so clients may be sent acknowledged events again",
            self.dispatcher.cursor_writer.flush(),
        )
        await steps.step("audit flush", "the last audit records may be lost", self.audit.flush())
        await steps.step(
            "telemetry close",  # the last metrics (the backlog reads the store) and pending spans
            "the last metrics and spans may not be exported",
            self.telemetry.aclose(),
        )
        await steps.step("store close", "pending writes may be lost", self.store.aclose())
        if self._release_gc_threshold is not None:
            self._release_gc_threshold()
        if self._started:
            if steps.unfinished:
                logger.error("gitstafette server stopped, unfinished: %s", ", ".join(steps.unfinished))
            else:
                logger.info("gitstafette server stopped")
        await steps.step("Sentry flush", "reports not sent yet may be lost", asyncio.to_thread(self.sentry.stop))
