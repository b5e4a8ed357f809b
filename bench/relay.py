#!/usr/bin/env python3
"""End-to-end benchmark: webhook POST → server → gRPC stream → client → HTTP POST to a target.

Starts a target (a minimal HTTP/1.1 server in this process), ``python -m gitstafette server`` and
``python -m gitstafette client`` (or, with ``--ingest-url``/``--target-port``, uses a server and client that
already run), then:

A. **Latency.** ``-n`` webhooks (GitHub's push fixture) posted one at a time, each after the previous one
   arrived at the target: POST written → target received. The floor: the same webhooks posted straight
   to the target, one at a time.
B. **Throughput.** ``-m`` webhooks sent by ``-c`` concurrent keep-alive senders: accepted (201) per second,
   delivered per second, end-to-end latency, and what arrived wrong: lost, duplicated, out of order (by
   the sequence the server gave each one in its 201), body or headers changed. The floor: the same load
   straight to the target.

The sender and the target share this process and its event loop, so both sides of every latency are
``time.perf_counter_ns()`` of one clock. Prints a table and one JSON line, and writes the JSON to
``bench/results/``. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/relay.py`: the repository root, for bench._lib
    sys.path.insert(0, str(ROOT))

from bench._lib import processes, sender  # noqa: E402
from bench._lib import report as reporting  # noqa: E402
from bench._lib.cpu import CpuWindow, PySpy, self_cpu, wait_quiet  # noqa: E402
from bench._lib.target import CHECKED_HEADERS, Recorder, digest, start_target  # noqa: E402

GOAL_LATENCY_P50_MS = 1.0
GOAL_LATENCY_P99_MS = 5.0
GOAL_DELIVERED_PER_S = 1500.0
GOAL_THROUGHPUT_P50_MS = 50.0

#: Consecutive webhooks of measure A that may fail to arrive before the measure gives up.
MAX_LOST_IN_A_ROW = 5
#: How often the wait for the last arrivals of measure B looks at what arrived.
DRAIN_POLL_S = 0.02
# ---------------------------------------------------------------------------------------------------
# The webhooks


class Webhooks:
    """Pre-built requests for one destination (the server, or the target directly).

    The headers are ``bench._lib.sender.Webhook``'s (GitHub's set). With ``unique_bodies`` each body also carries its
    delivery id (``{"bench_delivery": "<id>", …the fixture…}``, same length for all), so a body delivered
    with another event's headers is caught. ``repositories`` spreads the webhooks over several
    repository ids (``X-GitHub-Hook-Installation-Target-ID``), round robin by index.
    """

    def __init__(
        self,
        fixture: Path,
        host: str,
        port: int,
        path: str,
        repositories: list[str],
        unique_bodies: bool,
        base: int,
    ) -> None:
        plain = sender.Webhook.build(fixture, host, port, path)
        fixture_body = fixture.read_bytes()
        self.base = base
        self.repositories = repositories
        self.unique_bodies = unique_bodies
        if unique_bodies:
            text = fixture_body.lstrip()
            if not text.startswith(b"{"):
                raise SystemExit(f"{fixture}: not a JSON object; each body carries its delivery id, or use --same-body")
            self.body_head, self.body_tail = b'{"bench_delivery": "', b'", ' + text[1:]
            length = len(self.body_head) + 36 + len(self.body_tail)
        else:
            self.body_head, self.body_tail = fixture_body, b""
            length = len(fixture_body)
        self.body_bytes = length
        old_length = f"Content-Length: {plain.body_bytes}\r\n".encode()
        old_target = f"X-GitHub-Hook-Installation-Target-ID: {plain.repository_id}\r\n".encode()
        assert old_length in plain.head and old_target in plain.head, "Webhook's header layout changed"
        self.heads = [
            plain.head.replace(old_length, f"Content-Length: {length}\r\n".encode()).replace(
                old_target, f"X-GitHub-Hook-Installation-Target-ID: {repository}\r\n".encode()
            )
            for repository in repositories
        ]
        # What the target must see of CHECKED_HEADERS, per repository (the delivery id filled in later).
        parsed = dict(
            (name.strip().lower().encode(), value.strip().encode())
            for name, _, value in (line.partition(":") for line in plain.head.decode("latin-1").split("\r\n")[1:])
        )
        self._expected_headers: list[list[bytes | None]] = []
        for repository in repositories:
            values: list[bytes | None] = []
            for name in CHECKED_HEADERS:
                if name == b"x-github-delivery":
                    values.append(None)  # filled in per webhook
                elif name == b"x-github-hook-installation-target-id":
                    values.append(repository.encode())
                else:
                    values.append(parsed.get(name, b""))
            self._expected_headers.append(values)

    def delivery(self, index: int) -> str:
        return sender.delivery_id(self.base, index)

    def repository(self, index: int) -> str:
        return self.repositories[index % len(self.repositories)]

    def body(self, index: int, delivery: str | None = None) -> bytes:
        if not self.unique_bodies:
            return self.body_head
        return b"".join((self.body_head, (delivery or self.delivery(index)).encode("ascii"), self.body_tail))

    def request(self, index: int, delivery: str | None = None) -> bytes:
        delivery = delivery or self.delivery(index)
        head = self.heads[index % len(self.heads)]
        return b"".join((head, delivery.encode("ascii"), b"\r\n\r\n", self.body(index, delivery)))

    def expected_headers(self, index: int, delivery: str) -> bytes:
        values = self._expected_headers[index % len(self.heads)]
        return b"\n".join(delivery.encode("ascii") if v is None else v for v in values)


# ---------------------------------------------------------------------------------------------------
# Measure A: one at a time


@dataclass
class Sequential:
    to_target: list[float] = field(default_factory=list)  # seconds: POST written → target received
    to_answer: list[float] = field(default_factory=list)  # seconds: POST written → answer read
    statuses: Counter[int] = field(default_factory=Counter)
    lost: int = 0
    arrived_before_answer: int = 0
    body_mismatches: int = 0
    header_mismatches: int = 0
    duplicated: int = 0


async def one_at_a_time(
    connection: sender.HttpConnection,
    webhooks: Webhooks,
    recorder: Recorder,
    indices: range,
    warmup: int,
    ok_status: int,
    arrival_timeout: float,
    deadline: float,
    gap_s: float,
    alive: Callable[[], None],
) -> Sequential:
    """POST each webhook after the previous one arrived at the target (and its answer was read)."""
    result = Sequential()
    lost_in_a_row = 0
    measured_ids: list[tuple[int, str]] = []
    for count, index in enumerate(indices):
        if time.monotonic() > deadline:
            raise TimeoutError("measure A did not finish within --phase-timeout")
        alive()
        measured = count >= warmup
        delivery = webhooks.delivery(index)
        request = webhooks.request(index, delivery)
        arrival = recorder.expect(delivery)
        started = time.perf_counter_ns()
        try:
            status, _ = await connection.exchange_within(request, sender.REQUEST_TIMEOUT_S)
        except sender.TRANSPORT_ERRORS as exc:
            recorder.forget(delivery)
            if measured:
                result.statuses[0] += 1
            lost_in_a_row += 1
            if lost_in_a_row > MAX_LOST_IN_A_ROW:
                raise RuntimeError(f"{lost_in_a_row} requests in a row failed, the last with {exc!r}") from exc
            continue
        answered = time.perf_counter_ns()
        if measured:
            result.statuses[status] += 1
        if status != ok_status:
            recorder.forget(delivery)
            continue
        try:
            at = await asyncio.wait_for(arrival, arrival_timeout)
        except TimeoutError:
            recorder.forget(delivery)
            lost_in_a_row += 1
            if measured:
                result.lost += 1
            if lost_in_a_row > MAX_LOST_IN_A_ROW:
                raise RuntimeError(
                    f"{lost_in_a_row} webhooks in a row did not reach the target within {arrival_timeout} s"
                ) from None
            continue
        lost_in_a_row = 0
        if measured:
            result.to_target.append((at - started) / 1e9)
            result.to_answer.append((answered - started) / 1e9)
            result.arrived_before_answer += at < answered
            measured_ids.append((index, delivery))
        if gap_s:
            await asyncio.sleep(gap_s)
    await asyncio.sleep(0.05)  # a duplicate would come right after
    _check_arrivals(result, measured_ids, webhooks, recorder)
    return result


def _check_arrivals(
    result: Sequential, measured: list[tuple[int, str]], webhooks: Webhooks, recorder: Recorder
) -> None:
    """Count duplicates, and arrivals whose body or headers differ from what was sent."""
    expected_digest = None if webhooks.unique_bodies else digest(webhooks.body(0))
    for index, delivery in measured:
        arrivals = recorder.arrivals.get(delivery, [])
        result.duplicated += len(arrivals) > 1
        want = expected_digest or digest(webhooks.body(index, delivery))
        want_headers = webhooks.expected_headers(index, delivery)
        result.body_mismatches += sum(a.body_digest != want for a in arrivals)
        result.header_mismatches += sum(a.headers != want_headers for a in arrivals)


def sequential_figures(result: Sequential) -> dict[str, Any]:
    return {
        "statuses": {str(k) if k else "error": v for k, v in sorted(result.statuses.items())},
        "post_to_target": reporting.percentiles(result.to_target),
        "post_to_answer": reporting.percentiles(result.to_answer),
        "arrived_before_answer": result.arrived_before_answer,
        "lost": result.lost,
        "duplicated": result.duplicated,
        "body_mismatches": result.body_mismatches,
        "header_mismatches": result.header_mismatches,
    }


# ---------------------------------------------------------------------------------------------------
# Measure B: concurrent senders


@dataclass
class SendLog:
    """Per request of one concurrent run, by position in ``indices``."""

    indices: list[int]
    ids: list[str]
    started_ns: array.array[int]
    answered_ns: array.array[int]
    status: array.array[int]
    sequence: array.array[int]
    errors: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0

    @classmethod
    def empty(cls, indices: list[int], ids: list[str]) -> SendLog:
        n = len(indices)
        return cls(indices, ids, array.array("q", [0] * n), array.array("q", [0] * n),
                   array.array("i", [-1] * n), array.array("q", [0] * n))  # fmt: skip


async def concurrent_send(
    host: str,
    port: int,
    webhooks: Webhooks,
    log: SendLog,
    concurrency: int,
    ok_status: int,
    deadline: float,
    rate: float = 0,
) -> None:
    """``concurrency`` keep-alive connections take the next webhook as soon as their previous answer arrived;
    with ``rate``, webhook k is not sent before k / rate seconds after the start (an open-loop load)."""
    connections = [sender.HttpConnection(host, port) for _ in range(concurrency)]
    async with asyncio.timeout(30):
        await asyncio.gather(*(c.connect() for c in connections))
    requests = [webhooks.request(i, d) for i, d in zip(log.indices, log.ids, strict=True)]
    work: Iterator[int] = iter(range(len(log.indices)))
    begin = time.perf_counter()

    async def send_on(connection: sender.HttpConnection) -> None:
        reconnects = 0
        for k in work:
            if time.monotonic() > deadline:
                log.errors["phase-timeout"] += 1
                return
            if rate and (wait := begin + k / rate - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            started = time.perf_counter_ns()
            log.started_ns[k] = started
            try:
                status, body = await connection.exchange_within(requests[k], sender.REQUEST_TIMEOUT_S)
            except sender.TRANSPORT_ERRORS as exc:
                log.errors[type(exc).__name__] += 1
                status, body = 0, b""
                reconnects += 1
                log.reconnects += 1
            log.answered_ns[k] = time.perf_counter_ns()
            log.status[k] = status
            if status == ok_status == 201:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    log.sequence[k] = int(json.loads(body)["sequence"])
            if reconnects > sender.MAX_RECONNECTS:
                log.errors["gave-up"] += 1
                return

    try:
        await asyncio.gather(*(send_on(c) for c in connections))
    finally:
        for c in connections:
            c.close()


async def wait_arrivals(
    recorder: Recorder, ids: list[str], drain_timeout: float, deadline: float, alive: Callable[[], None]
) -> float:
    """Wait until every one of ``ids`` arrived, or nothing new arrived for ``drain_timeout`` s, or the deadline.
    Returns the seconds waited."""
    started = time.monotonic()
    pending = {d for d in ids if d not in recorder.arrivals}
    last_progress = time.monotonic()
    while pending:
        now = time.monotonic()
        if now - last_progress > drain_timeout or now > deadline:
            break
        alive()
        await asyncio.sleep(DRAIN_POLL_S)
        before = len(pending)
        pending = {d for d in pending if d not in recorder.arrivals}
        if len(pending) < before:
            last_progress = time.monotonic()
    return time.monotonic() - started


def concurrent_figures(log: SendLog, webhooks: Webhooks, recorder: Recorder, ok_status: int) -> dict[str, Any]:
    """Rates, latencies and the correctness counts of one concurrent run."""
    n = len(log.indices)
    sent = [k for k in range(n) if log.status[k] >= 0]
    accepted = [k for k in sent if log.status[k] == ok_status]
    first_post = min((log.started_ns[k] for k in sent), default=0)
    last_answer = max((log.answered_ns[k] for k in accepted), default=first_post)
    statuses = Counter(log.status[k] for k in sent)
    position = {d: k for k, d in enumerate(log.ids)}

    latencies: list[float] = []
    answer_latencies = [(log.answered_ns[k] - log.started_ns[k]) / 1e9 for k in sent]
    last_arrival = first_post
    lost = duplicated = extra_arrivals = body_mismatches = header_mismatches = 0
    expected_digest = None if webhooks.unique_bodies else digest(webhooks.body(0))
    for k in accepted:
        delivery = log.ids[k]
        arrivals = recorder.arrivals.get(delivery)
        if not arrivals:
            lost += 1
            continue
        latencies.append((arrivals[0].at_ns - log.started_ns[k]) / 1e9)
        last_arrival = max(last_arrival, arrivals[0].at_ns)
        if len(arrivals) > 1:
            duplicated += 1
            extra_arrivals += len(arrivals) - 1
        index = log.indices[k]
        want = expected_digest or digest(webhooks.body(index, delivery))
        want_headers = webhooks.expected_headers(index, delivery)
        body_mismatches += sum(a.body_digest != want for a in arrivals)
        header_mismatches += sum(a.headers != want_headers for a in arrivals)

    # Order: first arrivals, in the order the target saw them, against the sequence of each 201.
    out_of_order = 0
    highest: dict[str, int] = {}
    seen: set[str] = set()
    for delivery in recorder.order:
        at = position.get(delivery)
        if at is None or delivery in seen or log.status[at] != ok_status or ok_status != 201:
            continue
        seen.add(delivery)
        repository, sequence = webhooks.repository(log.indices[at]), log.sequence[at]
        if sequence < highest.get(repository, 0):
            out_of_order += 1
        else:
            highest[repository] = sequence

    arrived = len(latencies)
    accept_wall = (last_answer - first_post) / 1e9
    deliver_wall = (last_arrival - first_post) / 1e9
    per_second = [0] * (int(deliver_wall) + 1)
    for k in accepted:
        if arrivals := recorder.arrivals.get(log.ids[k]):
            per_second[min(len(per_second) - 1, int((arrivals[0].at_ns - first_post) / 1e9))] += 1
    return {
        "sent": len(sent),
        "statuses": {str(k) if k else "error": v for k, v in sorted(statuses.items())},
        "transport_errors": dict(log.errors),
        "reconnects": log.reconnects,
        "accepted": len(accepted),
        "accepted_per_s": round(len(accepted) / accept_wall, 1) if accept_wall > 0 else None,
        "accept_wall_s": round(accept_wall, 4),
        "arrived": arrived,
        "delivered_per_s": round(arrived / deliver_wall, 1) if deliver_wall > 0 else None,
        "deliver_wall_s": round(deliver_wall, 4),
        "end_to_end": reporting.percentiles(latencies),
        "post_to_answer": reporting.percentiles(answer_latencies),
        "lost": lost,
        "duplicated": duplicated,
        "extra_arrivals": extra_arrivals,
        "out_of_order": out_of_order if ok_status == 201 else None,
        "body_mismatches": body_mismatches,
        "header_mismatches": header_mismatches,
        "delivered_each_second": per_second,
    }


# ---------------------------------------------------------------------------------------------------
# The run


@dataclass
class Setup:
    """Where everything listens, and what the bench started."""

    server_host: str
    server_port: int
    server_path: str
    target_host: str
    target_port: int
    server_pid: int | None = None
    client_pid: int | None = None
    client_health_port: int | None = None
    server: processes.ServerUnderTest | None = None
    client: processes.ClientUnderTest | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def alive(self) -> None:
        """Raise if a process the bench started has exited."""
        for name, process in (("server", self.server), ("client", self.client)):
            if process is not None and process.process is not None and process.process.poll() is not None:
                tail = "".join(list(process.log)[-20:])
                raise RuntimeError(f"the {name} exited with {process.process.returncode}:\n{tail}")


class LoopLag:
    """How long a callback made ready waits for this process's event loop, sampled every ~``interval`` s.

    The target answers inside the loop it shares with the senders, so this is how long a request that
    reached the target may wait for its turn: if it grows, the bench itself slows the relay down.
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while len(self.samples) < 1_000_000:
            await asyncio.sleep(self.interval)
            ready = loop.create_future()
            marked = time.perf_counter()
            loop.call_soon(ready.set_result, None)
            await ready
            self.samples.append(time.perf_counter() - marked)

    def start(self) -> None:
        self.samples.clear()
        self.task = asyncio.create_task(self._run())

    def stop(self) -> dict[str, Any]:
        if self.task is not None:
            self.task.cancel()
        return reporting.percentiles(self.samples)


