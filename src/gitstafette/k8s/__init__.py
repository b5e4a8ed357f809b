"""Kubernetes helpers that need no cluster: checks of manifests as dicts (``pod_security``), for the tests of
``deploy/kubernetes/`` and for whatever generates manifests later (an operator)."""

from __future__ import annotations

__all__: list[str] = []
