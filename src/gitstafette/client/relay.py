"""Delivering events to the target: one attempt (an HTTP POST, or a gRPC push to another gitstafette
server), the retries around it, and the pause while the target says it is unhealthy.

The target sees what GitHub sent: the body byte for byte and exactly the event's headers. The HTTP
client adds nothing of its own beyond ``Host`` and ``Content-Length``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import grpc
import httpx
from prometheus_client import Counter

from gitstafette._proto import gitstafette_pb2 as pb
from gitstafette._proto import gitstafette_pb2_grpc as pb_grpc
from gitstafette.client.metrics import ClientMetrics
from gitstafette.client.retry import RetryPolicy, Verdict, parse_retry_after, verdict_for_status
from gitstafette.config import ClientConfig
from gitstafette.constants import METADATA_AUTHORIZATION
from gitstafette.model import WebhookEvent, event_to_pb

__all__ = [
    "Attempt",
    "GrpcTarget",
    "HttpTarget",
    "Relay",
    "Settlement",
    "Target",
    "TargetHealth",
    "create_http_client",
    "create_target",
    "wait_for_any",
]

logger = logging.getLogger(__name__)

#: Headers that describe one hop's framing, not the webhook: the HTTP client sets its own.
_HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "upgrade"})
#: gRPC statuses of a push that may succeed when asked again.
_RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)
#: How long a passing health check is trusted while deliveries succeed.
HEALTH_FRESH_S = 5.0
#: How often an unhealthy target's health URL is asked again.
HEALTH_POLL_S = 1.0


async def wait_for_any(timeout_s: float, *events: asyncio.Event) -> bool:
    """Sleep ``timeout_s`` unless one of ``events`` is set first; True when one was."""
    if any(event.is_set() for event in events):
        return True
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return bool(done)


@dataclass(frozen=True)
class Attempt:
    """The answer to one delivery attempt.

    :param result: a metrics label: ``2xx`` … ``5xx``, ``connect-error``, ``timeout`` or ``error``.
    """

    verdict: Verdict
    result: str
    status_code: int = 0
    detail: str = ""
    retry_after_s: float | None = None


@dataclass(frozen=True)
class Settlement:
    """How an event ended: acknowledged, or a dead letter with the reason and the target's last status."""

    acknowledged: bool
    attempts: int
    reason: str = ""
    status_code: int = 0


class Target(ABC):
    """Where events go. ``send`` makes one attempt and never raises for a failed delivery."""

    @abstractmethod
    async def send(self, event: WebhookEvent) -> Attempt: ...

    @abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Target:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def create_http_client(config: ClientConfig) -> httpx.AsyncClient:
    """One pooled HTTP client for the target and its health URL, without default headers of its own."""
    http = httpx.AsyncClient(
        timeout=httpx.Timeout(config.delivery_timeout_s, connect=min(10.0, config.delivery_timeout_s)),
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        follow_redirects=False,
    )
    # httpx sends Accept, Accept-Encoding, Connection and its User-Agent by default; the target must see
    # GitHub's headers and nothing else.
    http.headers.clear()
    return http


class HttpTarget(Target):
    """POSTs each event to a URL over a pool of keep-alive connections of its own.

    aiohttp rather than httpx on this path: measured here, a 7 KB POST costs about a fifth of the CPU
    (bench/README.md), and the client's delivery rate is bound by exactly that.
    """

    #: what is read of an answer, for the log and the dead letter's reason
    ANSWER_READ_BYTES = 64 * 1024

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(10.0, timeout_s))
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created in the running loop, on first use
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64),
                timeout=self._timeout,
                # The target sees GitHub's headers and nothing of ours.
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                auto_decompress=False,
            )
        return self._session

    async def send(self, event: WebhookEvent) -> Attempt:
        headers = [(name, value) for name, value in event.headers if name.lower() not in _HOP_HEADERS]
        try:
            async with self._client().post(
                self.url, data=event.body, headers=headers, allow_redirects=False
            ) as response:
                answer = await response.content.read(self.ANSWER_READ_BYTES)
                status, reason = response.status, response.reason or ""
                retry_after_header = response.headers.get("retry-after")
        except aiohttp.ClientConnectorError as exc:
            return Attempt("retry", "connect-error", detail=f"cannot connect to the target: {exc}")
        except TimeoutError as exc:
            return Attempt("retry", "timeout", detail=f"the target did not answer in time ({type(exc).__name__})")
        except aiohttp.ClientError as exc:
            return Attempt("retry", "error", detail=f"{type(exc).__name__}: {exc}")
        verdict = verdict_for_status(status)
        retry_after = parse_retry_after(retry_after_header) if verdict == "retry" else None
        text = answer.decode("utf-8", "replace").strip().replace("\n", " ")
        detail = f"HTTP {status} {reason}" + (f": {text[:200]}" if text else "")
        return Attempt(verdict, f"{status // 100}xx", status, detail, retry_after)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def __repr__(self) -> str:
        return f"HttpTarget({self.url!r})"


