#!/usr/bin/env python3
"""Many idle streams on one server: its memory, and the fan-out of one event to all of them.

For each size in ``--streams`` (default 100 and 1,000) the bench starts a fresh ``gitstafette server``, opens
that many streams with grpc.aio and the generated stubs (each with a client id of its own, so that every stream
gets every event of its repository; spread over ``--repositories`` repositories and over channels of
``--streams-per-channel`` streams each, one TCP connection per channel), and then:

``--kind ack`` (the default) opens acknowledged ``StreamWebhookEvents`` streams and waits until each is told its
subscription; ``--kind legacy`` opens the original ``FetchWebhookEvents`` (which confirms nothing: the bench
waits ``--settle`` seconds), as a stock client of the original contract does.

1. **Memory**: the server's resident memory (VmRSS) before the streams, with all of them open and idle, and
   after the fan-out rounds; the difference per stream.
2. **Fan-out**: ``--rounds`` webhooks posted one at a time, each once the previous one reached every stream
   of its repository. For each (webhook, stream): POST written → event read from that stream in this process
   (the stream acknowledges it at once, as a client does). Reported: how many of the streams each webhook
   reached within ``--timeout`` (a stream that misses one is a lost event: the bench says so and exits 1),
   p50/p99/max over all of them, and per webhook the time until the last stream had it.

Prints a table and one JSON line, and writes the JSON to ``bench/results/``. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/streams.py`: the repository root, for bench._lib
    sys.path.insert(0, str(ROOT))

from bench._lib import RESULTS  # noqa: E402
from bench._lib.cpu import proc_cpu, rss_kib, self_cpu  # noqa: E402
from bench._lib.processes import ServerUnderTest, resolve_store  # noqa: E402
from bench._lib.report import latency_text, machine, percentiles, rows, utc_stamp, write_report  # noqa: E402
from bench._lib.sender import DEFAULT_FIXTURE, REQUEST_TIMEOUT_S, HttpConnection, Webhook, delivery_id  # noqa: E402

#: the first repository id; a run with --repositories R uses this one and the R-1 after it
FIRST_REPOSITORY = 186853002
#: streams opened at the same time while connecting
CONNECT_CONCURRENCY = 100


@dataclass
class Round:
    """One webhook of the fan-out: when it was posted, and when each stream read it."""

    expected: int
    posted: float = 0.0
    arrivals: list[float] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def arrived(self, at: float) -> None:
        self.arrivals.append(at)
        if len(self.arrivals) >= self.expected:
            self.done.set()


async def _messages(call: Any) -> AsyncIterator[tuple[Any, float]]:
    """The messages of one stream, each with the ``perf_counter()`` time it was read, until the stream ends."""
    import grpc

    while True:
        message = await call.read()
        at = time.perf_counter()
        if message is grpc.aio.EOF:
            return
        yield message, at


class Streams:
    """``count`` acknowledged streams, each a client id of its own, spread over repositories and channels."""

    def __init__(
        self, grpc_target: str, count: int, repositories: list[str], per_channel: int, kind: str = "ack"
    ) -> None:
        self.kind = kind
        self.grpc_target = grpc_target
        self.count = count
        self.repositories = repositories
        self.per_channel = per_channel
        self.run_id = uuid.uuid4().hex[:8]
        self.channels: list[Any] = []
        self.calls: list[Any] = []
        self.readers: list[asyncio.Task[None]] = []
        self.rounds: dict[str, Round] = {}
        self.events = self.acks = self.heartbeats = 0

    def subscribers(self, repository: str) -> int:
        return sum(1 for i in range(self.count) if self.repositories[i % len(self.repositories)] == repository)

    async def open(self, timeout: float) -> float:
        """Open every stream and wait until each was told its subscription; the seconds it took."""
        import grpc

        from gitstafette._proto import gitstafette_pb2_grpc as pb_grpc

        started = time.perf_counter()
        # A local subchannel pool: each channel its own TCP connection (else equal channels share one).
        options = [("grpc.use_local_subchannel_pool", 1)]
        channels = -(-self.count // self.per_channel)
        self.channels = [grpc.aio.insecure_channel(self.grpc_target, options=options) for _ in range(channels)]
        async with asyncio.timeout(timeout):
            for channel in self.channels:
                await channel.channel_ready()
            stubs = [pb_grpc.GitstafetteStub(channel) for channel in self.channels]
            slots = asyncio.Semaphore(CONNECT_CONCURRENCY)

            async def one(index: int) -> None:
                async with slots:
                    await self._subscribe(stubs[index // self.per_channel], index)

            await asyncio.gather(*(one(i) for i in range(self.count)))
        return time.perf_counter() - started

    async def _subscribe(self, stub: Any, index: int) -> None:
        from gitstafette._proto import gitstafette_pb2 as pb

        if self.kind == "legacy":
            await self._fetch(stub, index)
            return
        call = stub.StreamWebhookEvents()
        self.calls.append(call)
        client_id = f"bench-streams-{self.run_id}-{index}"
        repository = self.repositories[index % len(self.repositories)]
        await call.write(pb.StreamRequest(subscribe=pb.Subscribe(client_id=client_id, repository_ids=[repository])))
        while True:
            message = await call.read()
            kind = message.WhichOneof("kind") if hasattr(message, "WhichOneof") else None
            if kind is None:
                raise RuntimeError(f"stream {index} ended before it was subscribed: {await call.code()}")
            if kind == "subscribed":
                break
            if kind == "event":
                raise RuntimeError(f"stream {index} got an event before the bench posted any")
        self.readers.append(asyncio.create_task(self._read(call)))

    async def _fetch(self, stub: Any, index: int) -> None:
        """The original contract's stream; it tells nothing of its subscription, so only the request is sent."""
        from gitstafette._proto import gitstafette_pb2 as pb

        repository = self.repositories[index % len(self.repositories)]
        request = pb.WebhookEventsRequest(client_id=f"bench-streams-{self.run_id}-{index}", repository_id=repository)
        call = stub.FetchWebhookEvents(request)
        self.calls.append(call)
        self.readers.append(asyncio.create_task(self._read_legacy(call)))

    def _arrived(self, event_id: str, at: float) -> None:
        """One event read from one stream at ``at``: counted, and timed when it is a webhook of the fan-out."""
        self.events += 1
        if (fan_out := self.rounds.get(event_id)) is not None:
            fan_out.arrived(at)

    async def _read_legacy(self, call: Any) -> None:
        async for message, at in _messages(call):
            if not message.webhook_events:
                self.heartbeats += 1
            for event in message.webhook_events:
                self._arrived(event.event_id, at)

    async def _read(self, call: Any) -> None:
        from gitstafette._proto import gitstafette_pb2 as pb

        async for message, at in _messages(call):
            kind = message.WhichOneof("kind")
            if kind == "heartbeat":
                self.heartbeats += 1
            elif kind == "event":
                event = message.event
                self._arrived(event.webhook_event.event_id, at)
                ack = pb.Ack(repository_id=event.repository_id, sequence=event.sequence)
                await call.write(pb.StreamRequest(ack=ack))
                self.acks += 1

    def ended(self) -> list[str]:
        """What ended streams early (a stream of the bench ends only when the bench closes it)."""
        found = []
        for reader in self.readers:
            if reader.done() and not reader.cancelled():
                found.append(repr(reader.exception()) if reader.exception() else "ended")
        return found

    async def close(self) -> None:
        for reader in self.readers:
            reader.cancel()
        for call in self.calls:
            call.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        for channel in self.channels:
            await channel.close()


