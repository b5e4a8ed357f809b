"""gitstafette: a Git webhook relay.

A public server receives GitHub's webhooks and stores them; a client inside a private network dials
out over gRPC, receives the events of its repositories and delivers each one to its target.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
