#!/usr/bin/env python3
"""Fault drills: a real server, client and target on loopback, a burst of webhooks, and a fault in the middle
of it. Each drill reports how many webhooks were sent, accepted (answered 201 or 204), delivered to the target,
lost (accepted but never delivered: must be 0) and delivered more than once, and how long the relay took to
deliver again once the fault was over.

The drills:

- ``server-kill``: ``kill -9`` of the server, restarted on the same ports after ``--hold`` seconds;
- ``client-kill``: ``kill -9`` of the client, restarted after ``--hold`` seconds;
- ``target-stop``: the target closes its port (connections refused) for ``--hold`` seconds;
- ``redis-restart``: ``kill -9`` of the Redis the server stores in (a ``redis-server`` of the drill's own on a
  free port, ``appendonly yes``, ``appendfsync always``), started again after ``--hold`` seconds;
- ``server-pause``: the server is stopped with ``SIGSTOP`` for ``--hold`` seconds, then ``SIGCONT`` (the
  network path drops: nothing answers, nothing is refused).

The senders post each webhook again (the same ``X-GitHub-Delivery``, as a GitHub redelivery) until it is
answered 201 or 204, so every webhook is accepted in the end unless the drill runs out of time. The test suite
runs the same drills in a short form (tests/drills/test_faults.py). See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/faults.py`: the repository root, for bench._lib and the
    sys.path.insert(0, str(ROOT))  # test helpers that start the processes

import httpx  # noqa: E402
from bench._lib import RESULTS  # noqa: E402
from bench._lib.report import utc_stamp, write_report  # noqa: E402
from tests.client.utils import PUSH, ClientProcess, Recorded, RecordingTarget  # noqa: E402
from tests.redis_utils import RedisServer  # noqa: E402
from tests.utils import ServerProcess, github_request  # noqa: E402

DRILLS = ("server-kill", "client-kill", "target-stop", "redis-restart", "server-pause")
#: how long one POST may take before the sender gives up on it and posts it again
POST_TIMEOUT_S = 2.0
#: pause of a sender between two attempts at one webhook
RETRY_PAUSE_S = 0.1
#: the repository of the probe webhook posted once a fault is over: a delivery lane of its own in the client, so
#: that it does not wait behind the burst's backlog
PROBE_REPOSITORY = "537845873"
#: the client's reconnect and retry caps in the drills (its defaults are for production)
CLIENT_ARGS = ("--reconnect-max-delay", "1s", "--retry-max-delay", "0.5s")


@dataclass
class DrillOptions:
    webhooks: int = 2000
    concurrency: int = 8
    #: webhooks per second from all senders together (0: as fast as the server answers, so that the relay has a
    #: backlog when the fault strikes)
    rate: float = 0.0
    #: how long the fault lasts, seconds
    hold_s: float = 5.0
    #: how long the target takes to answer each POST, seconds: with the client's one POST at a time per
    #: repository, delivery falls behind ingest, so that the fault strikes with a backlog in the server
    target_delay_s: float = 0.002
    #: the fault starts once this share of the webhooks was accepted
    fault_at: float = 1 / 3
    #: store of the server: ``sqlite`` (a file in a temporary folder) or ``redis`` (a redis-server of the drill's own)
    store: str = "sqlite"
    #: give up waiting for deliveries once none arrived for this long, seconds
    drain_timeout_s: float = 30.0
    #: give up sending a webhook after this long, seconds
    send_timeout_s: float = 120.0


@dataclass
class DrillResult:
    drill: str
    store: str
    webhooks: int
    concurrency: int
    rate: float
    hold_s: float
    #: distinct webhooks posted in the burst (the probe not counted)
    sent: int = 0
    #: POST attempts, including the repeats of a webhook while the relay was down (and the probe's)
    posts: int = 0
    #: webhooks answered 201 or 204 (stored)
    accepted: int = 0
    #: accepted webhooks that reached the target (2xx)
    delivered: int = 0
    #: accepted but never delivered: must be 0
    lost: int = 0
    #: webhooks that reached the target more than once, and the extra copies
    duplicates: int = 0
    extra_deliveries: int = 0
    #: deliveries whose body or delivery id is not one the senders sent
    unexpected: int = 0
    #: when the fault struck: webhooks accepted by then, and of those not delivered yet (the backlog)
    accepted_at_fault: int = 0
    backlog_at_fault: int = 0
    #: how long the fault lasted (until the process was back, the port open again, SIGCONT)
    outage_s: float = 0.0
    #: from the end of the fault until a webhook posted then (to a repository of its own, so that it does not
    #: wait behind the backlog) reached the target: the whole path works again
    recovery_s: float | None = None
    #: from the end of the fault until every accepted webhook had arrived
    drain_s: float | None = None
    #: what the POSTs were answered, by status, and the errors of those that got no answer
    answers: dict[str, int] = field(default_factory=dict)
    lost_ids: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return (
            not self.error
            and self.lost == 0
            and self.unexpected == 0
            and self.accepted == self.sent
            and self.recovery_s is not None
        )


class Arrivals:
    """What the target received: each delivery id with the times it arrived (the target's answer callback)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.times: dict[str, list[float]] = {}
        self.unexpected = 0
        self._lock = threading.Lock()

    def answer(self, request: Recorded) -> int:
        now = time.monotonic()
        with self._lock:
            self.times.setdefault(request.delivery_id, []).append(now)
            if request.body != self.body:
                self.unexpected += 1
        return 200

    def snapshot(self) -> dict[str, list[float]]:
        with self._lock:
            return {delivery: list(at) for delivery, at in self.times.items()}

    def delivered(self) -> set[str]:
        with self._lock:
            return set(self.times)


class Burst:
    """``webhooks`` push webhooks posted by ``concurrency`` threads at about ``rate`` per second; each is posted
    again until it is answered 201 or 204."""

    def __init__(self, url: str, options: DrillOptions) -> None:
        self.url = f"{url}/v1/github/"
        self.options = options
        self.ids = [str(uuid.uuid4()) for _ in range(options.webhooks)]
        self.accepted: dict[str, int] = {}
        self.answers: Counter[str] = Counter()
        self.posts = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> Burst:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def join(self) -> None:
        assert self._thread is not None
        self._thread.join()

    def accepted_count(self) -> int:
        with self._lock:
            return len(self.accepted)

    def accepted_ids(self) -> set[str]:
        with self._lock:
            return set(self.accepted)

    def _run(self) -> None:
        started = time.monotonic()
        deadline = started + self.options.send_timeout_s
        with (
            httpx.Client(timeout=POST_TIMEOUT_S) as http,
            ThreadPoolExecutor(self.options.concurrency) as pool,
        ):
            # at most one webhook waiting per sender, so that the pace holds while the relay is down
            slots = threading.BoundedSemaphore(2 * self.options.concurrency)
            for k, delivery in enumerate(self.ids):
                if self.options.rate:
                    time.sleep(max(0.0, started + k / self.options.rate - time.monotonic()))
                slots.acquire()
                pool.submit(self._post, http, delivery, deadline).add_done_callback(lambda _: slots.release())

    def post(self, delivery: str, repository: str = "") -> None:
        """Post one more webhook (to ``repository``) until it is accepted; returns then, or at the deadline."""
        with httpx.Client(timeout=POST_TIMEOUT_S) as http:
            self._post(http, delivery, time.monotonic() + self.options.send_timeout_s, repository)

    def _post(self, http: httpx.Client, delivery: str, deadline: float, repository: str = "") -> None:
        headers, body, _ = github_request(PUSH, delivery)
        if repository:
            headers["X-GitHub-Hook-Installation-Target-ID"] = repository
        while time.monotonic() < deadline:
            try:
                status = http.post(self.url, headers=headers, content=body).status_code
                answer = str(status)
            except httpx.HTTPError as exc:
                status, answer = 0, type(exc).__name__
            with self._lock:
                self.posts += 1
                self.answers[answer] += 1
                if status in (201, 204):
                    self.accepted[delivery] = status
                    return
            time.sleep(RETRY_PAUSE_S)


class Rig:
    """A target, a server (and its Redis, for the Redis store) and a client, each of which a drill may break
    and start again: the server on the same ports, Redis on the same port and folder."""

    def __init__(self, options: DrillOptions, folder: Path, redis: bool) -> None:
        self.options = options
        self.folder = folder
        self.arrivals = Arrivals(PUSH.read_bytes())
        self.target = RecordingTarget()
        self.target.answer = self.arrivals.answer
        self.target.delay_s = options.target_delay_s
        self.redis: RedisServer | None = None
        if redis:
            self.redis = RedisServer(folder, appendonly=True, extra_args=["--appendfsync", "always"])
            self.store = f"redis://127.0.0.1:{self.redis.port}/0?prefix=gst-drill"
        else:
            self.store = f"sqlite:///{folder / 'events.db'}"
        self.server = ServerProcess("--store", self.store, "--repositories", "*")
        self.client: ClientProcess | None = None

    def start(self) -> None:
        self.target.start()
        if self.redis is not None:
            self.redis.start()
        self.server.start()
        self.server.wait_ready()
        self.client = self._new_client().start()
        self.client.wait_connected()

    def _new_client(self) -> ClientProcess:
        repository = github_request(PUSH)[2]
        repositories = [repository, PROBE_REPOSITORY]
        return ClientProcess([self.server.grpc_target], repositories, self.target.url, "drill", *CLIENT_ARGS)

    def restart_server(self) -> None:
        ports = ("--http-port", str(self.server.http_port), "--grpc-port", str(self.server.grpc_port))
        self.server = ServerProcess(*self.server.args, *ports)
        self.server.start()

    def restart_client(self) -> None:
        self.client = self._new_client().start()

    def close(self) -> None:
        """The client first (it acknowledges what it delivered), then the server, Redis and the target."""
        for child in (self.client, self.server):
            if child is not None and child.alive():
                try:
                    child.stop(timeout=20)
                except Exception:  # a drill's own wreckage: killed below
                    pass
            if child is not None:
                child.kill()
        if self.redis is not None:
            self.redis.stop()
        self.target.stop()


def _kill_server(rig: Rig, hold_s: float) -> None:
    rig.server.kill()  # SIGKILL
    time.sleep(hold_s)
    rig.restart_server()


def _kill_client(rig: Rig, hold_s: float) -> None:
    assert rig.client is not None
    rig.client.kill()  # SIGKILL
    time.sleep(hold_s)
    rig.restart_client()


def _stop_target(rig: Rig, hold_s: float) -> None:
    rig.target.stop()
    time.sleep(hold_s)
    rig.target.start()


def _restart_redis(rig: Rig, hold_s: float) -> None:
    assert rig.redis is not None and rig.redis.process is not None
    rig.redis.process.kill()  # SIGKILL
    rig.redis.process.wait(10)
    time.sleep(hold_s)
    rig.redis.start()


def _pause_server(rig: Rig, hold_s: float) -> None:
    assert rig.server.process is not None
    pid = rig.server.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(hold_s)
    finally:
        os.kill(pid, signal.SIGCONT)


#: drill → what it breaks; each returns once the fault is over (the process back, the port open, SIGCONT)
FAULTS: dict[str, Callable[[Rig, float], None]] = {
    "server-kill": _kill_server,
    "client-kill": _kill_client,
    "target-stop": _stop_target,
    "redis-restart": _restart_redis,
    "server-pause": _pause_server,
}


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _drain(rig: Rig, burst: Burst, timeout: float) -> None:
    """Wait until every accepted webhook arrived, or none arrived for ``timeout`` seconds."""
    last, progress = -1, time.monotonic()
    while True:
        missing = burst.accepted_ids() - rig.arrivals.delivered()
        if not missing:
            return
        if len(missing) != last:
            last, progress = len(missing), time.monotonic()
        elif time.monotonic() - progress > timeout:
            return
        time.sleep(0.02)


@contextmanager
def _rig(options: DrillOptions, redis: bool) -> Iterator[Rig]:
    folder = Path(tempfile.mkdtemp(prefix="gitstafette-drill-"))
    rig = Rig(options, folder, redis)
    try:
        rig.start()
        yield rig
    finally:
        rig.close()
        shutil.rmtree(folder, ignore_errors=True)


def run_drill(name: str, options: DrillOptions) -> DrillResult:
    """One drill with its own processes; the figures, also when the drill failed (``error``)."""
    fault = FAULTS[name]
    redis = options.store == "redis" or name == "redis-restart"
    result = DrillResult(name, "redis" if redis else "sqlite", options.webhooks, options.concurrency, options.rate,
                         options.hold_s)  # fmt: skip
    try:
        with _rig(options, redis) as rig:
            burst = Burst(rig.server.url, options).start()
            threshold = max(1, int(options.webhooks * options.fault_at))
            if not _wait(lambda: burst.accepted_count() >= threshold, options.send_timeout_s):
                raise RuntimeError(f"only {burst.accepted_count()} webhooks accepted before the fault was due")
            fault_started = time.monotonic()
            accepted_at_fault = burst.accepted_ids()
            result.accepted_at_fault = len(accepted_at_fault)
            result.backlog_at_fault = len(accepted_at_fault - rig.arrivals.delivered())
            fault(rig, options.hold_s)
            fault_ended = time.monotonic()
            result.outage_s = round(fault_ended - fault_started, 3)
            probe = str(uuid.uuid4())
            burst.post(probe, PROBE_REPOSITORY)
            if _wait(lambda: probe in rig.arrivals.delivered(), options.drain_timeout_s):
                result.recovery_s = round(rig.arrivals.snapshot()[probe][0] - fault_ended, 3)
            burst.join()
            _drain(rig, burst, options.drain_timeout_s)
            _count(result, rig, burst, fault_ended, probe)
    except Exception as exc:  # reported with the figures, and by the exit code
        result.error = f"{type(exc).__name__}: {exc}"
    return result


def _count(result: DrillResult, rig: Rig, burst: Burst, fault_ended: float, probe: str) -> None:
    times = rig.arrivals.snapshot()
    times.pop(probe, None)
    accepted = burst.accepted_ids() - {probe}
    lost = sorted(accepted - set(times))
    result.sent, result.posts, result.accepted = len(burst.ids), burst.posts, len(accepted)
    result.delivered = len(accepted & set(times))
    result.lost, result.lost_ids = len(lost), lost[:10]
    result.duplicates = sum(len(at) > 1 for at in times.values())
    result.extra_deliveries = sum(len(at) - 1 for at in times.values())
    result.unexpected = rig.arrivals.unexpected + len(set(times) - set(burst.ids))
    result.answers = dict(sorted(burst.answers.items()))
    if not lost and times:
        last_first_arrival = max(min(at) for at in times.values())
        result.drain_s = round(max(0.0, last_first_arrival - fault_ended), 3)


# ---------------------------------------------------------------------------------------------------
# Report


def _table(results: list[DrillResult]) -> str:
    columns = ("drill", "store", "sent", "accepted", "delivered", "lost", "duplicates", "backlog_at_fault", "outage_s",
               "recovery_s", "drain_s")  # fmt: skip
    rows = [columns] + [tuple(str(getattr(r, c)) for c in columns) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = []
    for row in rows:
        cells = [cell.rjust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join([row[0].ljust(widths[0]), *cells[1:]]))
    for r in results:
        lines.append(f"{r.drill}: {r.posts} POSTs answered {r.answers}" + (f"; ERROR {r.error}" if r.error else ""))
        if r.lost_ids:
            lines.append(f"{r.drill}: LOST {r.lost_ids}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = DrillOptions()
    parser = argparse.ArgumentParser(
        description="Fault drills with real processes: a burst of webhooks through server, client and target, "
        "and a fault in the middle of it. Reports sent, accepted, delivered, lost (must be 0), duplicates and the "
        "time the relay took to deliver again.",
        epilog="Example: bench/faults.py --drill server-kill --drill client-kill -n 500 --hold 2",
    )
    parser.add_argument("--drill", action="append", choices=DRILLS, help="a drill to run (repeat it; default: all)")
    parser.add_argument("-n", "--webhooks", type=int, default=defaults.webhooks, help="webhooks in the burst")
    parser.add_argument("-c", "--concurrency", type=int, default=defaults.concurrency, help="sender threads")
    parser.add_argument("--rate", type=float, default=defaults.rate,
                        help="webhooks per second from all senders (0: as fast as the server answers)")  # fmt: skip
    parser.add_argument("--hold", type=float, default=defaults.hold_s, help="seconds the fault lasts")
    parser.add_argument("--store", choices=("sqlite", "redis"), default=defaults.store,
                        help="the server's store; redis starts a redis-server of the drill's own (redis-restart "
                        "always uses it)")  # fmt: skip
    parser.add_argument("--target-delay", type=float, default=defaults.target_delay_s,
                        help="seconds the target takes to answer each POST (delivery falls behind ingest, so the "
                        "fault strikes with a backlog)")  # fmt: skip
    parser.add_argument("--drain-timeout", type=float, default=defaults.drain_timeout_s,
                        help="stop waiting for deliveries once none arrived for this many seconds")  # fmt: skip
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON results")
    parser.add_argument("--no-save", action="store_true", help="do not write the JSON to --results")
    args = parser.parse_args(argv)
    if args.webhooks < 1 or args.concurrency < 1 or min(args.hold, args.rate, args.target_delay) < 0:
        parser.error("-n and -c must be at least 1, --hold, --rate and --target-delay not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    drills = args.drill or list(DRILLS)
    if (args.store == "redis" or "redis-restart" in drills) and shutil.which("redis-server") is None:
        print("redis-server is not installed: it is needed for --store redis and the redis-restart drill",
              file=sys.stderr)  # fmt: skip
        return 2
    options = DrillOptions(args.webhooks, args.concurrency, args.rate, args.hold, target_delay_s=args.target_delay,
                           store=args.store, drain_timeout_s=args.drain_timeout)  # fmt: skip
    load_before = os.getloadavg()
    results = []
    for name in drills:
        print(f"{name} ...", file=sys.stderr, flush=True)
        results.append(run_drill(name, options))
    report = {
        "bench": "faults",
        "time": utc_stamp(),
        "nproc": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "drills": [asdict(r) for r in results],
    }
    print(_table(results))
    write_report(report, args.results, f"faults-{report['time']}.json", not args.no_save)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