async def fan_out(streams: Streams, webhooks: dict[str, Webhook], http: HttpConnection, rounds: int,
                  timeout: float, gap_s: float) -> tuple[list[float], list[float], list[float], list[int]]:  # fmt: skip
    """Post ``rounds`` webhooks one at a time (cycling over the repositories); (every stream's latency, each
    webhook's time until its last stream had it, until its first stream had it, in seconds; and how many
    streams each webhook did not reach within ``timeout``)."""
    every: list[float] = []
    last: list[float] = []
    first: list[float] = []
    missed: list[int] = []
    base = uuid.uuid4().int
    for k in range(rounds):
        repository = streams.repositories[k % len(streams.repositories)]
        delivery = delivery_id(base, k)
        fan = streams.rounds[delivery] = Round(streams.subscribers(repository))
        fan.posted = time.perf_counter()
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            status, body = await http.exchange(webhooks[repository].request(delivery))
        if status != 201:
            raise RuntimeError(f"webhook {k} was answered {status}: {body[:200]!r}")
        try:
            async with asyncio.timeout(timeout):
                await fan.done.wait()
        except TimeoutError:
            print(f"webhook {k} reached {len(fan.arrivals)} of {fan.expected} streams within {timeout} s; "
                  f"streams ended: {streams.ended()[:3]}", file=sys.stderr, flush=True)  # fmt: skip
        missed.append(fan.expected - len(fan.arrivals))
        latencies = [at - fan.posted for at in fan.arrivals]
        every.extend(latencies)
        if latencies:
            last.append(max(latencies))
            first.append(min(latencies))
        await asyncio.sleep(gap_s)  # the acknowledgements go out, and the server stores them, before the next one
    return every, last, first, missed