class Cpu:
    """CPU of the server, the client and this process (sender + target) over one stretch of a measure."""

    def __init__(self, setup: Setup) -> None:
        self.server = CpuWindow(setup.server_pid)
        self.client = CpuWindow(setup.client_pid)
        self.bench0 = 0.0
        self.bench_s = 0.0
        self.lag = LoopLag()
        self.lag_figures: dict[str, Any] = {}

    def start(self) -> None:
        self.server.start()
        self.client.start()
        self.bench0 = self_cpu()
        self.lag.start()

    def stop(self) -> None:
        self.lag_figures = self.lag.stop()
        self.server.stop()
        self.client.stop()
        self.bench_s = self_cpu() - self.bench0

    def figures(self, events: int) -> dict[str, Any]:
        server = self.server.server(events)
        client = self.client.server(events)
        wall = self.server.wall_s
        accounted = self.bench_s + (server or {}).get("cpu_s", 0.0) + (client or {}).get("cpu_s", 0.0)
        return {
            "wall_s": round(wall, 3),
            "server": server,
            "client": client,
            "bench_sender_and_target": {
                "cpu_s": round(self.bench_s, 3),
                "cpu_pct": reporting.pct(self.bench_s, wall),
                "us_per_event": round(1e6 * self.bench_s / max(1, events), 1),
                "loop_lag": self.lag_figures,
            },
            "machine": self.server.machine(accounted),
        }


