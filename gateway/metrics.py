"""Counters and gauges, kept in-process and thread-safe.

Every drop, reject and quarantine increments a counter with a reason label, so nothing
is lost silently. ``snapshot()`` gives a plain dict for logs, ``doctor`` and tests;
``gateway.metrics_http`` exposes the same values to Prometheus.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Iterable

Labels = tuple[tuple[str, str], ...]


def _labels(labels: dict[str, str] | None) -> Labels:
    return tuple(sorted((labels or {}).items()))


class Metrics:
    """A registry of named counters, gauges and simple summaries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self._gauges: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._help: dict[str, str] = {}

    def describe(self, name: str, help_text: str) -> None:
        self._help[name] = help_text

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = _labels(labels)
        with self._lock:
            self._counters[name][key] += amount

    def set(self, name: str, value: float, **labels: str) -> None:
        key = _labels(labels)
        with self._lock:
            self._gauges[name][key] = value

    def get(self, name: str, **labels: str) -> float:
        """Value of one series (0 when never touched). Sums over labels not given."""
        with self._lock:
            series = self._counters.get(name) or self._gauges.get(name) or {}
            want = set(labels.items())
            return sum(v for k, v in series.items() if want.issubset(set(k)))

    def counters(self) -> Iterable[tuple[str, Labels, float]]:
        with self._lock:
            return [(n, k, v) for n, s in self._counters.items() for k, v in s.items()]

    def gauges(self) -> Iterable[tuple[str, Labels, float]]:
        with self._lock:
            return [(n, k, v) for n, s in self._gauges.items() for k, v in s.items()]

    def help_text(self, name: str) -> str:
        return self._help.get(name, name.replace("_", " "))

    def snapshot(self) -> dict[str, float]:
        """Flat ``{"name{label=value}": value}`` view of every series."""
        out: dict[str, float] = {}
        for name, labels, value in [*self.counters(), *self.gauges()]:
            suffix = ",".join(f"{k}={v}" for k, v in labels)
            out[f"{name}{{{suffix}}}" if suffix else name] = value
        return out