async def measure(args: argparse.Namespace, count: int) -> dict[str, Any]:
    """One size: a fresh server, ``count`` streams, memory and fan-out."""
    tmpdir = tempfile.mkdtemp(prefix="gitstafette-streams-")
    store_url, _ = resolve_store(args.store, tmpdir)
    # No cap on the streams of one client id is needed (each stream has its own), but no limit gets in the way.
    server = ServerUnderTest(store_url, "warning", ["--max-streams-per-client", "0", *args.server_arg])
    repositories = [str(FIRST_REPOSITORY + i) for i in range(args.repositories)]
    streams: Streams | None = None
    http: HttpConnection | None = None
    try:
        await asyncio.to_thread(server.start)
        webhook = Webhook.build(args.fixture, server.host, server.http_port, "/v1/github/")
        # the same payload to each repository: its header routes it
        webhooks = {
            repository: dataclasses.replace(webhook, head=webhook.head.replace(
                f"Target-ID: {webhook.repository_id}".encode(), f"Target-ID: {repository}".encode()
            ), repository_id=repository)
            for repository in repositories
        }  # fmt: skip
        http = HttpConnection(server.host, server.http_port)
        rss_before = rss_kib(server.pid)
        streams = Streams(f"{server.host}:{server.grpc_port}", count, repositories, args.streams_per_channel, args.kind)
        connect_s = await streams.open(args.timeout)
        await asyncio.sleep(args.settle)
        rss_idle = rss_kib(server.pid)
        server_cpu = sum(proc_cpu(server.pid).values())
        bench_cpu = self_cpu()
        started = time.perf_counter()
        every, last, first, missed = await fan_out(streams, webhooks, http, args.rounds, args.timeout, args.gap)
        wall = time.perf_counter() - started
        server_cpu = sum(proc_cpu(server.pid).values()) - server_cpu
        bench_cpu = self_cpu() - bench_cpu
        rss_after = rss_kib(server.pid)
        messages = len(every)
        return {
            "kind": args.kind,
            "streams": count,
            "repositories": len(repositories),
            "channels": len(streams.channels),
            "connect_s": round(connect_s, 3),
            "server_rss_kib": {"before_streams": rss_before, "streams_idle": rss_idle, "after_fan_out": rss_after},
            "server_rss_per_stream_kib": round((rss_idle - rss_before) / count, 1) if rss_idle and rss_before else None,
            "rounds": args.rounds,
            # per webhook, the streams of its repository it did not reach within --timeout: all 0, or events lost
            "streams_missed": missed,
            "deliveries_expected": sum(
                streams.subscribers(streams.repositories[k % len(repositories)]) for k in range(args.rounds)
            ),  # fmt: skip
            "deliveries_received": len(every),
            "fan_out_every_stream": percentiles(every),
            "fan_out_last_stream": percentiles(last),
            "fan_out_first_stream": percentiles(first),
            "events_read": streams.events,
            "acks_sent": streams.acks,
            "heartbeats": streams.heartbeats,
            "streams_ended_early": len(streams.ended()),
            "cpu": {
                "wall_s": round(wall, 3),
                "server_cpu_s": round(server_cpu, 3),
                "server_us_per_message": round(server_cpu / messages * 1e6, 1) if messages else None,
                "bench_cpu_s": round(bench_cpu, 3),
                "bench_us_per_message": round(bench_cpu / messages * 1e6, 1) if messages else None,
            },
        }
    finally:
        if streams is not None:
            await streams.close()
        if http is not None:
            http.close()
        await asyncio.to_thread(server.stop, 30)
        shutil.rmtree(tmpdir, ignore_errors=True)