def _spies(args: argparse.Namespace, setup: Setup, name: str, stamp: str, folder: Path) -> dict[str, PySpy]:
    if not args.py_spy:
        return {}
    spies: dict[str, PySpy] = {}
    for role, pid in (("server", setup.server_pid), ("client", setup.client_pid)):
        if pid:
            spies[role] = PySpy(pid, folder / f"relay-{stamp}-{name}-{role}-pyspy.txt", args.py_spy_rate)
    return spies


def _stop_spies(spies: dict[str, PySpy]) -> dict[str, Any]:
    return {role: spy.stop() for role, spy in spies.items()}


async def measure_latency(
    args: argparse.Namespace, setup: Setup, recorder: Recorder, spy: Callable[[str], dict[str, PySpy]]
) -> dict[str, Any]:
    fixture = Path(args.fixture)
    repository = args.repository_ids[0]
    base = uuid.uuid4().int
    relay = Webhooks(fixture, setup.server_host, setup.server_port, setup.server_path, [repository], False, base)
    direct = Webhooks(fixture, setup.target_host, setup.target_port, "/hook", [repository], False, base)
    deadline = time.monotonic() + args.phase_timeout
    n, warmup = args.latency_webhooks, args.latency_warmup
    gap = args.gap_ms / 1000

    cpu = Cpu(setup)
    connection = sender.HttpConnection(setup.server_host, setup.server_port)
    try:
        # Warm-up outside the CPU window and the profile.
        await one_at_a_time(connection, relay, recorder, range(0, warmup), warmup, 201,
                            args.arrival_timeout, deadline, gap, setup.alive)  # fmt: skip
        spies = spy("latency")
        cpu.start()
        try:
            relayed = await one_at_a_time(connection, relay, recorder, range(warmup, warmup + n), 0, 201,
                                          args.arrival_timeout, deadline, gap, setup.alive)  # fmt: skip
        finally:
            cpu.stop()
            profiles = _stop_spies(spies)
    finally:
        connection.close()
    connection = sender.HttpConnection(setup.target_host, setup.target_port)
    try:
        offset = 10_000_000  # other delivery ids than the relayed ones
        floor = await one_at_a_time(connection, direct, recorder, range(offset, offset + warmup + n), warmup, 200,
                                    args.arrival_timeout, deadline, gap, setup.alive)  # fmt: skip
    finally:
        connection.close()
    relay_figures, direct_figures = sequential_figures(relayed), sequential_figures(floor)

    def ratio(key: str) -> float | None:
        return _ratio(relay_figures["post_to_target"][key], direct_figures["post_to_target"][key])

    return {
        "webhooks": n,
        "warmup": warmup,
        "gap_ms": args.gap_ms,
        "body_bytes": relay.body_bytes,
        "repository_id": repository,
        "relay": relay_figures,
        "direct": direct_figures,
        "ratio_relay_to_direct": {"p50": ratio("p50_ms"), "p99": ratio("p99_ms")},
        "cpu_relay_part": cpu.figures(n),
        **({"py_spy": profiles} if profiles else {}),
    }


