"""What the benchmarks in ``bench/`` share.

- ``processes``: the server and the client under test, free ports, store URLs, their ``/metrics``
  counters, and the SIGTERM handler that lets a bench stop what it started.
- ``sender``: the webhook as GitHub sends it, the raw keep-alive HTTP/1.1 client, and the concurrent
  senders (in this process or in several).
- ``target``: the HTTP/1.1 target the client under test posts to, recording every request.
- ``cpu``: CPU time of processes (per thread), of the machine and of this process; waiting for a quiet
  machine; py-spy profiles.
- ``report``: percentiles, table rows, the machine and git state, and ``write_report``.

A bench run as ``python bench/NAME.py`` puts the repository root on ``sys.path`` (once, at its top) and
imports ``bench._lib.…``, as it is imported when the tests import a bench (``bench.faults``).
"""

from __future__ import annotations

from pathlib import Path

#: the repository root
ROOT = Path(__file__).resolve().parent.parent.parent
#: where the benches write their JSON reports (and py-spy files)
RESULTS = ROOT / "bench" / "results"

__all__ = ["RESULTS", "ROOT"]
