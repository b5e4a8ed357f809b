#!/usr/bin/env python3
"""Before and after: the relay measured at two commits in one run, so that a change can show it is not slower.

``--base`` (default b061218, the commit before the refactor) and ``--head`` (default: this repository's working
tree, uncommitted changes included) each get a checkout: a temporary ``git worktree add --detach`` of a commit,
removed at the end (also after an error, Ctrl-C or SIGTERM), or the working tree itself. Then, for ``--rounds``
rounds, every measure runs once on each tree, the two back to back and in turn first (base then head, then head
then base, …), so that a machine shared with other work weighs on both alike:

- ``relay-idle``: ``bench/relay.py -n N --skip-throughput``: one webhook at a time, POST → target p50 and p99,
  and the CPU per event of the server and of the client;
- ``relay-burst``: ``bench/relay.py -m M -c C --skip-latency``: delivered per second, end-to-end p50, CPU per event;
- ``ingest``: ``bench/ingest.py -n N -m M``: accepted (201) per second, POST → stream p50, server CPU per webhook.

Each bench is this tree's (``bench/`` of the checkout this script sits in: the same senders, target and stream
reader for both); only the server and the client it starts run the tree's code (``--src <tree>/src``).

Prints one table (each figure's median over the rounds, with its range, for base and head, and head / base),
and writes it as JSON and Markdown to ``bench/results/``. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/before_after.py`: the repository root, for bench._lib
    sys.path.insert(0, str(ROOT))

from bench._lib import processes  # noqa: E402
from bench._lib import report as reporting  # noqa: E402

#: the commit before the refactor the issue is about ("Explicit seams and a layout that shows the architecture")
DEFAULT_BASE = "b061218"
#: how long a bench may take to stop its server and client after the SIGTERM it is sent when the run is cut short
STOP_GRACE_S = 90.0


@dataclass(frozen=True)
class Tree:
    """One side of the comparison: a checkout whose ``src`` the server and client run."""

    role: str  # "base" or "head"
    rev: str  # as asked for; "working tree" for this checkout as it is
    commit: str  # the full hash (for the working tree: its HEAD, which it may differ from)
    path: Path  # the checkout
    temporary: bool  # a worktree made by this run, removed at its end

    @property
    def src(self) -> Path:
        return self.path / "src"

    def describe(self) -> str:
        return f"{self.rev} ({self.commit[:12]})" if self.rev != self.commit else self.commit[:12]


@dataclass(frozen=True)
class Figure:
    """One figure a measure reports: where it is in the bench's JSON, its unit, and which way is better."""

    label: str
    path: tuple[str, ...]
    unit: str  # "ms", "/s" or "µs"
    higher_is_better: bool = False

    def read(self, report: dict[str, Any]) -> float | None:
        return _number_at(report, self.path)


def _number_at(report: dict[str, Any], path: tuple[str, ...]) -> float | None:
    """The number at ``path`` in a bench's JSON report; None where there is none (a measure that did not run)."""
    value: Any = report
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) else None


@dataclass(frozen=True)
class Measure:
    """A bench run with its own options; its figures; the counts that must be 0 for the figures to count.

    ``sizes`` pairs each option of the bench that sets a size with the ``args`` attribute that gives it."""

    name: str
    script: str
    options: tuple[str, ...]
    sizes: tuple[tuple[str, str], ...]
    figures: tuple[Figure, ...]
    must_be_zero: tuple[tuple[str, ...], ...]

    def argv(self, args: argparse.Namespace) -> list[str]:
        return [*self.options, *(part for flag, name in self.sizes for part in (flag, str(getattr(args, name))))]


def _cpu(section: tuple[str, ...], noun: str) -> tuple[Figure, Figure]:
    return (
        Figure(f"server CPU per {noun}", (*section, "server", "us_per_request"), "µs"),
        Figure(f"client CPU per {noun}", (*section, "client", "us_per_request"), "µs"),
    )


def _mismatches(section: tuple[str, ...], *extra: str) -> tuple[tuple[str, ...], ...]:
    names = ("lost", "duplicated", *extra, "body_mismatches", "header_mismatches")
    return tuple((*section, name) for name in names)


