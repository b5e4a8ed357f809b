"""CPU time of processes (per thread, from /proc), of the whole machine and of this process, over a stretch
of a measure; waiting for a quiet machine; resident memory; py-spy profiles of a process."""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .report import pct

__all__ = [
    "CpuWindow",
    "PySpy",
    "proc_cpu",
    "rss_kib",
    "self_cpu",
    "summarise_collapsed",
    "system_cpu",
    "wait_quiet",
]


def proc_cpu(pid: int | None) -> dict[str, float]:
    """CPU seconds (user + system) per thread of a process, keyed ``"main"`` or ``"<comm> <tid>"``."""
    threads: dict[str, float] = {}
    if not pid:
        return threads
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return threads
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
        threads["main" if int(tid) == pid else f"{comm} {tid}"] = (int(fields[11]) + int(fields[12])) / ticks
    return threads


def system_cpu() -> tuple[float, float, float]:
    """(busy, total, interrupt) CPU seconds of the whole machine so far, from /proc/stat.

    Interrupt time (irq + softirq: on loopback, much of the TCP work) is charged to no process.
    """
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0, 0.0
    values += [0] * (8 - len(values))
    ticks = os.sysconf("SC_CLK_TCK")
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) / ticks, total / ticks, (values[5] + values[6]) / ticks


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuWindow:
    """CPU used by the server (per thread) and by the whole machine between ``start()`` and ``stop()``."""

    def __init__(self, server_pid: int | None) -> None:
        self.pid = server_pid
        self.threads: dict[str, float] = {}
        self.system = (0.0, 0.0, 0.0)
        self.started = self.wall_s = 0.0
        self.threads_after: dict[str, float] = {}
        self.system_after = (0.0, 0.0, 0.0)

    def start(self) -> None:
        self.threads, self.system, self.started = proc_cpu(self.pid), system_cpu(), time.perf_counter()

    def stop(self) -> None:
        self.threads_after, self.system_after = proc_cpu(self.pid), system_cpu()
        self.wall_s = time.perf_counter() - self.started

    def server(self, requests: int) -> dict[str, Any] | None:
        """Server CPU: total, its event-loop (main) thread, and the busiest other threads."""
        if not self.pid:
            return None
        deltas = {name: self.threads_after[name] - self.threads.get(name, 0.0) for name in self.threads_after}
        total = sum(deltas.values())
        main = deltas.pop("main", 0.0)
        others = sorted(((round(v, 3), k) for k, v in deltas.items() if v > 0.005), reverse=True)
        return {
            "cpu_s": round(total, 3),
            "cpu_pct": pct(total, self.wall_s),
            "main_thread_cpu_s": round(main, 3),
            "main_thread_pct": pct(main, self.wall_s),
            "other_threads_cpu_s": round(total - main, 3),
            "other_threads_pct": pct(total - main, self.wall_s),
            "busiest_other_threads": [{"thread": k, "cpu_s": v} for v, k in others[:6]],
            "us_per_request": round(1e6 * total / max(1, requests), 1),
        }

    def machine(self, accounted_s: float) -> dict[str, Any] | None:
        """The whole machine, and what ran besides the server and the sender (``accounted_s``)."""
        busy, capacity, interrupts = (
            after - before for after, before in zip(self.system_after, self.system, strict=True)
        )
        if capacity <= 0:
            return None
        others = max(0.0, busy - interrupts - accounted_s)
        return {
            "busy_pct_of_all_cores": pct(busy, capacity),
            # irq + softirq: mostly the kernel's side of the loopback TCP traffic, charged to no process.
            "interrupts_pct_of_one_core": pct(interrupts, self.wall_s),
            # Other processes (and py-spy): a large figure means the machine was not quiet.
            "others_cpu_s": round(others, 2) if self.pid else None,
            "others_pct_of_one_core": pct(others, self.wall_s) if self.pid else None,
        }


def wait_quiet(max_wait_s: float, threshold_pct: float = 15.0) -> dict[str, Any]:
    """Wait (at most ``max_wait_s``) until the machine is nearly idle: other work skews every figure."""
    started = time.monotonic()
    while True:
        before = system_cpu()
        time.sleep(1.0)
        after = system_cpu()
        busy = pct(after[0] - before[0] - (after[2] - before[2]), after[1] - before[1]) or 0.0
        waited = time.monotonic() - started
        if busy <= threshold_pct or waited >= max_wait_s:
            return {"busy_pct_of_all_cores": busy, "waited_s": round(waited, 1), "quiet": busy <= threshold_pct}


def rss_kib(pid: int | None) -> int | None:
    """Resident memory of a process (VmRSS), KiB."""
    if not pid:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PySpy:
    """``py-spy record`` of a process (server or client), summarised by function and by thread when stopped."""

    def __init__(self, pid: int, output: Path, rate: int) -> None:
        self.output = output
        self.rate = rate
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            raise RuntimeError("--py-spy needs py-spy: .venv/bin/pip install py-spy")
        command = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--threads"]
        command += ["--output", str(output), "--nonblocking"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1.0)  # py-spy attaches

    def stop(self) -> dict[str, Any]:
        self.process.send_signal(signal.SIGINT)
        try:
            out, _ = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        if not self.output.exists():
            return {"error": out[-2000:]}
        return summarise_collapsed(self.output, self.rate)


_ENTRY_PATH = re.compile(
    r"\((typer|click)/|<frozen runpy>|^<module> |\(gitstafette/(cli|__main__)\.py\)|\(asyncio/runners\.py\)"
    r"|^BaseEventLoop\.(run_forever|run_until_complete|_run_once) |^Thread\.(run|_bootstrap|_bootstrap_inner) "
    r"|^_worker \(concurrent/|^Handle\._run "
)


def summarise_collapsed(path: Path, rate: int, top: int = 20) -> dict[str, Any]:
    """Samples per thread, and top functions by own and by inclusive samples, of a collapsed-stack file.

    Inclusive counts ignore line numbers and leave out the entry path every stack starts with (the CLI,
    ``asyncio.run``, ``run_forever``, ``Thread.run``…), which says nothing.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[tuple[str, str]] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith(("thread", "process")) else "?"
        frames = frames[1:] if thread != "?" else frames
        total += count
        threads[thread] += count
        if frames:
            own[frames[-1]] += count
            for name in {re.sub(r":\d+\)$", ")", frame) for frame in frames}:
                inclusive[(thread, name)] += count
    useful: Counter[str] = Counter()
    for (_thread, name), count in inclusive.items():
        if not _ENTRY_PATH.search(name):
            useful[name] += count

    def table(counter: Counter[str], key: str) -> list[dict[str, Any]]:
        return [
            {key: f, "samples": c, "pct": pct(c, total), "est_busy_s": round(c / rate, 2)}
            for f, c in counter.most_common(top)
        ]

    return {
        "samples": total,
        "rate_hz": rate,
        "note": "idle (waiting) samples are not recorded: pct is of the busy samples of all threads together",
        "threads": table(threads, "thread"),
        "top_self": table(own, "frame"),
        "top_inclusive": table(useful, "frame"),
        "collapsed_file": str(path),
    }
