#!/usr/bin/env python3
"""The floor of one repository's delivery rate: the client's own ``HttpTarget`` posting a webhook one at a
time, each after the previous answer, to the target of ``bench/relay.py`` (``bench/_lib/target.py``) in a
process of its own.

Events of one repository reach the target in order, so the client's lane for it sends one POST at a time.
Whatever the server and the gRPC stream do, that lane cannot deliver faster than this. Compare it with the
rate at which the server accepts webhooks in measure B of ``bench/relay.py`` (see bench/README.md).

    .venv/bin/python bench/one_lane.py                   # 5,000 POSTs of the push fixture, uvloop
    .venv/bin/python bench/one_lane.py --event-loop asyncio -n 20000

Prints one line and a JSON object: POSTs per second, and this process's CPU per POST (user and system).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/one_lane.py`: the repository root, for bench._lib
    sys.path.insert(0, str(ROOT))

from bench._lib.report import machine  # noqa: E402
from bench._lib.sender import DEFAULT_FIXTURE  # noqa: E402
from bench._lib.target import Recorder, start_target  # noqa: E402

from gitstafette._runtime import event_loop_factory  # noqa: E402
from gitstafette.client.relay import HttpTarget  # noqa: E402
from gitstafette.model import WebhookEvent  # noqa: E402


def _serve(ports: multiprocessing.Queue[int], event_loop: str) -> None:
    """The target, in a child process: answers 200 to every request, as in bench/relay.py."""

    async def main() -> None:
        server = await start_target(Recorder(), "127.0.0.1", 0)
        ports.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    with asyncio.Runner(loop_factory=event_loop_factory(event_loop)) as runner:
        runner.run(main())


def _event(fixture: Path) -> WebhookEvent:
    delivery = str(uuid.uuid4())
    return WebhookEvent(
        repository_id="186853002",
        delivery_id=delivery,
        event_type="push",
        body=fixture.read_bytes(),
        headers=(
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", delivery),
            ("X-GitHub-Hook-ID", "292430182"),
            ("Content-Type", "application/json"),
            ("User-Agent", "GitHub-Hookshot/044aadd"),
        ),
        received_at_ns=time.time_ns(),
    )


async def _post(url: str, event: WebhookEvent, count: int, warmup: int) -> dict[str, Any]:
    target = HttpTarget(url, 30.0)
    try:
        for _ in range(warmup):
            await target.send(event)
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(count):
            attempt = await target.send(event)
            if attempt.verdict != "ack":
                raise RuntimeError(f"the target answered {attempt.detail}")
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        await target.aclose()
    return {
        "posts": count,
        "posts_per_s": round(count / wall, 1),
        "wall_us_per_post": round(wall / count * 1e6, 1),
        "user_us_per_post": round((after.ru_utime - before.ru_utime) / count * 1e6, 1),
        "system_us_per_post": round((after.ru_stime - before.ru_stime) / count * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--posts", type=int, default=5000, help="POSTs measured (default 5000)")
    parser.add_argument("--warmup", type=int, default=200, help="POSTs first, not measured (default 200)")
    parser.add_argument("--event-loop", default="auto", help="auto (uvloop), uvloop or asyncio, as the client's")
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE, help="the webhook payload")
    args = parser.parse_args(argv)

    ports: multiprocessing.Queue[int] = multiprocessing.Queue()
    server = multiprocessing.Process(target=_serve, args=(ports, args.event_loop), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=30)
        event = _event(args.fixture)
        with asyncio.Runner(loop_factory=event_loop_factory(args.event_loop)) as runner:
            figures = runner.run(_post(f"http://127.0.0.1:{port}/hook", event, args.posts, args.warmup))
    finally:
        server.kill()
        server.join(5)
    report = {"bench": "one_lane", "machine": machine(), "event_loop": args.event_loop, **figures}
    print(
        f"one lane: {figures['posts_per_s']:,.0f} POSTs/s one at a time ({figures['wall_us_per_post']} µs each); "
        f"CPU per POST {figures['user_us_per_post']} µs user + {figures['system_us_per_post']} µs system"
    )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
