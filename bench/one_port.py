"""The Cloud Run ingress's cost: bench/ingest.py's two measures, through the one port (HAProxy with
deploy/cloudrun/haproxy.cfg, started as its container starts it, in front of a server) and against the
two-port server directly, in the same run.

1. **Ingest throughput**: webhooks accepted (201) per second at ``-c`` concurrent senders (HTTP/1.1).
2. **POST → stream latency**: p50 from posting a webhook to receiving it on an acknowledged gRPC stream,
   both through the port measured.

Each round starts a fresh server (its own store) for each path; rounds alternate which path goes first, so
that a drift of the shared machine does not favour one. Every option of bench/ingest.py applies (except
``--url``: the servers are started here); ``--rounds`` (2) sets the rounds. Needs ``haproxy`` on PATH.

Prints both tables, then a comparison, and writes one JSON to ``bench/results/one-port-<time>.json``.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/one_port.py`: the repository root, for bench and tests
    sys.path.insert(0, str(ROOT))

from bench import ingest  # noqa: E402
from bench._lib import processes  # noqa: E402
from bench._lib import report as reporting  # noqa: E402
from tests.cloudrun.ingress import Ingress  # noqa: E402

#: the one-port path may lose this much against the two-port server, at most (issue 17)
MAX_LOSS = 0.10
PATHS = ("two-port", "one-port")


def measure(args: argparse.Namespace, path: str, tmpdir: str) -> dict[str, Any]:
    """Both measures of a fresh server, through ``path``."""
    report: dict[str, Any] = {"path": path}
    started: list[processes.ServerUnderTest] = []
    ingress: Ingress | None = None
    try:
        target = ingest.start_target(args, tempfile.mkdtemp(dir=tmpdir), started)
        if path == "one-port":
            ingress = Ingress(target.server).start()  # type: ignore[arg-type]  # has http_port and grpc_port
            target.port, target.grpc = ingress.port, ingress.grpc_target
            target.config["server"] += f"; through HAProxy on 127.0.0.1:{ingress.port} (pid {ingress.process.pid})"
        report["config"] = target.config
        ingest.run_measures(args, target, report, lambda name: Path(tmpdir) / f"{path}-{name}-pyspy.txt")
    finally:
        if ingress is not None:
            ingress.stop(signal.SIGTERM, 10)
        for server in started:
            server.stop()
    return report


def _figures(report: dict[str, Any]) -> tuple[float, float]:
    return report["ingest"]["accepted_per_s"], report["stream"]["post_to_stream"]["p50_ms"]


def compare(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Medians over the rounds of each path's accepted/s and POST → stream p50, and the one port's loss."""
    summary: dict[str, Any] = {}
    for path in PATHS:
        figures = [_figures(round_[path]) for round_ in rounds]
        summary[path] = {
            "accepted_per_s": statistics.median(f[0] for f in figures),
            "post_to_stream_p50_ms": statistics.median(f[1] for f in figures),
            "each_round": [{"accepted_per_s": f[0], "post_to_stream_p50_ms": f[1]} for f in figures],
        }
    two, one = summary["two-port"], summary["one-port"]
    summary["throughput_loss"] = round(1 - one["accepted_per_s"] / two["accepted_per_s"], 3)
    summary["p50_increase"] = round(one["post_to_stream_p50_ms"] / two["post_to_stream_p50_ms"] - 1, 3)
    summary["within_10_percent"] = summary["throughput_loss"] <= MAX_LOSS
    return summary


def main(argv: list[str] | None = None) -> int:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--rounds", type=int, default=2)
    known, rest = own.parse_known_args(argv)
    args = ingest.parse_args(rest)
    if args.url or args.skip_ingest or args.skip_stream:
        raise SystemExit("one_port.py starts its own servers and takes both measures: no --url, --skip-*")
    if shutil.which("haproxy") is None:
        raise SystemExit("haproxy is not installed (apt-get install haproxy)")
    signal.signal(signal.SIGTERM, processes.raise_on_sigterm)
    stamp = reporting.utc_stamp()
    report: dict[str, Any] = {"bench": "one-port", "time": stamp, "label": args.label, "rounds": []}
    report |= {"machine": reporting.machine(), "git": reporting.git_state(args.checkout)}
    tmpdir = tempfile.mkdtemp(prefix="gitstafette-bench-one-port-")
    exit_code = 0
    try:
        for number in range(known.rounds):
            order = PATHS if number % 2 == 0 else PATHS[::-1]
            round_ = {path: measure(args, path, tmpdir) for path in order}
            report["rounds"].append(round_)
            for path in order:
                print(f"== round {number + 1}: {path}")
                ingest.print_table({**{k: report[k] for k in ("time", "machine", "git")}, **round_[path]})
        report["comparison"] = compare(report["rounds"])
    except (KeyboardInterrupt, Exception) as exc:
        exit_code = reporting.record_failure(report, exc)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    if "comparison" in report:
        c = report["comparison"]
        for path in PATHS:
            rate, p50 = c[path]["accepted_per_s"], c[path]["post_to_stream_p50_ms"]
            print(f"{path:>9}: {rate:8.1f} accepted/s   POST -> stream p50 {p50:.3f} ms   (median of {known.rounds})")
        print(f"one port: {c['throughput_loss']:+.1%} throughput lost, p50 {c['p50_increase']:+.1%}; "
              f"within {MAX_LOSS:.0%}: {c['within_10_percent']}")  # fmt: skip
    if report.get("error"):
        print(f"ERROR: {report['error']}", file=sys.stderr)
    reporting.write_report(report, args.results, f"one-port-{stamp}.json", not args.no_save)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
