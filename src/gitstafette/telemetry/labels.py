"""Label children of Prometheus metrics, looked up once per label set and bounded in number."""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client.metrics import MetricWrapperBase

__all__ = ["OVERFLOW_LABEL", "LabelChildren"]

#: the label value that stands for every value past a metric's bound
OVERFLOW_LABEL = "other"

MetricT = TypeVar("MetricT", bound=MetricWrapperBase)


class LabelChildren(Generic[MetricT]):
    """The children of one labelled metric, each created once: ``labels()`` takes a lock and builds a key
    on every call, a dict lookup of the label values does not.

    Label values may come from outside (a webhook's repository id or event name): past ``limit`` label
    sets, new ones are counted under :data:`OVERFLOW_LABEL` for every label except the last ``kept``
    (bounded ones such as an outcome), so a sender making up values cannot grow /metrics without end.
    """

    def __init__(self, metric: MetricT, limit: int = 1000, kept: int = 1) -> None:
        self.metric = metric
        self.limit = limit
        self.kept = kept
        self._children: dict[tuple[str, ...], MetricT] = {}
        #: the overflow children, by the values of the kept labels (bounded, since those are)
        self._overflow: dict[tuple[str, ...], MetricT] = {}

    def __call__(self, *values: str) -> MetricT:
        child = self._children.get(values)
        if child is None:
            child = self._add(values)
        return child

    def _add(self, values: tuple[str, ...]) -> MetricT:
        if len(self._children) >= self.limit:
            cut = len(values) - self.kept
            child = self._overflow.get(values[cut:])
            if child is None:
                child = self._overflow[values[cut:]] = self.metric.labels(*((OVERFLOW_LABEL,) * cut + values[cut:]))
            return child  # not remembered under ``values``: the dict stays bounded
        child = self._children[values] = self.metric.labels(*values)
        return child

    def __repr__(self) -> str:
        return f"LabelChildren({self.metric!r}, children={len(self._children)}, limit={self.limit})"