MEASURES = {
    measure.name: measure
    for measure in (
        Measure(
            "relay-idle",
            "relay.py",
            ("--skip-throughput",),
            (("-n", "idle_webhooks"),),
            (
                Figure("POST -> target p50", ("latency", "relay", "post_to_target", "p50_ms"), "ms"),
                Figure("POST -> target p99", ("latency", "relay", "post_to_target", "p99_ms"), "ms"),
                *_cpu(("latency", "cpu_relay_part"), "event"),
            ),
            _mismatches(("latency", "relay")),
        ),
        Measure(
            "relay-burst",
            "relay.py",
            ("--skip-latency",),
            (("-m", "burst_webhooks"), ("-c", "burst_concurrency")),
            (
                Figure("delivered", ("throughput", "relay", "delivered_per_s"), "/s", higher_is_better=True),
                Figure("end-to-end p50", ("throughput", "relay", "end_to_end", "p50_ms"), "ms"),
                *_cpu(("throughput", "relay", "cpu"), "event"),
            ),
            _mismatches(("throughput", "relay"), "out_of_order"),
        ),
        Measure(
            "ingest",
            "ingest.py",
            (),
            (("-n", "ingest_webhooks"), ("-m", "stream_webhooks")),
            (
                Figure("accepted 201s", ("ingest", "accepted_per_s"), "/s", higher_is_better=True),
                Figure("POST -> stream p50", ("stream", "post_to_stream", "p50_ms"), "ms"),
                Figure("server CPU per webhook", ("ingest", "server_cpu", "us_per_request"), "µs"),
            ),
            (("durability", "missing"), ("stream", "redeliveries_seen")),
        ),
    )
}


# ---------------------------------------------------------------------------------------------------
# The two trees


def _git(*argv: str) -> str:
    """A git command in this repository; its output, or SystemExit with git's own message."""
    done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout.strip()


def _commit(rev: str) -> str:
    try:
        return _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except SystemExit:
        raise SystemExit(f"{rev!r}: not a commit of this repository") from None


@contextlib.contextmanager
def checkouts(base: str, head: str | None, folder: Path) -> Iterator[list[Tree]]:
    """The base and head trees; the worktrees made for them are removed when the block ends, however it ends."""
    made: list[Path] = []
    try:
        trees = []
        for role, rev in (("base", base), ("head", head)):
            if rev is None:
                trees.append(Tree(role, "working tree", _git("rev-parse", "HEAD"), ROOT, temporary=False))
                continue
            commit = _commit(rev)
            path = folder / f"{role}-{commit[:12]}"
            made.append(path)
            _git("worktree", "add", "--quiet", "--detach", str(path), commit)
            trees.append(Tree(role, rev, commit, path, temporary=True))
        yield trees
    finally:
        for path in made:
            removed = subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, capture_output=True)
            if removed.returncode != 0:  # half made, or already gone: drop the folder and git's record of it
                shutil.rmtree(path, ignore_errors=True)
                subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)


def check_imports(tree: Tree) -> str:
    """Where ``python -m gitstafette`` finds the package with ``--src <tree>/src``; SystemExit if not in the tree."""
    probe = [sys.executable, "-c", "import gitstafette; print(gitstafette.__file__)"]
    done = subprocess.run(
        probe, cwd=ROOT, env=processes.child_environment(tree.src), capture_output=True, text=True, timeout=60
    )
    found = done.stdout.strip()
    if done.returncode != 0 or not Path(found).resolve().is_relative_to(tree.src.resolve()):
        raise SystemExit(f"{tree.role}: gitstafette comes from {found or done.stderr.strip()!r}, not {tree.src}")
    return found


# ---------------------------------------------------------------------------------------------------
# The runs


def run_bench(command: list[str], log: Path, timeout: float) -> int:
    """Run one bench, its output to ``log``; its exit code. The bench has a process group of its own, so a Ctrl-C
    here does not reach it: when this run is cut short it is sent one SIGTERM, and stops its server and client."""
    with log.open("w") as out:
        bench = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, process_group=0)
        try:
            return bench.wait(timeout)
        except BaseException:  # a timeout, Ctrl-C, SIGTERM: let the bench clean up, then go on unwinding
            bench.send_signal(signal.SIGTERM)
            try:
                bench.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                bench.kill()
                bench.wait()
            raise


