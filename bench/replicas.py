#!/usr/bin/env python3
"""Replicas benchmark: the Redis store on one server and on two replicas sharing it, beside SQLite, in one run.

For each setup (``sqlite``: one server on a SQLite file; ``redis-1``: one server on Redis; ``redis-2``: two
server processes on the same Redis and prefix):

1. **Ingest throughput.** ``-n`` webhooks from ``-c`` keep-alive connections split over ``--procs`` sender
   processes; with two replicas the senders alternate between them (sender k posts to replica k mod 2, the
   webhooks dealt round-robin), as a load balancer in front of them would. Reports accepted (201) per
   second and the CPU time per webhook of the servers, of Redis and of the senders.
2. **POST → stream latency**, one webhook at a time on an idle machine: posted to a replica and read from an
   acknowledged stream on the same replica; with two replicas also posted to one and read from the other
   (the event crosses replicas through Redis).

Redis is a ``redis-server`` the bench starts itself in a temporary folder (``appendonly yes``,
``appendfsync always`` by default: every 201 on disk, as SQLite's ``synchronous=FULL``), or the one at
``--redis`` (the bench writes under a prefix of its own and deletes its keys afterwards).

Reuses ``bench/ingest.py``'s stream probe, and the sender, server process and CPU accounting of
``bench/_lib``. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/replicas.py`: the repository root, for bench._lib
    sys.path.insert(0, str(ROOT))

from bench._lib import RESULTS  # noqa: E402
from bench._lib.cpu import proc_cpu, system_cpu  # noqa: E402
from bench._lib.processes import ServerUnderTest, raise_on_sigterm  # noqa: E402
from bench._lib.report import git_state, machine, pct, percentiles, rows, utc_stamp, write_report  # noqa: E402
from bench._lib.sender import DEFAULT_FIXTURE, REQUEST_TIMEOUT_S, SenderSpec, has_uvloop, run_senders  # noqa: E402
from bench.ingest import StreamProbe  # noqa: E402
from tests.redis_utils import RedisServer  # noqa: E402

GOAL_TWO_REPLICAS_PER_S = 2500.0
GOAL_P50_MS = 2.0
SETUPS = ("sqlite", "redis-1", "redis-2")


class Processes:
    """CPU seconds of some processes (by role) and of the machine, between ``start()`` and ``stop()``."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self.before: dict[str, float] = {}
        self.after: dict[str, float] = {}
        self.machine_before = self.machine_after = (0.0, 0.0, 0.0)
        self.started = self.wall_s = 0.0

    def _sample(self) -> dict[str, float]:
        return {role: sum(sum(proc_cpu(pid).values()) for pid in pids) for role, pids in self.pids.items()}

    def start(self) -> None:
        self.before, self.machine_before, self.started = self._sample(), system_cpu(), time.perf_counter()

    def stop(self) -> None:
        self.after, self.machine_after = self._sample(), system_cpu()
        self.wall_s = time.perf_counter() - self.started

    def per_event(self, events: int, senders_cpu_s: float | None = None) -> dict[str, Any]:
        """CPU microseconds per event by role, and the machine's busy share."""
        used = {role: self.after[role] - self.before.get(role, 0.0) for role in self.after}
        if senders_cpu_s is not None:
            used["senders"] = senders_cpu_s
        busy, capacity, _ = (a - b for a, b in zip(self.machine_after, self.machine_before, strict=True))
        figures: dict[str, Any] = {
            f"{role}_us_per_event": round(1e6 * s / max(1, events), 1) for role, s in used.items()
        }
        figures["total_us_per_event"] = round(1e6 * sum(used.values()) / max(1, events), 1)
        figures["machine_busy_pct"] = pct(busy, capacity)
        return figures


def redis_facts(url: str) -> tuple[int | None, dict[str, str]]:
    """(process id of the Redis at ``url`` if it runs on this machine, its durability settings)."""
    import redis

    with redis.Redis.from_url(url.partition("?")[0], socket_timeout=5) as client:
        info: dict[str, Any] = client.info("server")
        config = client.config_get("appendonly") | client.config_get("appendfsync")
    pid = int(info["process_id"]) if Path(f"/proc/{info['process_id']}").exists() else None
    return pid, {k: str(v) for k, v in config.items()}


def delete_keys(url: str, prefix: str) -> None:
    import redis

    with redis.Redis.from_url(url.partition("?")[0], socket_timeout=10) as client:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 1000):
            client.unlink(*keys[i : i + 1000])