def print_table(report: dict[str, Any]) -> None:
    m = report["machine"]
    print()
    print(f"gitstafette streams benchmark  {report['time']}")
    print(f"  machine  {m['nproc']} CPUs ({m.get('cpu', '?')}), Python {m['python']}, load {report['loadavg']}")
    print(f"  store    {report['config']['store']}")
    for size in report["sizes"]:
        rss = size["server_rss_kib"]
        print()
        kind = "acknowledged" if size["kind"] == "ack" else "FetchWebhookEvents"
        print(f"{size['streams']:,} idle {kind} streams ({size['repositories']} repository(ies), "
              f"{size['channels']} channel(s)), {size['rounds']} webhooks fanned out one at a time")  # fmt: skip
        cpu = size["cpu"]
        table = [
            ("streams open and subscribed in", f"{size['connect_s']:.2f} s",
             "" if size["kind"] == "ack" else "requests sent (no confirmation), then --settle"),
            ("deliveries received / expected", f"{size['deliveries_received']:,} / {size['deliveries_expected']:,}",
             "OK" if size["deliveries_received"] == size["deliveries_expected"] else
             f"MISSED: {sum(size['streams_missed']):,} (per webhook {size['streams_missed'][:10]})"),
            ("server RSS: before / streams idle / after", f"{rss['before_streams'] / 1024:.1f} / "
             f"{rss['streams_idle'] / 1024:.1f} / {rss['after_fan_out'] / 1024:.1f} MiB",
             f"{size['server_rss_per_stream_kib']} KiB per idle stream"),
            ("fan-out: POST -> each stream", latency_text(size["fan_out_every_stream"]), "p50/p90/p99/max"),
            ("fan-out: POST -> last stream", latency_text(size["fan_out_last_stream"]), "per webhook"),
            ("fan-out: POST -> first stream", latency_text(size["fan_out_first_stream"]), "per webhook"),
            ("CPU per message (server | bench)", f"{cpu['server_us_per_message']} | {cpu['bench_us_per_message']} µs",
             "a message: one event to one stream, and its ack"),
            ("events read / acks / streams ended early", f"{size['events_read']} / {size['acks_sent']} / "
             f"{size['streams_ended_early']}", ""),
        ]  # fmt: skip
        rows(table)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Many idle acknowledged gRPC streams on one server: its memory, and the latency of one event "
        "fanned out to all of them.",
        epilog="Example: bench/streams.py --streams 100,1000 --rounds 20",
    )
    parser.add_argument("--streams", default="100,1000", help="sizes to measure, comma-separated (default 100,1000)")
    parser.add_argument("--kind", choices=["ack", "legacy"], default="ack",
                        help="ack: StreamWebhookEvents (acknowledged); legacy: FetchWebhookEvents")  # fmt: skip
    parser.add_argument("--repositories", type=int, default=1,
                        help="spread the streams over this many repositories (each webhook goes to one)")  # fmt: skip
    parser.add_argument("--streams-per-channel", type=int, default=100,
                        help="streams per gRPC channel (one TCP connection each)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=20, help="webhooks fanned out, one at a time")
    parser.add_argument("--gap", type=float, default=0.2, help="seconds between a webhook that reached every stream "
                        "and the next one (the server stores the acknowledgements meanwhile)")  # fmt: skip
    parser.add_argument("--settle", type=float, default=2.0, help="seconds between opening the streams and reading "
                        "the server's memory")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to open the streams, and for each "
                        "webhook to reach every stream")  # fmt: skip
    parser.add_argument("--store", default="sqlite", help="the server's store: sqlite (a file in a temporary "
                        "folder), memory://, sqlite:///PATH or redis://HOST:PORT/DB?prefix=NAME")  # fmt: skip
    parser.add_argument("--server-arg", action="append", default=[], help="an extra option for the server")
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE, help="the webhook payload")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON results")
    parser.add_argument("--no-save", action="store_true", help="do not write the JSON to --results")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(part) for part in args.streams.split(",") if part.strip()]
    except ValueError:
        parser.error(f"--streams: {args.streams!r} is not a comma-separated list of numbers")
    if not args.sizes or min(args.sizes) < 1 or args.repositories < 1 or args.rounds < 1:
        parser.error("--streams sizes, --repositories and --rounds must be at least 1")
    if args.streams_per_channel < 1:
        parser.error("--streams-per-channel must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict[str, Any] = {
        "bench": "streams",
        "time": utc_stamp(),
        "machine": machine(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "sizes": [],
    }
    for count in args.sizes:
        print(f"{count} streams ...", file=sys.stderr, flush=True)
        report["sizes"].append(asyncio.run(measure(args, count)))
    report["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    print_table(report)
    write_report(report, args.results, f"streams-{report['time']}.json", not args.no_save)
    # Every webhook must reach every stream of its repository: anything else is a lost event.
    return 0 if all(size["deliveries_received"] == size["deliveries_expected"] for size in report["sizes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