def _ratio(relay: float | None, direct: float | None) -> float | None:
    """``relay / direct`` to one decimal, or None when either is missing or the floor is 0."""
    return round(relay / direct, 1) if relay is not None and direct else None


async def _concurrent_run(
    args: argparse.Namespace,
    setup: Setup,
    recorder: Recorder,
    webhooks: Webhooks,
    host: str,
    port: int,
    ok_status: int,
    first_index: int,
    spy: Callable[[], dict[str, PySpy]] | None,
) -> dict[str, Any]:
    deadline = time.monotonic() + args.phase_timeout
    warm = list(range(first_index, first_index + args.throughput_warmup))
    if warm:
        log = SendLog.empty(warm, [webhooks.delivery(i) for i in warm])
        await concurrent_send(host, port, webhooks, log, args.concurrency, ok_status, deadline)
        ok = [log.ids[k] for k in range(len(warm)) if log.status[k] == ok_status]
        await wait_arrivals(recorder, ok, args.drain_timeout, deadline, setup.alive)
    measured = list(range(first_index + len(warm), first_index + len(warm) + args.throughput_webhooks))
    log = SendLog.empty(measured, [webhooks.delivery(i) for i in measured])
    spies = spy() if spy is not None else {}
    cpu = Cpu(setup)
    cpu.start()
    try:
        await concurrent_send(host, port, webhooks, log, args.concurrency, ok_status, deadline, args.rate)
        sent_s = time.monotonic()
        ok = [log.ids[k] for k in range(len(measured)) if log.status[k] == ok_status]
        await wait_arrivals(recorder, ok, args.drain_timeout, deadline, setup.alive)
        waited_after_sending = time.monotonic() - sent_s
    finally:
        cpu.stop()
        profiles = _stop_spies(spies)
    await asyncio.sleep(0.2)  # duplicates, if any, come right after
    figures = concurrent_figures(log, webhooks, recorder, ok_status)
    figures["waited_for_arrivals_after_last_answer_s"] = round(waited_after_sending, 3)
    figures["cpu"] = cpu.figures(len(measured))
    if profiles:
        figures["py_spy"] = profiles
    return figures


