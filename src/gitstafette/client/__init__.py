"""The private side of the relay: stream events from a server over gRPC and deliver them to a target.

``Client(config).serve()`` runs the process; ``consumer`` holds the stream, ``relay`` the delivery with
its retries (``retry`` decides them), ``metrics`` the Prometheus series, ``webhook_sender`` posts a
GitHub-shaped webhook (``gitstafette send-webhook``).
"""

from __future__ import annotations

from gitstafette.client.app import Client

__all__ = ["Client"]
