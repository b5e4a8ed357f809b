#!/usr/bin/env python3
"""Server benchmark: webhook ingest throughput, and POST → gRPC stream latency.

Starts ``python -m gitstafette server`` itself (or, with ``--url``/``--grpc``, measures one that runs),
then:

1. **Ingest throughput.** ``-n`` webhooks (GitHub's push fixture, ~7 KB, each with its own
   ``X-GitHub-Delivery``) sent by ``-c`` concurrent senders, each on one keep-alive connection, as fast as
   the server answers. Reports accepted (201) per second, status counts, the latency of the POSTs, the
   CPU the sender and the server used, and (SQLite) whether every 201 is in the database file.
2. **POST → stream latency.** A gRPC stream is opened (``StreamWebhookEvents``, acknowledging each event;
   or the legacy ``FetchWebhookEvents``), then ``-m`` webhooks are posted one at a time, each after the
   previous one arrived on the stream. Reports the time from just before the POST was written to the
   moment the event came out of the stream.

Prints a table and one JSON line, and writes the JSON to ``bench/results/``. See ``bench/README.md``.

The HTTP sender is deliberately raw: pre-built HTTP/1.1 requests written on persistent asyncio (uvloop)
connections, only the status line and Content-Length of each response parsed, so that on a 2-core
machine shared with the server the sender costs as little CPU as possible. ``--procs`` splits it into
several processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/ingest.py`: the repository root, for bench._lib
    sys.path.insert(0, str(ROOT))

from bench._lib import processes, sender  # noqa: E402
from bench._lib import report as reporting  # noqa: E402
from bench._lib.cpu import CpuWindow, PySpy, wait_quiet  # noqa: E402

GOAL_ACCEPTED_PER_S = 2000.0
GOAL_STREAM_P50_MS = 1.0


# ---------------------------------------------------------------------------------------------------
# Measure 1: ingest throughput. The sender runs in this process, or in --procs processes.


def _sender_specs(args: argparse.Namespace, host: str, port: int, base: int) -> list[sender.SenderSpec]:
    procs = max(1, min(args.procs, args.concurrency))
    measured = list(range(args.warmup, args.warmup + args.requests))
    warmup = list(range(args.warmup))
    return [
        sender.SenderSpec(
            host=host,
            port=port,
            path=args.path,
            fixture=str(args.fixture),
            secret=args.secret,
            base=base,
            indices=measured[k::procs],
            warmup=warmup[k::procs],
            connections=args.concurrency // procs + (1 if k < args.concurrency % procs else 0),
            uvloop=not args.no_uvloop,
            timeout_s=sender.REQUEST_TIMEOUT_S,
        )
        for k in range(procs)
    ]


def measure_ingest(args: argparse.Namespace, host: str, port: int, server_pid: int | None) -> dict[str, Any]:
    """Measure 1. Returns the figures, plus the set of delivery ids answered 201 (key ``_accepted_ids``)."""
    base = uuid.uuid4().int
    specs = _sender_specs(args, host, port, base)
    window = CpuWindow(server_pid)
    results = sender.run_senders(specs, args.phase_timeout, window.start)
    window.stop()

    start, end = min(r.start for r in results), max(r.end for r in results)
    wall = end - start
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    warmup_statuses: Counter[int] = Counter()
    # 201s in each second of the run: shows stalls, and whether the rate drifts as the store grows.
    per_second = [0] * (int(wall) + 1)
    for r in results:
        statuses.update(r.statuses)
        latencies.extend(r.latencies)
        errors.update(r.errors)
        warmup_statuses.update(r.warmup_statuses)
        for at in r.finished:
            per_second[min(len(per_second) - 1, int(at - start))] += 1
    counts = Counter(statuses.values())
    sender_cpu = sum(r.cpu_s for r in results)
    server_cpu = window.server(len(statuses))
    return {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "sender_processes": len(specs),
        "sender_loop": "uvloop" if specs[0].uvloop and sender.has_uvloop() else "asyncio",
        "body_bytes": sender.Webhook.build(Path(args.fixture), host, port, args.path).body_bytes,
        "warmup_requests": args.warmup,
        "warmup_statuses": {str(k): v for k, v in sorted(warmup_statuses.items())},
        "wall_s": round(wall, 4),
        "accepted": counts.get(201, 0),
        "accepted_per_s": round(counts.get(201, 0) / wall, 1) if wall else None,
        "answered_per_s": round(len(statuses) / wall, 1) if wall else None,
        "statuses": {str(k) if k else "error": v for k, v in sorted(counts.items())},
        "transport_errors": dict(errors),
        "reconnects": sum(r.reconnects for r in results),
        "latency": reporting.percentiles(latencies),
        "accepted_each_second": per_second,
        "sender_cpu_s": round(sender_cpu, 3),
        "sender_cpu_pct_of_one_core": reporting.pct(sender_cpu, wall),
        "sender_cpu_us_per_request": round(1e6 * sender_cpu / max(1, len(statuses)), 1),
        "server_cpu": server_cpu,
        "machine_cpu": window.machine(sender_cpu + (server_cpu or {}).get("cpu_s", 0.0)),
        "_accepted_ids": {sender.delivery_id(base, i) for i, s in statuses.items() if s == 201},
    }


# ---------------------------------------------------------------------------------------------------
# Measure 2: POST → stream latency

#: Index offsets of the delivery ids of measure 2 (the marker is 0, measured webhooks 1…).
BASELINE_OFFSET = 1_000_000


class StreamProbe:
    """Posts webhooks one at a time and times their arrival on a gRPC stream (grpc.aio, standard loop)."""

    def __init__(self, args: argparse.Namespace, host: str, port: int, profiler: Callable[[], PySpy | None]) -> None:
        self.args = args
        self.webhook = sender.Webhook.build(Path(args.fixture), host, port, args.path, args.secret)
        self.http = sender.HttpConnection(host, port)
        self.profiler = profiler
        self.base = uuid.uuid4().int
        self.client_id = f"bench-{uuid.uuid4().hex[:8]}"
        #: delivery id → future resolved with the perf_counter() time the event came out of the stream
        self.waiting: dict[str, asyncio.Future[float]] = {}
        self.seen: Counter[str] = Counter()
        self.reader: asyncio.Task[None] | None = None
        self.call: Any = None
        self.spy: PySpy | None = None

    async def post(self, index: int) -> tuple[int, bytes, float]:
        """POST webhook ``index``: (status, body, perf_counter() just before the request was written)."""
        request = self.webhook.request(sender.delivery_id(self.base, index))
        started = time.perf_counter()
        async with asyncio.timeout(sender.REQUEST_TIMEOUT_S):
            status, body = await self.http.exchange(request)
        return status, body, started

    def expect(self, index: int) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting[sender.delivery_id(self.base, index)] = future
        return future

    def arrived(self, delivery: str, at: float) -> None:
        future = self.waiting.pop(delivery, None)
        if future is not None and not future.done():
            future.set_result(at)

    async def arrival(self, future: asyncio.Future[float], timeout: float) -> float:
        """When the event of ``future`` came out of the stream; raises if the stream ended first."""
        assert self.reader is not None
        done, _ = await asyncio.wait({future, self.reader}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if future in done:
            return future.result()
        if self.reader in done:
            self.reader.result()  # raises what ended the stream
            raise RuntimeError("the stream ended before the event arrived")
        raise TimeoutError(f"the event did not arrive on the stream within {timeout} s")

    # -- the two streams --

    async def _read_acked(self) -> None:
        import grpc

        from gitstafette._proto import gitstafette_pb2 as pb

        while True:
            message = await self.call.read()
            at = time.perf_counter()
            if message is grpc.aio.EOF:
                return
            kind = message.WhichOneof("kind")
            self.seen[kind] += 1
            if kind == "event":
                event = message.event
                self.seen["redeliveries"] += event.redelivery > 0
                self.arrived(event.webhook_event.event_id, at)
                ack = pb.Ack(repository_id=event.repository_id, sequence=event.sequence)
                await self.call.write(pb.StreamRequest(ack=ack))
                self.seen["acks"] += 1

    async def _read_legacy(self, stub: Any, after: int) -> None:
        from gitstafette._proto import gitstafette_pb2 as pb

        request = pb.WebhookEventsRequest(
            client_id=self.client_id, repository_id=self.webhook.repository_id, last_received_event_id=after
        )
        async for response in stub.FetchWebhookEvents(request):
            at = time.perf_counter()
            if not response.webhook_events:
                self.seen["heartbeat"] += 1
            for event in response.webhook_events:
                self.seen["event"] += 1
                self.arrived(event.event_id, at)

    async def subscribe(self, stub: Any) -> dict[str, Any]:
        """Open the stream and wait until a marker webhook posted now comes out of it.

        A client id seen for the first time starts at the oldest retained event, so on the acknowledged
        stream everything stored before (measure 1) is replayed first; the legacy stream resumes just
        before the marker instead.
        """
        from gitstafette._proto import gitstafette_pb2 as pb

        marker = self.expect(0)
        if self.args.stream == "acked":
            self.call = stub.StreamWebhookEvents()
            subscribe = pb.Subscribe(client_id=self.client_id, repository_ids=[self.webhook.repository_id])
            await self.call.write(pb.StreamRequest(subscribe=subscribe))
            self.reader = asyncio.create_task(self._read_acked())
        status, body, _ = await self.post(0)
        if status != 201:
            raise RuntimeError(f"the marker webhook was answered {status}: {body[:200]!r}")
        started = time.perf_counter()
        if self.reader is None:
            self.reader = asyncio.create_task(self._read_legacy(stub, int(json.loads(body)["sequence"]) - 1))
        await self.arrival(marker, self.args.phase_timeout)
        seconds = time.perf_counter() - started
        events = self.seen["event"] - 1
        return {
            "events": events,
            "seconds": round(seconds, 3),
            "events_per_s": round(events / seconds, 1) if events and seconds else None,
        }

    # -- the measure --

    async def baseline(self) -> tuple[list[float], Counter[int]]:
        """One-at-a-time POSTs with no stream open: what the stream adds is the difference."""
        latencies: list[float] = []
        statuses: Counter[int] = Counter()
        for index in range(self.args.baseline):
            status, _, started = await self.post(BASELINE_OFFSET + index)
            latencies.append(time.perf_counter() - started)
            statuses[status] += 1
        return latencies, statuses

    async def samples(self) -> tuple[list[float], list[float], Counter[int]]:
        """(POST → stream, POST → 201, statuses) of the measured webhooks, sent one at a time."""
        to_stream: list[float] = []
        to_201: list[float] = []
        statuses: Counter[int] = Counter()
        deadline = time.monotonic() + self.args.phase_timeout
        for index in range(1, self.args.warmup_stream + self.args.messages + 1):
            if time.monotonic() > deadline:
                raise TimeoutError(f"measure 2 did not finish within {self.args.phase_timeout} s")
            measured = index > self.args.warmup_stream
            if measured and self.spy is None:
                self.spy = self.profiler()  # profiles the measured webhooks only
            future = self.expect(index)
            status, _, started = await self.post(index)
            answered = time.perf_counter()
            if measured:
                statuses[status] += 1
            if status != 201:
                self.waiting.pop(sender.delivery_id(self.base, index), None)
                continue
            at = await self.arrival(future, sender.REQUEST_TIMEOUT_S)
            if measured:
                to_stream.append(at - started)
                to_201.append(answered - started)
            if self.args.gap_ms:
                await asyncio.sleep(self.args.gap_ms / 1000)
        return to_stream, to_201, statuses

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader
        if self.call is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self.call.done_writing()
            self.call.cancel()
        self.http.close()

    async def run(self, grpc_target: str) -> dict[str, Any]:
        import grpc

        from gitstafette._proto import gitstafette_pb2_grpc as pb_grpc

        async with grpc.aio.insecure_channel(grpc_target) as channel:
            async with asyncio.timeout(15):
                await channel.channel_ready()
            try:
                baseline, baseline_statuses = await self.baseline()
                backlog = await self.subscribe(pb_grpc.GitstafetteStub(channel))
                to_stream, to_201, statuses = await self.samples()
                await asyncio.sleep(0.05)  # let the last acknowledgement go out before the stream closes
                profile = self.spy.stop() if self.spy is not None else None
                self.spy = None
            finally:
                if self.spy is not None:
                    self.spy.stop()
                await self.close()
        acked = self.args.stream == "acked"
        return {
            "rpc": "StreamWebhookEvents (acknowledged)" if acked else "FetchWebhookEvents (legacy)",
            "messages": self.args.messages,
            "warmup_messages": self.args.warmup_stream,
            "gap_ms": self.args.gap_ms,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "post_to_stream": reporting.percentiles(to_stream),
            "post_to_201": reporting.percentiles(to_201),
            "baseline_post_to_201_no_stream": reporting.percentiles(baseline),
            "baseline_statuses": {str(k): v for k, v in sorted(baseline_statuses.items())},
            "events_seen": self.seen["event"],
            "redeliveries_seen": self.seen["redeliveries"],
            "acks_sent": self.seen["acks"],
            "heartbeats_seen": self.seen["heartbeat"],
            "backlog_replayed_before_measuring": backlog,
            **({"py_spy": profile} if profile else {}),
        }


def measure_stream(
    args: argparse.Namespace,
    host: str,
    port: int,
    grpc_target: str,
    server_pid: int | None,
    profiler: Callable[[], PySpy | None],
) -> dict[str, Any]:
    window = CpuWindow(server_pid)
    window.start()
    figures: dict[str, Any] = asyncio.run(StreamProbe(args, host, port, profiler).run(grpc_target))
    window.stop()
    figures["server_cpu_whole_measure"] = window.server(figures["events_seen"])
    return figures


# ---------------------------------------------------------------------------------------------------
# The server under test


def durability(db_path: str | None, repository_id: str, accepted: set[str]) -> dict[str, Any]:
    """Are all delivery ids answered 201 in the SQLite file, seen from another connection?"""
    if not db_path:
        return {"checked": False, "why": "no SQLite file to read (memory store, or --db not given)"}
    connection = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        query = "SELECT delivery_id FROM events WHERE repository_id = ?"
        stored = {d for (d,) in connection.execute(query, (repository_id,))}
    finally:
        connection.close()
    missing = accepted - stored
    return {
        "checked": True,
        "accepted_201": len(accepted),
        "found_in_db": len(accepted) - len(missing),
        "missing": len(missing),
        "missing_examples": sorted(missing)[:5],
    }


# Report


def _print_header(report: dict[str, Any]) -> None:
    m, cfg, g = report["machine"], report.get("config", {}), report.get("git", {})
    print()
    print(f"gitstafette server benchmark  {report['time']}")
    print(f"  machine  {m['nproc']} CPUs ({m.get('cpu', '?')}), Python {m['python']}")
    print(f"  server   {cfg.get('server', '?')}")
    print(f"  store    {cfg.get('store', '?')}")
    if g.get("head"):
        print(f"  commit   {reporting.commit_text(g)}")
    for key in ("quiet_before_ingest", "quiet_before_stream"):
        if q := report.get(key):
            state = "" if q["quiet"] else " (NOT quiet: figures are low)"
            print(
                f"  {key.replace('_', ' ')}: {q['busy_pct_of_all_cores']:.0f} % busy after {q['waited_s']:.0f} s{state}"
            )


def _print_ingest(report: dict[str, Any], ingest: dict[str, Any]) -> None:
    sqlite = report.get("config", {}).get("store", "").startswith("sqlite")
    print()
    print(
        f"Measure 1 - ingest: {ingest['requests']} webhooks of {ingest['body_bytes']} B, {ingest['concurrency']} "
        f"keep-alive connections, {ingest['sender_processes']} sender process(es) ({ingest['sender_loop']}), "
        f"{ingest['warmup_requests']} warm-up requests first"
    )
    rate = ingest["accepted_per_s"]
    table = [
        ("accepted (201) per second", f"{rate:,.0f}" if rate else "-",
         f"goal >= {GOAL_ACCEPTED_PER_S:,.0f}" + (" with SQLite" if sqlite else "")),
        ("statuses", ", ".join(f"{k}: {v}" for k, v in ingest["statuses"].items()), ""),
        ("wall time", f"{ingest['wall_s']:.3f} s", ""),
        ("POST latency p50 / p90 / p99 / max", reporting.latency_text(ingest["latency"]), ""),
        ("sender CPU", f"{ingest['sender_cpu_s']:.2f} s = {ingest['sender_cpu_pct_of_one_core']:.0f} % of one core",
         f"{ingest['sender_cpu_us_per_request']:.0f} us/request"),
    ]  # fmt: skip
    if ingest.get("transport_errors"):
        table.append(("transport errors", json.dumps(ingest["transport_errors"]), f"reconnects {ingest['reconnects']}"))
    if cpu := ingest.get("server_cpu"):
        table.append(
            ("server CPU", f"{cpu['cpu_s']:.2f} s = {cpu['cpu_pct']:.0f} % of one core",
             f"{cpu['us_per_request']:.0f} us/request; event-loop thread {cpu['main_thread_pct']:.0f} %, "
             f"other threads {cpu['other_threads_pct']:.0f} %")
        )  # fmt: skip
    if (mc := ingest.get("machine_cpu")) and mc.get("others_pct_of_one_core") is not None:
        busy = mc["others_pct_of_one_core"] > 25
        table.append(
            ("CPU of other processes", f"{mc['others_pct_of_one_core']:.0f} % of one core",
             "the machine was busy with other work: figures are low" if busy else "the machine was quiet")
        )  # fmt: skip
        table.append(("kernel interrupt time (irq+softirq)", f"{mc['interrupts_pct_of_one_core']:.0f} % of one core",
                     "loopback TCP work, charged to no process"))  # fmt: skip
    dur = report.get("durability", {})
    if dur.get("checked"):
        table.append(("201s found in the SQLite file", f"{dur['found_in_db']} / {dur['accepted_201']}",
                     "all durable" if not dur["missing"] else f"{dur['missing']} MISSING"))  # fmt: skip
    if report.get("server_counters"):
        table.append(("server's own counters", json.dumps(report["server_counters"]), "warm-up included"))
    reporting.rows(table)


def _print_stream(stream: dict[str, Any]) -> None:
    print()
    gap = f", {stream['gap_ms']:g} ms apart" if stream.get("gap_ms") else ""
    print(f"Measure 2 - POST -> stream: {stream['messages']} webhooks one at a time{gap}, {stream['rpc']}")
    table = [
        ("POST -> event on stream p50 / p90 / p99 / max", reporting.latency_text(stream["post_to_stream"]),
         f"goal p50 < {GOAL_STREAM_P50_MS:g} ms"),
        ("POST -> 201 answer p50 / p90 / p99 / max", reporting.latency_text(stream["post_to_201"]), "same requests"),
    ]  # fmt: skip
    if (baseline := stream["baseline_post_to_201_no_stream"])["n"]:
        table.append(("POST -> 201 with no stream open", reporting.latency_text(baseline),
                     f"baseline: {baseline['n']} requests before the stream was opened"))  # fmt: skip
    table.append(("statuses", ", ".join(f"{k}: {v}" for k, v in stream["statuses"].items()), ""))
    table.append(("events / acks / redeliveries seen",
                 f"{stream['events_seen']} / {stream['acks_sent']} / {stream['redeliveries_seen']}", ""))  # fmt: skip
    backlog = stream["backlog_replayed_before_measuring"]
    if backlog["events"]:
        table.append(("backlog replayed before measuring", f"{backlog['events']} events in {backlog['seconds']:.2f} s",
                     f"{backlog['events_per_s']:,.0f} events/s, acknowledged one by one"))  # fmt: skip
    reporting.rows(table)


def print_table(report: dict[str, Any]) -> None:
    _print_header(report)
    if ingest := report.get("ingest"):
        _print_ingest(report, ingest)
    if stream := report.get("stream"):
        _print_stream(stream)
    reporting.print_goals(report.get("goals") or {})
    for name, spy in (("measure 1", report.get("py_spy")), ("measure 2", (stream or {}).get("py_spy"))):
        if spy and spy.get("top_self"):
            reporting.print_profile("server", name, spy)
    print()


# ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = reporting.argument_parser(__doc__)
    target = parser.add_argument_group("server under test")
    processes.add_server_options(target)
    target.add_argument("--url", help="measure a running server at this HTTP base URL instead of starting one")
    target.add_argument("--grpc", help="with --url: its gRPC address host:port (default: the --url host, port 50051)")
    target.add_argument("--db", help="with --url: its SQLite file, to check that every 201 is in it")
    target.add_argument("--server-pid", type=int, help="with --url: its process id, for its CPU time and --py-spy")
    target.add_argument("--server-log-level", default="warning", help="--log-level of the server started here "
                        "(info logs a line per webhook, which costs server CPU)")  # fmt: skip
    target.add_argument("--server-arg", action="append", default=[], help="extra argument for the server (repeat it)")
    target.add_argument("--path", default="/v1/github/", help="webhook path")
    target.add_argument("--secret", default="", help="sign each webhook with this secret (X-Hub-Signature-256)")
    target.add_argument(
        "--fixture", type=Path, default=sender.DEFAULT_FIXTURE, help="webhook payload (a repository event)"
    )
    m1 = parser.add_argument_group("measure 1: ingest throughput")
    m1.add_argument("-n", "--requests", type=int, default=5000, help="webhooks to send")
    m1.add_argument("-c", "--concurrency", type=int, default=32, help="concurrent senders (one connection each)")
    m1.add_argument("--warmup", type=int, default=200, help="webhooks sent first, not measured")
    m1.add_argument("--procs", type=int, default=1, help="sender processes sharing the connections")
    m1.add_argument("--no-uvloop", action="store_true", help="sender on the standard asyncio loop")
    m2 = parser.add_argument_group("measure 2: POST -> stream latency")
    m2.add_argument("-m", "--messages", type=int, default=1000, help="webhooks sent one at a time")
    m2.add_argument("--warmup-stream", type=int, default=20, help="webhooks sent first, not measured")
    m2.add_argument("--baseline", type=int, default=200, help="webhooks sent one at a time before the stream is "
                    "opened: POST -> 201 with no stream, to compare")  # fmt: skip
    m2.add_argument("--gap-ms", type=float, default=0, help="pause between two webhooks (sparse traffic: the "
                    "machine idles between them, as with real webhooks; 0 sends the next at once)")  # fmt: skip
    m2.add_argument("--stream", choices=("acked", "legacy"), default="acked",
                    help="acked: StreamWebhookEvents with an Ack per event; legacy: FetchWebhookEvents")  # fmt: skip
    other = parser.add_argument_group("other")
    other.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                       help="before each measure, wait up to this long for the machine to be nearly idle "
                       "(a shared machine running other work gives low figures)")  # fmt: skip
    other.add_argument("--skip-ingest", action="store_true", help="only measure 2")
    other.add_argument("--skip-stream", action="store_true", help="only measure 1")
    other.add_argument("--phase-timeout", type=float, default=300, help="seconds each measure may take at most")
    other.add_argument("--py-spy", action="store_true", help="profile the server with py-spy (pip install py-spy) "
                       "during measure 1 and the measured part of measure 2; needs ptrace rights")  # fmt: skip
    other.add_argument("--py-spy-rate", type=int, default=200, help="py-spy samples per second")
    reporting.add_report_options(other)
    args = parser.parse_args(argv)
    args.checkout = args.src.parent if args.src else ROOT  # whose git state the report records
    for name in ("requests", "concurrency", "messages", "procs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if min(args.warmup, args.warmup_stream, args.baseline) < 0:
        parser.error("warm-up and baseline counts must be >= 0")
    return args


@dataclass
class Target:
    """Where the measured server listens, and what the bench knows about it."""

    host: str
    port: int
    grpc: str
    pid: int | None
    db_path: str | None
    config: dict[str, Any]
    server: processes.ServerUnderTest | None = None


def start_target(args: argparse.Namespace, tmpdir: str, started: list[processes.ServerUnderTest]) -> Target:
    """The server to measure: the one at ``--url``, or one started here (appended to ``started``)."""
    if args.url:
        parts = urlsplit(args.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        grpc_target = args.grpc or f"{host}:50051"
        config = {
            "server": f"external: {args.url}, gRPC {grpc_target}",
            "store": f"sqlite:///{args.db}" if args.db else "(unknown)",
        }
        return Target(host, port, grpc_target, args.server_pid, args.db, config)
    store_url, db_path = processes.resolve_store(args.store, tmpdir)
    server = processes.ServerUnderTest(store_url, args.server_log_level, args.server_arg, args.src)
    started.append(server)  # before start(): the caller stops it even if start() fails half-way
    server.start()
    config = {
        "server": f"started here (pid {server.pid}): HTTP {server.host}:{server.http_port}, "
        f"gRPC {server.host}:{server.grpc_port}, --log-level {args.server_log_level}",
        "store": store_url,
        **({"src": str(args.src)} if args.src else {}),
    }
    grpc_target = f"{server.host}:{server.grpc_port}"
    return Target(server.host, server.http_port, grpc_target, server.pid, db_path, config, server)


def run_measures(
    args: argparse.Namespace, target: Target, report: dict[str, Any], spy_name: Callable[[str], Path]
) -> None:
    goals: dict[str, bool] = {}
    report["goals"] = goals
    pid = target.pid
    if not args.skip_ingest:
        if args.wait_quiet:
            report["quiet_before_ingest"] = wait_quiet(args.wait_quiet)
        spy = PySpy(pid, spy_name("ingest"), args.py_spy_rate) if args.py_spy and pid else None
        try:
            ingest = measure_ingest(args, target.host, target.port, pid)
        finally:
            if spy is not None:
                report["py_spy"] = spy.stop()
        accepted = ingest.pop("_accepted_ids")
        report["ingest"] = ingest
        repository_id = sender.Webhook.build(Path(args.fixture), target.host, target.port, args.path).repository_id
        report["durability"] = durability(target.db_path, repository_id, accepted)
        report["server_counters"] = processes.server_counters(f"http://{target.host}:{target.port}")
        ok = (ingest["accepted_per_s"] or 0) >= GOAL_ACCEPTED_PER_S and ingest["accepted"] == args.requests
        goals[f"ingest >= {GOAL_ACCEPTED_PER_S:,.0f}/s, every webhook 201"] = ok
        if report["durability"].get("checked"):
            goals["every 201 in the SQLite file"] = report["durability"]["missing"] == 0
    if not args.skip_stream:
        if args.wait_quiet:
            report["quiet_before_stream"] = wait_quiet(args.wait_quiet)

        def profiler() -> PySpy | None:
            return PySpy(pid, spy_name("stream"), args.py_spy_rate) if args.py_spy and pid else None

        stream = measure_stream(args, target.host, target.port, target.grpc, pid, profiler)
        report["stream"] = stream
        p50 = stream["post_to_stream"]["p50_ms"]
        goals[f"POST -> stream p50 < {GOAL_STREAM_P50_MS:g} ms"] = p50 is not None and p50 < GOAL_STREAM_P50_MS


def _save(args: argparse.Namespace, report: dict[str, Any], stamp: str) -> None:
    store = report.get("config", {}).get("store", "x").split(":")[0].strip("(") or "x"
    reporting.write_report(report, args.results, f"ingest-{store}-{stamp}.json", not args.no_save)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started: list[processes.ServerUnderTest] = []
    signal.signal(signal.SIGTERM, processes.raise_on_sigterm)  # so that `finally` stops the server
    sys.path.insert(0, str(ROOT / "src"))  # gitstafette._proto, when the package is not installed
    stamp = reporting.utc_stamp()
    report: dict[str, Any] = {"bench": "ingest", "time": stamp, "label": args.label}
    report |= {"machine": reporting.machine(), "git": reporting.git_state(args.checkout)}
    tmpdir = tempfile.mkdtemp(prefix="gitstafette-bench-")
    spy_folder = Path(tmpdir) if args.no_save else args.results
    exit_code = 0
    try:
        target = start_target(args, tmpdir, started)
        report["config"] = {
            **target.config,
            **{k: getattr(args, k) for k in ("requests", "concurrency", "procs", "warmup", "messages", "stream")},
            "fixture": str(args.fixture),
        }
        spy_folder.mkdir(parents=True, exist_ok=True)
        run_measures(args, target, report, lambda name: spy_folder / f"ingest-{stamp}-{name}-pyspy.txt")
    except (KeyboardInterrupt, Exception) as exc:
        exit_code = reporting.record_failure(report, exc)
    finally:
        for server in started:
            server.stop()
            report["server_exit"] = {"code": server.exit_code, "stop_s": server.stop_s, "log_lines": server.log_lines}
            if exit_code or server.exit_code not in (0, None):
                report["server_log_tail"] = "".join(list(server.log)[-20:])
        shutil.rmtree(tmpdir, ignore_errors=True)  # the SQLite file (py-spy files are in --results when saved)
    print_table(report)
    if report.get("error"):
        print(f"ERROR: {report['error']}", file=sys.stderr)
        if report.get("server_log_tail") and report["server_log_tail"].strip() not in report["error"]:
            print("server log (last lines):\n" + report["server_log_tail"], file=sys.stderr)
    _save(args, report, stamp)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