def measure_ingest(args: argparse.Namespace, servers: list[ServerUnderTest], cpu: Processes) -> dict[str, Any]:
    base = uuid.uuid4().int
    procs = max(args.procs, len(servers))
    measured = list(range(args.warmup, args.warmup + args.requests))
    warmup = list(range(args.warmup))
    specs = [
        SenderSpec(
            host=servers[k % len(servers)].host,
            port=servers[k % len(servers)].http_port,
            path="/v1/github/",
            fixture=str(args.fixture),
            secret="",
            base=base,
            indices=measured[k::procs],
            warmup=warmup[k::procs],
            connections=args.concurrency // procs + (1 if k < args.concurrency % procs else 0),
            uvloop=has_uvloop(),
            timeout_s=REQUEST_TIMEOUT_S,
        )
        for k in range(procs)
    ]
    results = run_senders(specs, args.phase_timeout, cpu.start)
    cpu.stop()
    wall = max(r.end for r in results) - min(r.start for r in results)
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    for r in results:
        statuses.update(r.statuses.values())
        latencies.extend(r.latencies)
    accepted = statuses.get(201, 0)
    return {
        "accepted_per_s": round(accepted / wall, 1) if wall else None,
        "accepted": accepted,
        "statuses": {str(k) if k else "error": v for k, v in sorted(statuses.items())},
        "sender_processes": procs,
        "post_latency": percentiles(latencies),
        "cpu": cpu.per_event(sum(statuses.values()), sum(r.cpu_s for r in results)),
    }


def measure_latency(args: argparse.Namespace, post_to: ServerUnderTest, read_from: ServerUnderTest) -> dict[str, Any]:
    probe_args = argparse.Namespace(
        fixture=args.fixture,
        path="/v1/github/",
        secret="",
        phase_timeout=args.phase_timeout,
        stream="acked",
        messages=args.messages,
        warmup_stream=args.warmup_stream,
        baseline=0,
        gap_ms=args.gap_ms,
    )
    probe = StreamProbe(probe_args, post_to.host, post_to.http_port, lambda: None)
    figures = asyncio.run(probe.run(f"{read_from.host}:{read_from.grpc_port}"))
    return {
        "post_to_stream": figures["post_to_stream"],
        "post_to_201": figures["post_to_201"],
        "statuses": figures["statuses"],
        "redeliveries_seen": figures["redeliveries_seen"],
    }


def run_setup(args: argparse.Namespace, setup: str, redis_url: str | None, redis_pid: int | None) -> dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="gitstafette-bench-replicas-")
    prefix = f"bench-replicas-{uuid.uuid4().hex[:8]}"
    if setup == "sqlite":
        store = f"sqlite:///{folder}/bench.db"
    else:
        assert redis_url is not None
        store = f"{redis_url}?prefix={prefix}"
    servers = [ServerUnderTest(store, "warning", []) for _ in range(2 if setup == "redis-2" else 1)]
    report: dict[str, Any] = {"store": store}
    try:
        for server in servers:
            server.start()
        pids = {"servers": [s.pid for s in servers if s.pid]}
        if setup != "sqlite" and redis_pid:
            pids["redis"] = [redis_pid]
        report["ingest"] = measure_ingest(args, servers, Processes(pids))
        report["latency_same_replica"] = measure_latency(args, servers[0], servers[0])
        if len(servers) == 2:
            report["latency_across_replicas"] = measure_latency(args, servers[1], servers[0])
    finally:
        for server in servers:
            server.stop()
            if server.exit_code not in (0, None):
                report.setdefault("server_log_tails", []).append("".join(list(server.log)[-20:]))
        if setup != "sqlite" and redis_url is not None:
            delete_keys(redis_url, prefix)
        shutil.rmtree(folder, ignore_errors=True)
    return report