def measure_once(args: argparse.Namespace, measure: Measure, tree: Tree, round_: int, work: Path) -> dict[str, Any]:
    """One run of one measure on one tree: the figures, what must be 0 and is not, and the git record."""
    folder = work / f"round{round_}-{measure.name}-{tree.role}"
    folder.mkdir()
    command = [sys.executable, str(ROOT / "bench" / measure.script), *measure.argv(args), "--store", args.store]
    command += ["--src", str(tree.src), "--results", str(folder), "--label", f"before-after {tree.role} {round_}"]
    log = folder / "output.txt"
    started = time.monotonic()
    try:
        code = run_bench(command, log, args.run_timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{measure.name} on {tree.role} did not finish within {args.run_timeout:g} s") from None
    written = sorted(folder.glob("*.json"))
    if code != 0 or len(written) != 1:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:])
        raise RuntimeError(f"{measure.name} on {tree.role} exited with {code}; its last lines:\n{tail}")
    report = json.loads(written[0].read_text())
    wrong = {"/".join(path): value for path in measure.must_be_zero if (value := _number_at(report, path))}
    return {
        "round": round_,
        "measure": measure.name,
        "tree": tree.role,
        "seconds": round(time.monotonic() - started, 1),
        "figures": {figure.label: figure.read(report) for figure in measure.figures},
        "not_zero": wrong,
        "git": report.get("git_at_start") or report.get("git"),
        "command": " ".join(command),
    }


def _progress(run: dict[str, Any], measure: Measure, rounds: int) -> str:
    figures = ", ".join(f"{f.label} {_number(run['figures'][f.label], f.unit)}" for f in measure.figures)
    wrong = f"  NOT ZERO: {run['not_zero']}" if run["not_zero"] else ""
    return f"[before-after] round {run['round']}/{rounds} {measure.name} {run['tree']}: {figures}{wrong}"


