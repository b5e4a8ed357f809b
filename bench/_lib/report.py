"""Figures and reports: percentiles, table rows, the machine and git state, and the JSON file of a run."""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import RESULTS, ROOT

__all__ = [
    "add_report_options",
    "argument_parser",
    "commit_text",
    "git_state",
    "latency_text",
    "machine",
    "pct",
    "percentiles",
    "print_goals",
    "print_profile",
    "record_failure",
    "rows",
    "utc_stamp",
    "write_report",
]


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    """A bench's parser: the first paragraph of its docstring as the description, defaults shown in the help."""
    return argparse.ArgumentParser(
        description=(doc or "").split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )


def add_report_options(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--results``, ``--no-save`` and ``--label``: where ``write_report`` writes, and a note kept in the JSON."""
    group.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON results")
    group.add_argument("--no-save", action="store_true", help="print only, write no file")
    group.add_argument("--label", default="", help="free text stored with the results")


def utc_stamp() -> str:
    """The time of a run, as the reports and their file names carry it (``20241130T231700Z``)."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def pct(part: float, whole: float) -> float | None:
    return round(100 * part / whole, 1) if whole > 0 else None


def percentiles(values: list[float] | array.array[float]) -> dict[str, float | None]:
    """p50/p90/p99/max (nearest rank) and mean, in milliseconds, of latencies in seconds."""
    if not values:
        return {"n": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    ordered = sorted(values)
    n = len(ordered)

    def rank(p: float) -> float:
        return ordered[min(n - 1, max(0, -(-int(p * n * 1000) // 1000) - 1))] * 1000

    return {
        "n": n,
        "p50_ms": round(rank(0.50), 3),
        "p90_ms": round(rank(0.90), 3),
        "p99_ms": round(rank(0.99), 3),
        "max_ms": round(ordered[-1] * 1000, 3),
        "mean_ms": round(sum(ordered) / n * 1000, 3),
    }


def latency_text(figures: dict[str, Any]) -> str:
    """``p50 / p90 / p99 / max ms`` of a ``percentiles()`` dict."""

    def one(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}" if value < 10 else f"{value:.1f}"

    return " / ".join(one(figures[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")) + " ms"


def rows(table: list[tuple[str, str, str]]) -> None:
    """Print (name, value, note) rows, the names in one column."""
    width = max(len(r[0]) for r in table)
    for name, value, note in table:
        print(f"  {name:<{width}}  {value}" + (f"   ({note})" if note else ""))


def print_goals(goals: dict[str, bool]) -> None:
    if goals:
        print()
        print("Goals: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in goals.items()))


def print_profile(
    process: str, during: str, spy: dict[str, Any], threads: int = 6, own: int = 12, inclusive: int = 15
) -> None:
    """A py-spy profile as ``cpu.summarise_collapsed()`` made it: the busiest threads, then the top frames."""
    print()
    print(
        f"py-spy of the {process} during {during}: {spy['samples']} busy samples at {spy['rate_hz']} Hz "
        f"(% of the busy samples of all threads; py-spy slows the {process} down)"
    )
    for t in spy["threads"][:threads]:
        print(f"  {t['pct']:5.1f} %  {t['thread']}  (~{t['est_busy_s']:.1f} s busy)")
    print("  top by own time:")
    for f in spy["top_self"][:own]:
        print(f"  {f['pct']:5.1f} %  {f['frame']}")
    print("  top by inclusive time (entry path left out):")
    for f in spy["top_inclusive"][:inclusive]:
        print(f"  {f['pct']:5.1f} %  {f['frame']}")


def machine() -> dict[str, Any]:
    """CPUs, Python, platform, load average and the versions of the packages that set the pace."""
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        names = ("grpcio", "protobuf", "uvicorn", "starlette", "httptools", "uvloop")
        info["packages"] = {name: version(name) for name in names}
    return info


def git_state(root: Path = ROOT) -> dict[str, Any]:
    """The commit measured, of the checkout at ``root``: ``git rev-parse HEAD``, ``git status --short src``, and a
    hash of each changed file (read-only git commands). Two of them, at the start and at the end, tell whether the
    sources changed."""

    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=root, capture_output=True, text=True, timeout=10).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    status = git("status", "--short", "--", "src")
    hashes: dict[str, str] = {}
    for line in status.splitlines():
        path = root / line[3:].strip()
        if path.is_file():
            hashes[line[3:].strip()] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return {"head": git("rev-parse", "HEAD") or None, "status_short_src": status, "changed_sha256_16": hashes}


def commit_text(state: dict[str, Any]) -> str:
    """``<head> + uncommitted changes in src: a, b…`` of a ``git_state()``, for the header of a table."""
    changed = [line[3:] for line in state.get("status_short_src", "").splitlines()]
    listed = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
    return f"{state['head']}" + (f" + uncommitted changes in src: {listed}" if changed else "")


def record_failure(report: dict[str, Any], exc: BaseException) -> int:
    """Note what ended a run early in ``report["error"]``; returns the exit code for it: 130 when the run was
    interrupted (Ctrl-C, a SIGTERM through ``processes.raise_on_sigterm``, a cancelled task), else 1."""
    if isinstance(exc, KeyboardInterrupt | asyncio.CancelledError):
        report["error"] = "interrupted"
        return 130
    report["error"] = f"{type(exc).__name__}: {exc}"
    return 1


def write_report(report: dict[str, Any], results: Path, name: str, save: bool = True) -> None:
    """Print the report as one JSON line; with ``save``, also write it (indented) to ``results/name``."""
    print(json.dumps(report, separators=(",", ":")))
    if not save:
        return
    results.mkdir(parents=True, exist_ok=True)
    out = results / name
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}", file=sys.stderr)