class GrpcTarget(Target):
    """Pushes each event to another gitstafette server (``WebhookEventPush``): chained relays.

    :param interceptors: the channel's client interceptors: while tracing, OpenTelemetry's, so that each push
        gets a gRPC client span whose context the next server continues.
    """

    def __init__(self, url: str, config: ClientConfig, interceptors: Sequence[Any] | None = None) -> None:
        parts = urlsplit(url)
        self.address = parts.netloc
        self.client_id = config.client_id
        self.timeout_s = config.delivery_timeout_s
        options = [
            ("grpc.max_send_message_length", config.grpc_max_message_bytes),
            ("grpc.max_receive_message_length", config.grpc_max_message_bytes),
        ]
        if parts.scheme.lower() == "grpcs":
            credentials = grpc.ssl_channel_credentials()
            self.channel = grpc.aio.secure_channel(self.address, credentials, options, interceptors=interceptors)
        else:
            self.channel = grpc.aio.insecure_channel(self.address, options=options, interceptors=interceptors)
        self.stub = pb_grpc.GitstafetteStub(self.channel)  # type: ignore[no-untyped-call]
        #: the downstream server's token for this client, if it wants one
        token = config.target_token
        self.metadata = ((METADATA_AUTHORIZATION, f"Bearer {token.reveal()}"),) if token is not None else None

    async def send(self, event: WebhookEvent) -> Attempt:
        request = pb.WebhookEventPushRequest(
            cliend_id=self.client_id, repository_id=event.repository_id, webhook_event=event_to_pb(event)
        )
        try:
            response = await self.stub.WebhookEventPush(request, timeout=self.timeout_s, metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            verdict: Verdict = "retry" if code in _RETRYABLE_CODES else "dead-letter"
            result = "timeout" if code == grpc.StatusCode.DEADLINE_EXCEEDED else "error"
            return Attempt(verdict, result, detail=f"gRPC {code.name}: {exc.details()}")
        text = response.response_code.strip()
        status = int(text) if text.isdigit() else 0
        detail = f"push answered {text or '(no code)'}: {response.response_description}"
        if response.accepted:
            return Attempt("ack", "2xx", status, detail)
        verdict = verdict_for_status(status) if status else "dead-letter"
        if verdict == "ack":  # a 2xx code that was not accepted: believe ``accepted``
            verdict = "dead-letter"
        return Attempt(verdict, f"{status // 100}xx" if status else "error", status, detail)

    async def aclose(self) -> None:
        await self.channel.close()

    def __repr__(self) -> str:
        return f"GrpcTarget({self.address!r})"


def create_target(config: ClientConfig, grpc_interceptors: Sequence[Any] | None = None) -> Target:
    """The target ``config`` names; ``grpc_interceptors`` are a ``grpc://`` target's (see :class:`GrpcTarget`)."""
    if config.target_kind == "grpc":
        return GrpcTarget(config.target, config, grpc_interceptors)
    return HttpTarget(config.target, config.delivery_timeout_s)


class TargetHealth:
    """Pauses delivery while GET on the target's health URL fails, and resumes when it passes.

    A passing check is trusted for ``HEALTH_FRESH_S`` or until a delivery fails, whichever comes first;
    while the target is unhealthy every lane waits on the same check.
    """

    def __init__(self, url: str, display_url: str, http: httpx.AsyncClient, metrics: ClientMetrics) -> None:
        self.url = url
        self.display_url = display_url
        self.http = http
        self.metrics = metrics
        self.healthy: bool | None = None
        self._checked_at = -1e18
        self._lock = asyncio.Lock()

    def suspect(self) -> None:
        """A delivery failed: check the health URL before the next one."""
        self._checked_at = -1e18

    async def check(self) -> tuple[bool, str]:
        try:
            response = await self.http.get(self.url)
        except httpx.HTTPError as exc:
            self.metrics.health_checks.labels("error").inc()
            return False, f"{type(exc).__name__}: {exc}"
        ok = 200 <= response.status_code < 300
        self.metrics.health_checks.labels("pass" if ok else "fail").inc()
        return ok, f"HTTP {response.status_code}"

    async def wait_healthy(self, stop: asyncio.Event) -> float:
        """Return once the target is healthy (or ``stop`` is set); the seconds spent waiting."""
        started = time.monotonic()
        async with self._lock:
            if self.healthy and time.monotonic() - self._checked_at < HEALTH_FRESH_S:
                return time.monotonic() - started
            while not stop.is_set():
                ok, detail = await self.check()
                self._checked_at = time.monotonic()
                if ok:
                    if self.healthy is False:
                        logger.info("target healthy again (%s): delivery resumes", self.display_url)
                    self._set(True)
                    break
                if self.healthy is not False:
                    logger.warning("target unhealthy (%s answered %s): delivery paused", self.display_url, detail)
                self._set(False)
                await wait_for_any(HEALTH_POLL_S, stop)
        return time.monotonic() - started

    def _set(self, healthy: bool) -> None:
        self.healthy = healthy
        self.metrics.target_healthy.set(1 if healthy else 0)


class Relay:
    """Delivers one event, retrying as the policy says, until it is acknowledged or dead-lettered."""

    def __init__(self, target: Target, policy: RetryPolicy, metrics: ClientMetrics, health: TargetHealth | None = None):
        self.target = target
        self.policy = policy
        self.metrics = metrics
        self.health = health
        #: ``metrics.attempts`` per result, looked up once each
        self._attempt_counters: dict[str, Counter] = {}

    def _count_attempt(self, result: str) -> None:
        counter = self._attempt_counters.get(result)
        if counter is None:
            counter = self._attempt_counters[result] = self.metrics.attempts.labels(result)
        counter.inc()

    async def deliver(
        self, event: WebhookEvent, stop: asyncio.Event, abandon: asyncio.Event | None = None
    ) -> Settlement | None:
        """The event's settlement, or None when ``stop`` or ``abandon`` was set first: the event stays
        unacknowledged and the server sends it again.

        ``abandon`` is set when the stream the event came on ends: between attempts the retry is dropped
        then, because the server may give the repository to another replica of this client id, and one
        that went on retrying here would reach the target after events that replica delivered since.
        """
        until = (stop,) if abandon is None else (stop, abandon)
        name = f"{event.repository_id}#{event.sequence}"
        attempts = 0
        first_at = 0.0
        paused_s = 0.0
        while True:
            if self.health is not None:
                waited = await self.health.wait_healthy(stop)
                if attempts:
                    paused_s += waited
            if any(event.is_set() for event in until):
                return None
            if not attempts:
                first_at = time.monotonic()
            attempt = await self.target.send(event)
            attempts += 1
            self._count_attempt(attempt.result)
            if attempt.verdict == "ack":
                if attempts > 1:
                    logger.info("delivered %s (delivery %s) after %d attempts", name, event.delivery_id, attempts)
                return Settlement(True, attempts, status_code=attempt.status_code)
            if attempt.verdict == "dead-letter":
                return Settlement(False, attempts, attempt.detail, attempt.status_code)
            if self.health is not None:
                self.health.suspect()
            delay = self.policy.delay_s(attempts - 1, attempt.retry_after_s)
            retrying_s = time.monotonic() - first_at - paused_s
            if self.policy.gives_up(retrying_s, delay):
                reason = f"still failing after {attempts} attempts in {retrying_s:.0f}s: {attempt.detail}"
                return Settlement(False, attempts, reason, attempt.status_code)
            self.metrics.retries(event.repository_id).inc()
            if attempts == 1:
                logger.warning(
                    "delivery of %s (delivery %s) failed, retrying: %s", name, event.delivery_id, attempt.detail
                )
            else:
                logger.debug("attempt %d for %s failed, next in %.2fs: %s", attempts, name, delay, attempt.detail)
            if await wait_for_any(delay, *until):
                logger.debug("retries of %s stopped: %s", name, "shutdown" if stop.is_set() else "its stream ended")
                return None
