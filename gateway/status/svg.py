"""Server-side SVG charts of one device: a panel per channel and one of scores.

Plain SVG text, no script and no external resources, so the page needs no build step and
renders the same in any browser. Every panel shares one time axis (the readings' own
timestamps); alert spans are shaded across all panels (``class="alert-span"``, one
``<rect>`` per span with ``data-kind``), the score panel draws the raise threshold as a
dashed line (``class="threshold"``). Long series are thinned to at most ``MAX_POINTS``
points per line, keeping each bucket's extreme values so a spike stays visible.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any, Sequence

MAX_POINTS = 480
WIDTH = 760
PANEL_H = 96
GAP = 22
LEFT = 56
RIGHT = 12
COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#7f7f7f")
SCORE_COLOUR = "#d62728"


def _thin(xs: Sequence[float], ys: Sequence[float]) -> list[tuple[float, float]]:
    """At most ~MAX_POINTS (x, y) pairs, keeping each bucket's min and max (NaN dropped)."""
    pts = [(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
    if len(pts) <= MAX_POINTS:
        return pts
    per = math.ceil(len(pts) / (MAX_POINTS // 2))
    out: list[tuple[float, float]] = []
    for i in range(0, len(pts), per):
        bucket = pts[i:i + per]
        lo = min(bucket, key=lambda p: p[1])
        hi = max(bucket, key=lambda p: p[1])
        out.extend(sorted({lo, hi}))
    return out


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _panel(label: str, xs: Sequence[float], ys: Sequence[float], x0: float, x1: float, top: float,
           colour: str, css: str, threshold: float | None = None) -> list[str]:
    pts = _thin(xs, ys)
    inner = WIDTH - LEFT - RIGHT
    parts = [f'<g class="panel {css}" data-label="{escape(label)}">',
             f'<rect x="{LEFT}" y="{top:.1f}" width="{inner}" height="{PANEL_H}" fill="none" stroke="#ccc"/>',
             f'<text x="{LEFT + 4}" y="{top + 12:.1f}" font-size="11" fill="#333">{escape(label)}</text>']
    if not pts:
        parts.append(f'<text x="{LEFT + inner / 2:.1f}" y="{top + PANEL_H / 2:.1f}" font-size="11" fill="#999" '
                     f'text-anchor="middle">no data yet</text></g>')
        return parts
    lo = min(p[1] for p in pts)
    hi = max(p[1] for p in pts)
    if threshold is not None:
        lo, hi = min(lo, threshold, 0.0), max(hi, threshold * 1.1)
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    span_x = (x1 - x0) or 1.0

    def px(x: float) -> float:
        return LEFT + (x - x0) / span_x * inner

    def py(y: float) -> float:
        return top + PANEL_H - 4 - (y - lo) / (hi - lo) * (PANEL_H - 18)

    parts.append(f'<text x="{LEFT - 4}" y="{py(hi) + 4:.1f}" font-size="10" text-anchor="end" fill="#555">{_fmt(hi)}</text>')
    parts.append(f'<text x="{LEFT - 4}" y="{py(lo):.1f}" font-size="10" text-anchor="end" fill="#555">{_fmt(lo)}</text>')
    if threshold is not None:
        y = py(threshold)
        parts.append(f'<line class="threshold" x1="{LEFT}" x2="{LEFT + inner}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="{SCORE_COLOUR}" stroke-dasharray="5,4" stroke-width="1"/>')
        parts.append(f'<text x="{LEFT + inner - 4}" y="{y - 3:.1f}" font-size="10" text-anchor="end" '
                     f'fill="{SCORE_COLOUR}">threshold {_fmt(threshold)}</text>')
    path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
    parts.append(f'<polyline class="series" points="{path}" fill="none" stroke="{colour}" stroke-width="1.3"/>')
    parts.append("</g>")
    return parts


def device_chart_svg(chart: dict[str, Any], threshold: float | None, title: str = "") -> str:
    """The SVG of one device's ``StatusTracker.device_chart`` dict."""
    channels: list[str] = chart["channels"]
    times: list[float] = chart["times"]
    score_times: list[float] = chart["score_times"]
    all_t = times + score_times
    x0, x1 = (min(all_t), max(all_t)) if all_t else (0.0, 1.0)
    n_panels = len(channels) + 1
    height = 20 + n_panels * (PANEL_H + GAP)
    inner = WIDTH - LEFT - RIGHT
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="device-chart" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}">',
           '<style>text{font-family:sans-serif}</style>']
    span_x = (x1 - x0) or 1.0
    plot_bottom = 14 + n_panels * (PANEL_H + GAP) - GAP
    for kind, start, end in chart["spans"]:
        s = max(start, x0)
        e = x1 if end is None else min(end, x1)
        if e < x0 or s > x1:
            continue  # outside the charted stretch
        xs = LEFT + (s - x0) / span_x * inner
        xe = LEFT + (e - x0) / span_x * inner
        state = "open" if end is None else "closed"
        out.append(f'<rect class="alert-span" data-kind="{escape(str(kind))}" data-state="{state}" x="{xs:.1f}" y="14" '
                   f'width="{max(xe - xs, 2.0):.1f}" height="{plot_bottom - 14:.1f}" fill="#f4a6a6" fill-opacity="0.45">'
                   f'<title>{escape(str(kind))} alert{" (still open)" if end is None else ""}</title></rect>')
    top = 14.0
    for i, c in enumerate(channels):
        out += _panel(c, times, chart["values"].get(c, []), x0, x1, top, COLOURS[i % len(COLOURS)], "channel")
        top += PANEL_H + GAP
    out += _panel("anomaly score", score_times, chart["scores"], x0, x1, top, SCORE_COLOUR, "score", threshold)
    out.append(f'<text x="{LEFT}" y="{height - 4}" font-size="10" fill="#555">{escape(_when(x0))}</text>')
    out.append(f'<text x="{WIDTH - RIGHT}" y="{height - 4}" font-size="10" text-anchor="end" fill="#555">{escape(_when(x1))}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _when(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + " UTC"
