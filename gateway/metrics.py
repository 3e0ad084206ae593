"""Counters, gauges and histograms, kept in-process and thread-safe.

Every drop, reject and quarantine increments a counter with a reason label, so nothing
is lost silently. ``snapshot()`` gives a plain dict for logs, ``doctor`` and tests;
``gateway.metrics_http`` exposes the same values to Prometheus. A histogram is declared once
(``histogram(name, buckets)``: its upper bounds) and fed with ``observe``; it is exported
from its declaration on, with zero counts until the first observation.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Sequence

Labels = tuple[tuple[str, str], ...]
# Counters exported (at 0) from the start, so a dashboard's rate() sees their first
# increment and a "no drops" panel shows 0 rather than "no data" (deploy/grafana-dashboard.json)
DASHBOARD_COUNTERS = (
    "readings_total", "windows_scored_total", "windows_unscored_total", "inference_batches_total",
    "uplinks_dropped_total", "uplinks_quarantined_total", "uplinks_rejected_total",
    "alerts_raised_total", "alerts_cleared_total", "alerts_delivered_total", "delivery_failures_total",
)
# (name, upper bounds, labels, count per bucket (the last one: above every bound), sum)
HistogramSeries = tuple[str, tuple[float, ...], Labels, list[int], float]


def _labels(labels: dict[str, str] | None) -> Labels:
    return tuple(sorted((labels or {}).items()))


class Metrics:
    """A registry of named counters, gauges and histograms."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self._gauges: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._help: dict[str, str] = {}
        self._hist_bounds: dict[str, tuple[float, ...]] = {}
        self._hists: dict[str, dict[Labels, tuple[list[int], list[float]]]] = {}

    def describe(self, name: str, help_text: str) -> None:
        self._help[name] = help_text

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = _labels(labels)
        with self._lock:
            self._counters[name][key] += amount

    def zero(self, names: Iterable[str]) -> None:
        """Create each counter's unlabelled series at 0 if the counter has none yet."""
        with self._lock:
            for name in names:
                if not self._counters.get(name):
                    self._counters[name][()] += 0.0

    def set(self, name: str, value: float, **labels: str) -> None:
        key = _labels(labels)
        with self._lock:
            self._gauges[name][key] = value

    def histogram(self, name: str, buckets: Sequence[float], help_text: str | None = None) -> None:
        """Declare a histogram with these upper bounds (strictly ascending; +Inf is implied).
        Declaring it again with the same bounds is a no-op; other bounds raise ValueError."""
        bounds = tuple(float(b) for b in buckets)
        if not bounds or any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"histogram {name}: buckets must be strictly ascending")
        with self._lock:
            known = self._hist_bounds.get(name)
            if known is not None and known != bounds:
                raise ValueError(f"histogram {name} already declared with other buckets")
            self._hist_bounds[name] = bounds
            self._hists.setdefault(name, {})
        if help_text:
            self._help[name] = help_text

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Count one observation (``value <= bound`` goes to that bucket). KeyError when the
        histogram was never declared: a typo must not create a silent new series."""
        key = _labels(labels)
        with self._lock:
            bounds = self._hist_bounds[name]
            series = self._hists[name].get(key)
            if series is None:
                series = self._hists[name][key] = ([0] * (len(bounds) + 1), [0.0])
            series[0][bisect_left(bounds, value)] += 1
            series[1][0] += value

    def observe_many(self, name: str, values: Sequence[float], **labels: str) -> None:
        """``observe`` for each of ``values`` in order, under one lock (a scored batch)."""
        key = _labels(labels)
        with self._lock:
            bounds = self._hist_bounds[name]
            series = self._hists[name].get(key)
            if series is None:
                series = self._hists[name][key] = ([0] * (len(bounds) + 1), [0.0])
            counts, total = series
            for value in values:
                counts[bisect_left(bounds, value)] += 1
                total[0] += value

    def histograms(self) -> list[HistogramSeries]:
        """Every histogram series; a declared one with no observation yet as one empty series."""
        with self._lock:
            out: list[HistogramSeries] = []
            for name, bounds in self._hist_bounds.items():
                series = self._hists.get(name) or {(): ([0] * (len(bounds) + 1), [0.0])}
                out += [(name, bounds, k, list(counts), total[0]) for k, (counts, total) in series.items()]
            return out

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