async def measure_throughput(
    args: argparse.Namespace, setup: Setup, recorder: Recorder, spy: Callable[[str], dict[str, PySpy]]
) -> dict[str, Any]:
    fixture = Path(args.fixture)
    base = uuid.uuid4().int
    repositories = args.repository_ids
    unique = not args.same_body
    relay = Webhooks(fixture, setup.server_host, setup.server_port, setup.server_path, repositories, unique, base)
    direct = Webhooks(fixture, setup.target_host, setup.target_port, "/hook", repositories, unique, base)
    relayed = await _concurrent_run(args, setup, recorder, relay, setup.server_host, setup.server_port, 201,
                                    0, lambda: spy("throughput"))  # fmt: skip
    floor = await _concurrent_run(args, setup, recorder, direct, setup.target_host, setup.target_port, 200,
                                  10_000_000, None)  # fmt: skip
    floor.pop("cpu", None)
    return {
        "webhooks": args.throughput_webhooks,
        "warmup": args.throughput_warmup,
        "concurrency": args.concurrency,
        "rate_per_s": args.rate or None,
        "repositories": repositories,
        "body_bytes": relay.body_bytes,
        "unique_bodies": unique,
        "relay": relayed,
        "direct": floor,
        "ratio_direct_to_relay_per_s": _ratio(floor["accepted_per_s"], relayed["delivered_per_s"]),
        "ratio_relay_to_direct": {
            "p50": _ratio(relayed["end_to_end"]["p50_ms"], floor["end_to_end"]["p50_ms"]),
            "p99": _ratio(relayed["end_to_end"]["p99_ms"], floor["end_to_end"]["p99_ms"]),
        },
    }


def goals(report: dict[str, Any]) -> dict[str, bool]:
    found: dict[str, bool] = {}
    if a := report.get("latency"):
        p = a["relay"]["post_to_target"]
        found[f"A: p50 <= {GOAL_LATENCY_P50_MS:g} ms"] = p["p50_ms"] is not None and p["p50_ms"] <= GOAL_LATENCY_P50_MS
        found[f"A: p99 <= {GOAL_LATENCY_P99_MS:g} ms"] = p["p99_ms"] is not None and p["p99_ms"] <= GOAL_LATENCY_P99_MS
    if b := report.get("throughput"):
        r = b["relay"]
        at = f" at {b['rate_per_s']:g}/s" if b.get("rate_per_s") else ""
        if not at:  # with --rate the senders, not the relay, set the pace
            rate_ok = (r["delivered_per_s"] or 0) >= GOAL_DELIVERED_PER_S
            found[f"B: >= {GOAL_DELIVERED_PER_S:,.0f} deliveries/s"] = rate_ok
        p50 = r["end_to_end"]["p50_ms"]
        found[f"B: p50 < {GOAL_THROUGHPUT_P50_MS:g} ms{at}"] = p50 is not None and p50 < GOAL_THROUGHPUT_P50_MS
        found["B: in order per repository"] = r["out_of_order"] == 0
        found["B: zero lost"] = r["lost"] == 0 and r["accepted"] == b["webhooks"]
    return found