def print_table(report: dict[str, Any]) -> None:
    table: list[tuple[str, str, str]] = []
    for setup, figures in report["setups"].items():
        if "ingest" not in figures:
            continue
        ingest, cpu = figures["ingest"], figures["ingest"]["cpu"]
        statuses = ", ".join(f"{k}: {v}" for k, v in ingest["statuses"].items())
        table.append((f"{setup}: accepted per second", f"{ingest['accepted_per_s']:,.0f}", statuses))
        per_role = ", ".join(
            f"{k.removesuffix('_us_per_event')} {v:g}" for k, v in cpu.items() if k.endswith("_us_per_event")
        )
        table.append((f"{setup}: CPU µs per webhook", per_role, f"machine busy {cpu['machine_busy_pct']} %"))
        for name, where in (("latency_same_replica", "same replica"), ("latency_across_replicas", "across replicas")):
            if name in figures:
                latency = figures[name]["post_to_stream"]
                table.append(
                    (
                        f"{setup}: POST -> stream, {where}",
                        f"p50 {latency['p50_ms']} ms, p90 {latency['p90_ms']}, p99 {latency['p99_ms']}",
                        f"POST -> 201 p50 {figures[name]['post_to_201']['p50_ms']} ms",
                    )
                )
    if table:
        rows(table)
    for goal, met in report["goals"].items():
        print(f"  {'met   ' if met else 'MISSED'} {goal}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--setups", default=",".join(SETUPS), help="which setups to run, comma-separated")
    parser.add_argument("--redis", help="use the Redis at this URL (redis://HOST:PORT/DB) instead of starting one")
    parser.add_argument("--redis-fsync", choices=("always", "everysec", "off"), default="always",
                        help="the bench's own redis-server: appendfsync always or everysec, or no AOF")  # fmt: skip
    parser.add_argument("-n", "--requests", type=int, default=5000, help="webhooks of the ingest measure")
    parser.add_argument("-c", "--concurrency", type=int, default=32, help="concurrent sender connections")
    parser.add_argument("--procs", type=int, default=2, help="sender processes (at least one per replica)")
    parser.add_argument("--warmup", type=int, default=200, help="webhooks sent first, not measured")
    parser.add_argument("-m", "--messages", type=int, default=500, help="webhooks of each latency measure")
    parser.add_argument("--warmup-stream", type=int, default=20, help="latency: webhooks sent first, not measured")
    parser.add_argument("--gap-ms", type=float, default=0, help="latency: pause between two webhooks")
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE, help="webhook payload")
    parser.add_argument("--phase-timeout", type=float, default=300, help="seconds each measure may take at most")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON results")
    parser.add_argument("--no-save", action="store_true", help="print only, write no file")
    parser.add_argument("--label", default="", help="free text stored with the results")
    args = parser.parse_args(argv)
    args.setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    unknown = set(args.setups) - set(SETUPS)
    if unknown:
        parser.error(f"--setups: unknown {', '.join(sorted(unknown))}; choose from {', '.join(SETUPS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    sys.path.insert(0, str(ROOT / "src"))
    stamp = utc_stamp()
    report: dict[str, Any] = {"bench": "replicas", "time": stamp, "label": args.label, "machine": machine(),
                              "git": git_state(), "setups": {}, "goals": {}}  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix="gitstafette-bench-redis-"))
    own: RedisServer | None = None
    if not args.redis and any(s.startswith("redis") for s in args.setups):
        if shutil.which("redis-server") is None:
            raise SystemExit("redis-server is not installed: give --redis URL of a Redis to use")
        fsync = [] if args.redis_fsync == "off" else ["--appendfsync", args.redis_fsync]
        own = RedisServer(folder, appendonly=args.redis_fsync != "off", extra_args=fsync)
    exit_code = 0
    try:
        redis_url = args.redis or (f"{own.start().url}/0" if own else None)
        redis_pid = None
        if redis_url:
            redis_pid, report["redis"] = redis_facts(redis_url)
            report["redis"]["url"] = redis_url
        for setup in args.setups:
            print(f"[bench] {setup} …", file=sys.stderr)
            report["setups"][setup] = run_setup(args, setup, redis_url, redis_pid)
    except KeyboardInterrupt:
        report["error"], exit_code = "interrupted", 130
    except Exception as exc:
        report["error"], exit_code = f"{type(exc).__name__}: {exc}", 1
    finally:
        if own is not None:
            own.stop()
        shutil.rmtree(folder, ignore_errors=True)
    two = report["setups"].get("redis-2", {})
    if "ingest" in two:
        rate = two["ingest"]["accepted_per_s"] or 0
        report["goals"][f"two replicas on Redis >= {GOAL_TWO_REPLICAS_PER_S:,.0f} webhooks/s"] = (
            rate >= GOAL_TWO_REPLICAS_PER_S
        )
        for name in ("latency_same_replica", "latency_across_replicas"):
            p50 = two[name]["post_to_stream"]["p50_ms"]
            where = "same replica" if name.endswith("same_replica") else "across replicas"
            report["goals"][f"two replicas: POST -> stream p50 <= {GOAL_P50_MS:g} ms ({where})"] = (
                p50 is not None and p50 <= GOAL_P50_MS
            )
    print_table(report)
    if report.get("error"):
        print(f"ERROR: {report['error']}", file=sys.stderr)
    write_report(report, args.results, f"replicas-{stamp}.json", not args.no_save)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