def run_rounds(args: argparse.Namespace, trees: list[Tree], work: Path, runs: list[dict[str, Any]]) -> None:
    """Every measure on both trees each round, back to back, base first in odd rounds and head first in even ones;
    each run is appended to ``runs`` as it ends (so an interrupted run keeps what was measured)."""
    for round_ in range(1, args.rounds + 1):
        order = trees if round_ % 2 else trees[::-1]
        for name in args.only:
            for tree in order:
                run = measure_once(args, MEASURES[name], tree, round_, work)
                runs.append(run)
                print(_progress(run, MEASURES[name], args.rounds), file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------
# The table


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    return f"{value:,.0f}"


def _spread(values: list[float], unit: str) -> str:
    if not values:
        return "-"
    median = _number(statistics.median(values), unit)
    if len(values) == 1:
        return median
    return f"{median} ({_number(min(values), unit)}–{_number(max(values), unit)})"


def summarise(runs: list[dict[str, Any]], only: list[str]) -> list[dict[str, Any]]:
    """Per figure: the values of each tree over the rounds, their medians, and head / base of the medians."""
    rows = []
    for name in only:
        for figure in MEASURES[name].figures:
            row: dict[str, Any] = {"measure": name, "figure": figure.label, "unit": figure.unit}
            row["higher_is_better"] = figure.higher_is_better
            for role in ("base", "head"):
                values = [r["figures"][figure.label] for r in runs if r["measure"] == name and r["tree"] == role]
                row[role] = [v for v in values if v is not None]
                row[f"{role}_median"] = statistics.median(row[role]) if row[role] else None
            base, head = row["base_median"], row["head_median"]
            row["head_to_base"] = round(head / base, 3) if base and head is not None else None
            rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(measure, base median (min–max), head median (min–max), head / base) for each figure."""
    return [
        (
            f"{row['measure']}: {row['figure']} ({row['unit']})",
            _spread(row["base"], row["unit"]),
            _spread(row["head"], row["unit"]),
            "-" if row["head_to_base"] is None else f"{row['head_to_base']:.2f}",
        )
        for row in rows
    ]


HEADINGS = ("measure", "base median (min–max)", "head median (min–max)", "head / base")
LEGEND = "head / base above 1: more in head; better for /s, worse for ms and µs."


def print_table(report: dict[str, Any], lines: list[tuple[str, str, str, str]]) -> None:
    print()
    print(f"gitstafette before / after  {report['time']}, {report['config']['rounds']} round(s)")
    for role in ("base", "head"):
        print(f"  {role:<5} {report['trees'][role]['describe']}")
    widths = [max(len(cells[k]) for cells in [HEADINGS, *lines]) for k in range(4)]
    for cells in [HEADINGS, *lines]:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip())
    print(LEGEND)
    for run in report["runs"]:
        if run["not_zero"]:
            print(f"NOTE round {run['round']} {run['measure']} {run['tree']}: should be 0: {run['not_zero']}")
    print()


def markdown(report: dict[str, Any], lines: list[tuple[str, str, str, str]]) -> str:
    trees, config = report["trees"], report["config"]
    load = " ".join(report["machine"].get("loadavg_at_start") or ["?"])
    text = [
        f"# Before / after, {report['time']}",
        "",
        f"- base: {trees['base']['describe']}",
        f"- head: {trees['head']['describe']}",
        f"- {config['rounds']} round(s), store {config['store']}; sizes: {json.dumps(config['sizes'])}",
        f"- machine: {report['machine'].get('nproc')} CPUs, load average at the start {load}",
        "",
        "| " + " | ".join(HEADINGS) + " |",
        "| --- | --- | --- | --- |",
        *("| " + " | ".join(cells) + " |" for cells in lines),
        "",
        LEGEND,
    ]
    if report.get("error"):
        text += ["", f"**Cut short:** {report['error']}"]
    return "\n".join(text) + "\n"


# ---------------------------------------------------------------------------------------------------


def _measures(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in MEASURES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{value!r}: choose from {', '.join(MEASURES)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = reporting.argument_parser(__doc__)
    trees = parser.add_argument_group("what is compared")
    trees.add_argument("--base", default=DEFAULT_BASE, help="the commit to compare with (any git revision)")
    trees.add_argument("--head", help="the commit to compare; none: this repository's working tree, as it is")
    trees.add_argument("--rounds", type=int, default=3, help="runs of each measure on each tree")
    trees.add_argument("--only", type=_measures, default=",".join(MEASURES), metavar="MEASURE,…",
                       help="the measures to run, comma-separated")  # fmt: skip
    trees.add_argument("--store", default="sqlite", help=processes.STORE_HELP)
    sizes = parser.add_argument_group("sizes")
    sizes.add_argument("--idle-webhooks", type=int, default=300, help="relay-idle: webhooks one at a time (-n)")
    sizes.add_argument("--burst-webhooks", type=int, default=2000, help="relay-burst: webhooks (-m)")
    sizes.add_argument("--burst-concurrency", type=int, default=32, help="relay-burst: concurrent senders (-c)")
    sizes.add_argument("--ingest-webhooks", type=int, default=5000, help="ingest: webhooks for the throughput (-n)")
    sizes.add_argument("--stream-webhooks", type=int, default=1000, help="ingest: webhooks one at a time (-m)")
    other = parser.add_argument_group("other")
    other.add_argument("--run-timeout", type=float, default=1800, help="seconds one bench run may take at most")
    reporting.add_report_options(other)
    args = parser.parse_args(argv)
    for name in ("rounds", *(name for m in MEASURES.values() for _, name in m.sizes)):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, processes.raise_on_sigterm)  # so that the worktrees are removed
    stamp = reporting.utc_stamp()
    sizes = {name: getattr(args, name) for measure in args.only for _, name in MEASURES[measure].sizes}
    config = {"rounds": args.rounds, "measures": args.only, "store": args.store, "sizes": sizes}
    report: dict[str, Any] = {"bench": "before-after", "time": stamp, "label": args.label, "config": config}
    report |= {"machine": reporting.machine(), "trees": {}, "runs": []}
    work = Path(tempfile.mkdtemp(prefix="gitstafette-before-after-"))
    exit_code = 0
    try:
        with checkouts(args.base, args.head, work) as trees:
            for tree in trees:
                git = reporting.git_state(tree.path)
                changed = " + uncommitted changes in src" if git["status_short_src"] else ""
                report["trees"][tree.role] = {
                    "rev": tree.rev,
                    "commit": tree.commit,
                    "describe": tree.describe() + changed,
                    "gitstafette_from": check_imports(tree),
                    "git": git,
                }
            run_rounds(args, trees, work, report["runs"])
    except (KeyboardInterrupt, Exception) as exc:
        exit_code = reporting.record_failure(report, exc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not report["runs"]:  # cut short before anything was measured
        print(f"ERROR: {report['error']}", file=sys.stderr)
        return exit_code
    report["summary"] = summarise(report["runs"], args.only)
    lines = table(report["summary"])
    print_table(report, lines)
    if report.get("error"):
        print(f"ERROR: {report['error']}", file=sys.stderr)
    name = f"before-after-{args.store.split(':')[0] or 'x'}-{stamp}"
    reporting.write_report(report, args.results, f"{name}.json", not args.no_save)
    if not args.no_save:
        (args.results / f"{name}.md").write_text(markdown(report, lines))
        print(f"written: {(args.results / name).with_suffix('.md')}", file=sys.stderr)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