async def wait_relay_ready(setup: Setup, recorder: Recorder, repository: str, fixture: Path, timeout: float) -> float:
    """Post a marker webhook and wait until it reaches the target (the whole chain works); the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    webhooks = Webhooks(fixture, setup.server_host, setup.server_port, setup.server_path, [repository], False,
                        uuid.uuid4().int)  # fmt: skip
    delivery = webhooks.delivery(0)
    arrival = recorder.expect(delivery)
    connection = sender.HttpConnection(setup.server_host, setup.server_port)
    try:
        while True:  # the same delivery id again until the server answers: it is stored once
            setup.alive()
            try:
                status, body = await connection.exchange_within(webhooks.request(0, delivery), sender.REQUEST_TIMEOUT_S)
            except sender.TRANSPORT_ERRORS:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the server did not answer within {timeout} s") from None
                await asyncio.sleep(0.2)
                continue
            if status not in (201, 204):
                raise RuntimeError(f"the server answered the marker webhook with {status}: {body[:300]!r}")
            break
        while True:
            setup.alive()
            try:
                await asyncio.wait_for(asyncio.shield(arrival), 0.5)
                return time.monotonic() - started
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"a webhook the server stored did not reach the target within {timeout} s"
                    ) from None
    finally:
        recorder.forget(delivery)
        connection.close()


async def run(
    args: argparse.Namespace, report: dict[str, Any], stamp: str, started: list[processes.ServerUnderTest]
) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    recorder = Recorder()
    tmpdir = tempfile.mkdtemp(prefix="gitstafette-relay-")
    external = bool(args.ingest_url)
    target_host = args.target_host
    target = await start_target(recorder, target_host, args.target_port if external else 0)
    target_port = target.sockets[0].getsockname()[1]
    setup: Setup | None = None
    try:
        if external:
            parts = urlsplit(args.ingest_url)
            path = parts.path if parts.path not in ("", "/") else "/v1/github/"
            setup = Setup(parts.hostname or "127.0.0.1", parts.port or 80, path, target_host, target_port,
                          server_pid=args.server_pid, client_pid=args.client_pid)  # fmt: skip
            setup.config = {
                "mode": "external",
                "server": f"external: {args.ingest_url}" + (f" (pid {args.server_pid})" if args.server_pid else ""),
                "client": "external" + (f" (pid {args.client_pid})" if args.client_pid else ""),
                "store": args.store_label or "(external)",
            }
        else:
            store_url, _ = processes.resolve_store(args.store, tmpdir)
            server = processes.ServerUnderTest(store_url, "warning", args.server_arg, args.src)
            started.append(server)
            await asyncio.to_thread(server.start)
            grpc_target = f"{server.host}:{server.grpc_port}"
            command = [sys.executable, "-m", "gitstafette", "client", "--insecure", "--server", grpc_target,
                       "--repositories", ",".join(args.repository_ids), "--client-id", args.client_id,
                       "--target", f"http://{target_host}:{target_port}/hook", "--health-host", "127.0.0.1",
                       "--health-port", "0", "--log-level", "warning", *args.client_arg]  # fmt: skip
            client = processes.ClientUnderTest(command, args.src)
            started.append(client)
            await asyncio.to_thread(client.start)
            setup = Setup(server.host, server.http_port, "/v1/github/", target_host, target_port,
                          server_pid=server.pid, client_pid=client.pid, client_health_port=client.health_port,
                          server=server, client=client)  # fmt: skip
            setup.config = {
                "mode": "started here",
                "server": f"pid {server.pid}: HTTP {server.host}:{server.http_port}, gRPC {grpc_target}",
                "client": f"pid {client.pid}: health 127.0.0.1:{client.health_port}, client id {args.client_id}",
                "store": store_url,
                **({"src": str(args.src)} if args.src else {}),
                "server_command": " ".join(server.command),
                "client_command": " ".join(command),
            }
            report["client_connected"] = await asyncio.to_thread(client.wait_connected, 30)
        # the sources the processes just loaded (--src, else the editable install)
        report["git_at_start"] = reporting.git_state(args.checkout)
        setup.config["target"] = f"{target_host}:{target_port} (this process, {loop.__class__.__module__})"
        report["config"] = {
            **setup.config,
            **{k: getattr(args, k) for k in ("latency_webhooks", "latency_warmup", "throughput_webhooks",
                                             "throughput_warmup", "concurrency", "rate", "gap_ms", "repository_ids")},
            "fixture": str(args.fixture),
        }  # fmt: skip
        report["first_delivery_s"] = round(
            await wait_relay_ready(setup, recorder, args.repository_ids[0], Path(args.fixture), args.ready_timeout), 3
        )
        spy_folder = args.results if not args.no_save else Path(tmpdir)
        spy_folder.mkdir(parents=True, exist_ok=True)

        def spy(name: str) -> dict[str, PySpy]:
            assert setup is not None
            return _spies(args, setup, name, stamp, spy_folder)

        if not args.skip_latency:
            if args.wait_quiet:
                report["quiet_before_latency"] = await asyncio.to_thread(wait_quiet, args.wait_quiet)
            report["latency"] = await measure_latency(args, setup, recorder, spy)
        if not args.skip_throughput:
            if args.wait_quiet:
                report["quiet_before_throughput"] = await asyncio.to_thread(wait_quiet, args.wait_quiet)
            report["throughput"] = await measure_throughput(args, setup, recorder, spy)
        report["goals"] = goals(report)
        if setup.server_port:
            report["server_counters"] = await asyncio.to_thread(
                processes.server_counters, f"http://{setup.server_host}:{setup.server_port}"
            )
        report["client_counters"] = await asyncio.to_thread(processes.client_counters, setup.client_health_port)
        report["target"] = {
            "requests": recorder.requests,
            "connections": recorder.connections,
            "bad_requests": recorder.bad_requests,
            "unknown_delivery": len(recorder.arrivals.get("", [])),
        }
    finally:
        # Stop the client first (it acknowledges what it delivered), then the server; the target keeps
        # answering meanwhile, so a delivery in flight can finish.
        for process in reversed(started):
            await asyncio.to_thread(process.stop, 30)
        target.close()
        shutil.rmtree(tmpdir, ignore_errors=True)
        report["git_at_end"] = reporting.git_state(args.checkout)


# ---------------------------------------------------------------------------------------------------
# Report


def _cpu_text(cpu: dict[str, Any]) -> str:
    parts = []
    for role in ("server", "client"):
        if figures := cpu.get(role):
            parts.append(f"{role} {figures['cpu_pct']:.0f} % (main thread {figures['main_thread_pct']:.0f} %)")
    bench = cpu["bench_sender_and_target"]
    parts.append(f"bench {bench['cpu_pct']:.0f} %")
    if (m := cpu.get("machine")) and m.get("others_pct_of_one_core") is not None:
        parts.append(f"others {m['others_pct_of_one_core']:.0f} %")
    text = ", ".join(parts) + " of one core"
    if (lag := bench.get("loop_lag") or {}).get("n"):
        text += f"; bench loop lag p50 {lag['p50_ms']:.2f} / p99 {lag['p99_ms']:.2f} ms"
    return text


def _count_text(figures: dict[str, Any], keys: tuple[str, ...]) -> str:
    return " / ".join(str(figures.get(k)) for k in keys)


def _print_header(report: dict[str, Any]) -> None:
    m, cfg = report["machine"], report.get("config", {})
    print()
    print(f"gitstafette relay benchmark  {report['time']}")
    print(f"  machine  {m['nproc']} CPUs ({m.get('cpu', '?')}), Python {m['python']}")
    for key in ("server", "client", "store", "target"):
        print(f"  {key:<7}  {cfg.get(key, '?')}")
    g = report.get("git_at_start") or report.get("git_at_end") or {}
    if g.get("head"):
        print(f"  commit   {reporting.commit_text(g)}")
        end = report.get("git_at_end") or {}
        if end and (end.get("head"), end.get("changed_sha256_16")) != (g.get("head"), g.get("changed_sha256_16")):
            print("  NOTE     the sources changed during the run (see git_at_start / git_at_end in the JSON)")
    for key in ("quiet_before_latency", "quiet_before_throughput"):
        if q := report.get(key):
            state = "" if q["quiet"] else " (NOT quiet: figures are pessimistic)"
            busy = f"{q['busy_pct_of_all_cores']:.0f} % busy after {q['waited_s']:.0f} s"
            print(f"  {key.replace('_', ' ')}: {busy}{state}")
    if "first_delivery_s" in report:
        print(f"  ready    first webhook reached the target {report['first_delivery_s']:.3f} s after the bench sent it")


def _print_latency(a: dict[str, Any]) -> None:
    r, d = a["relay"], a["direct"]
    print()
    print(f"Measure A - latency: {a['webhooks']} webhooks of {a['body_bytes']:,} B one at a time, each after "
          f"the previous one arrived ({a['warmup']} warm-up first)")  # fmt: skip
    ratio = a["ratio_relay_to_direct"]
    before = f"{r['arrived_before_answer']} of {r['post_to_target']['n']}"
    table = [
        ("relay: POST -> target received", reporting.latency_text(r["post_to_target"]),
         f"p50/p90/p99/max; goal p50 <= {GOAL_LATENCY_P50_MS:g} ms, p99 <= {GOAL_LATENCY_P99_MS:g} ms"),
        ("relay: POST -> 201 answer", reporting.latency_text(r["post_to_answer"]),
         f"the event reached the target before the 201 in {before}"),
        ("direct: POST -> target received", reporting.latency_text(d["post_to_target"]), "the floor: no relay"),
        ("relay / direct", f"p50 x{ratio['p50']}, p99 x{ratio['p99']}", ""),
        ("statuses relay | direct", f"{r['statuses']} | {d['statuses']}", ""),
        ("lost / duplicated / body / header mismatches", _count_text(r, ("lost", "duplicated",
         "body_mismatches", "header_mismatches")), "relay"),
        ("CPU during the relay part", _cpu_text(a["cpu_relay_part"]), ""),
    ]  # fmt: skip
    reporting.rows(table)


def _print_throughput(b: dict[str, Any]) -> None:
    r, d = b["relay"], b["direct"]
    print()
    rate = f" at most {b['rate_per_s']:g}/s," if b.get("rate_per_s") else ""
    print(f"Measure B - throughput: {b['webhooks']} webhooks of {b['body_bytes']:,} B, {b['concurrency']} keep-alive "
          f"senders,{rate} {len(b['repositories'])} repository(ies), {b['warmup']} warm-up first")  # fmt: skip
    table = [
        ("accepted (201) per second", f"{r['accepted_per_s'] or 0:,.0f}", f"{r['accepted']} accepted in "
         f"{r['accept_wall_s']:.2f} s"),
        ("delivered per second", f"{r['delivered_per_s'] or 0:,.0f}",
         f"first POST to last arrival, {r['deliver_wall_s']:.2f} s; goal >= {GOAL_DELIVERED_PER_S:,.0f}"),
        ("end-to-end p50 / p90 / p99 / max", reporting.latency_text(r["end_to_end"]),
         f"goal p50 < {GOAL_THROUGHPUT_P50_MS:g} ms"),
        ("POST -> 201 p50 / p90 / p99 / max", reporting.latency_text(r["post_to_answer"]), ""),
        ("lost / duplicated / out of order", _count_text(r, ("lost", "duplicated", "out_of_order")),
         "out of order: arrived after a later sequence of its repository"),
        ("body / header mismatches", _count_text(r, ("body_mismatches", "header_mismatches")), ""),
        ("statuses", ", ".join(f"{k}: {v}" for k, v in r["statuses"].items()),
         json.dumps(r["transport_errors"]) if r["transport_errors"] else ""),
        ("CPU", _cpu_text(r["cpu"]), ""),
        ("direct: answered (200) per second", f"{d['accepted_per_s'] or 0:,.0f}", "the floor: same load, "
         "straight to the target"),
        ("direct: POST -> target p50 / p90 / p99 / max", reporting.latency_text(d["end_to_end"]),
         f"lost {d['lost']}, body mismatches {d['body_mismatches']}"),
        ("relay / direct", f"end-to-end p50 x{b['ratio_relay_to_direct']['p50']}, "
         f"p99 x{b['ratio_relay_to_direct']['p99']}",
         f"the direct floor passes x{b['ratio_direct_to_relay_per_s']} the relay's deliveries per second"),
    ]  # fmt: skip
    reporting.rows(table)


def _print_profiles(report: dict[str, Any]) -> None:
    for measure in ("latency", "throughput"):
        section = report.get(measure) or {}
        profiles = section.get("py_spy") or (section.get("relay") or {}).get("py_spy") or {}
        for role, spy in profiles.items():
            if not spy.get("top_self"):
                continue
            during = f"measure {'A' if measure == 'latency' else 'B'}"
            reporting.print_profile(role, during, spy, threads=4, own=10, inclusive=12)


def print_table(report: dict[str, Any]) -> None:
    _print_header(report)
    if a := report.get("latency"):
        _print_latency(a)
    if b := report.get("throughput"):
        _print_throughput(b)
    reporting.print_goals(report.get("goals") or {})
    _print_profiles(report)
    print()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = reporting.argument_parser(__doc__)
    under = parser.add_argument_group("what is measured")
    processes.add_server_options(under)
    under.add_argument("--ingest-url", help="use a server and client that already run: the server's webhook URL "
                       "(e.g. http://127.0.0.1:1323/v1/github/); needs --target-port")  # fmt: skip
    under.add_argument("--target-port", type=int, help="with --ingest-url: the port the running client delivers to "
                       "(the bench serves the target there, any path)")  # fmt: skip
    under.add_argument("--target-host", default="127.0.0.1", help="address of the target")
    under.add_argument("--server-pid", type=int, help="with --ingest-url: the server's pid, for CPU and --py-spy")
    under.add_argument("--client-pid", type=int, help="with --ingest-url: the client's pid, for CPU and --py-spy")
    under.add_argument("--store-label", default="", help="with --ingest-url: the store, for the report and file name")
    under.add_argument("--repositories", type=int, default=1, help="measure B spreads the webhooks round robin "
                       "over this many repository ids (the fixture's id, then +1, +2, …)")  # fmt: skip
    under.add_argument("--client-id", default="bench", help="--client-id of the client started here")
    under.add_argument("--server-arg", action="append", default=[], help="extra argument for the server (repeat)")
    under.add_argument("--client-arg", action="append", default=[], help="extra argument for the client (repeat)")
    under.add_argument(
        "--fixture", type=Path, default=sender.DEFAULT_FIXTURE, help="webhook payload (a repository event)"
    )
    a = parser.add_argument_group("measure A: latency")
    a.add_argument("-n", "--latency-webhooks", type=int, default=1000, help="webhooks sent one at a time")
    a.add_argument("--latency-warmup", type=int, default=20, help="webhooks sent first, not measured")
    a.add_argument("--gap-ms", type=float, default=0, help="pause between two webhooks (0: the next at once)")
    a.add_argument("--arrival-timeout", type=float, default=30, help="seconds a webhook may take to reach the target")
    b = parser.add_argument_group("measure B: throughput")
    b.add_argument("-m", "--throughput-webhooks", type=int, default=5000, help="webhooks sent concurrently")
    b.add_argument("-c", "--concurrency", type=int, default=32, help="concurrent senders (one connection each)")
    b.add_argument("--rate", type=float, default=0, help="send at most this many webhooks per second in all (open "
                   "loop: latency at a load the relay can sustain); 0: as fast as the server answers")  # fmt: skip
    b.add_argument("--throughput-warmup", type=int, default=200, help="webhooks sent first, not measured")
    b.add_argument("--same-body", action="store_true", help="send the fixture unchanged (default: each body also "
                   "carries its delivery id, so a body swapped between events is caught)")  # fmt: skip
    b.add_argument("--drain-timeout", type=float, default=30, help="after the last 201, stop waiting for arrivals "
                   "once none came for this long; what did not arrive is lost")  # fmt: skip
    other = parser.add_argument_group("other")
    other.add_argument("--skip-latency", action="store_true", help="only measure B")
    other.add_argument("--skip-throughput", action="store_true", help="only measure A")
    other.add_argument("--phase-timeout", type=float, default=300, help="seconds each measure may take at most")
    other.add_argument("--ready-timeout", type=float, default=60, help="seconds server and client may take to relay "
                       "a first webhook")  # fmt: skip
    other.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                       help="before each measure, wait up to this long for the machine to be nearly idle")  # fmt: skip
    other.add_argument("--py-spy", action="store_true", help="profile server and client with py-spy during the "
                       "relayed part of each measure (needs ptrace rights)")  # fmt: skip
    other.add_argument("--py-spy-rate", type=int, default=200, help="py-spy samples per second")
    other.add_argument("--no-uvloop", action="store_true", help="sender and target on the standard asyncio loop")
    reporting.add_report_options(other)
    args = parser.parse_args(argv)
    args.checkout = args.src.parent if args.src else ROOT  # whose git state the report records
    if bool(args.ingest_url) != bool(args.target_port):
        parser.error("--ingest-url and --target-port go together")
    for name in ("latency_webhooks", "throughput_webhooks", "concurrency", "repositories"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.latency_warmup, args.throughput_warmup) < 0:
        parser.error("warm-up counts must be >= 0")
    first = int(json.loads(Path(args.fixture).read_bytes())["repository"]["id"])
    args.repository_ids = [str(first + k) for k in range(args.repositories)]
    return args


def _store_name(report: dict[str, Any]) -> str:
    store = report.get("config", {}).get("store", "") or "x"
    if report.get("config", {}).get("mode") == "external":
        return re.sub(r"[^a-z0-9]+", "-", store.split(":")[0].lower()).strip("-") or "external"
    return store.split(":")[0].strip("(") or "x"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, processes.raise_on_sigterm)  # outside the event loop: so that `finally` stops them
    stamp = reporting.utc_stamp()
    info = reporting.machine()
    info["loop"] = "uvloop" if sender.has_uvloop() and not args.no_uvloop else "asyncio"
    report: dict[str, Any] = {"bench": "relay", "time": stamp, "label": args.label, "machine": info}
    started: list[processes.ServerUnderTest] = []
    exit_code = 0
    try:
        if sender.has_uvloop() and not args.no_uvloop:
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(run(args, report, stamp, started))
        else:
            asyncio.run(run(args, report, stamp, started))
    except (KeyboardInterrupt, asyncio.CancelledError, Exception) as exc:
        exit_code = reporting.record_failure(report, exc)
    finally:
        for process in reversed(started):  # no-ops when run() stopped them already
            process.stop(30)
    report["processes"] = {
        name: {"exit_code": p.exit_code, "stop_s": p.stop_s, "log_lines": p.log_lines}
        for name, p in zip(("server", "client"), started, strict=False)
    }
    if exit_code or any(p.exit_code not in (0, None) or p.log_lines for p in started):
        report["logs_tail"] = {
            name: "".join(list(p.log)[-20:]) for name, p in zip(("server", "client"), started, strict=False)
        }
    print_table(report)
    if report.get("error"):
        print(f"ERROR: {report['error']}", file=sys.stderr)
        for name, tail in (report.get("logs_tail") or {}).items():
            if tail.strip():
                print(f"{name} log (last lines):\n{tail}", file=sys.stderr)
    reporting.write_report(report, args.results, f"relay-{_store_name(report)}-{stamp}.json", not args.no_save)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
