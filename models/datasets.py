"""Loading recorded sensor series from CSV files (standard library + numpy, no torch).

``load_csv(path, timestamp_column=None, channels=None, label_column=None) -> SeriesTable``

- Delimiter sniffed among comma, semicolon and tab; the first row is the header.
- Numbers: ``.`` decimal point, or ``,`` decimal comma in semicolon/tab files; an empty
  cell, ``nan``, ``NA``, ``null`` or ``-`` is missing (NaN).
- Timestamp: the named column, else the first column called timestamp/time/date/datetime/ts,
  else the first non-numeric column; parsed as UNIX seconds (a number) or ISO 8601 text
  (``2013-12-02 21:15:00``, ``...T...Z``; no zone = UTC). No timestamp column: row index.
- Channels: the named columns in that order, else every numeric column other than the
  timestamp and label columns and other than a column whose name says it holds labels
  (``LABEL_NAMES``: ``anomaly``, ``changepoint``, ``label``...; a 0/1 annotation must never
  be scored as a sensor). Those are listed in ``SeriesTable.excluded``; name one in
  ``channels`` to score it anyway.
- Labels: ``0/1``, ``true/false``, ``yes/no``, ``anomaly/normal`` (any non-zero number is 1).

Every unusable file raises ``DatasetError`` (a ValueError) with a one-line reason.
NAB-style label windows (``combined_windows.json``) are read by ``load_label_windows``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

TIMESTAMP_NAMES = ("timestamp", "time", "date", "datetime", "ts", "time_stamp")
LABEL_NAMES = frozenset({
    "label", "labels", "anomaly", "anomalies", "anomalous", "is_anomaly", "anomaly_label", "changepoint",
    "change_point", "changepoints", "fault", "faults", "is_fault", "outlier", "is_outlier", "attack", "alarm",
    "target", "class", "ground_truth",
})
"""Column names (case-insensitive) never taken as a channel unless named in ``channels``."""
MISSING = {"", "nan", "na", "n/a", "null", "none", "-"}
_TRUE = {"1", "true", "yes", "y", "anomaly", "fault", "abnormal"}
_FALSE = {"0", "false", "no", "n", "normal", "ok"}


class DatasetError(ValueError):
    """A data file cannot be used; the message says why in one line."""


@dataclass
class SeriesTable:
    """A loaded recording: ``values [L, C]`` float64 (NaN = missing), ``timestamps [L]``
    UNIX seconds (float64; row index when the file has none), ``labels [L]`` bool or None."""

    path: str
    channels: list[str]
    values: np.ndarray
    timestamps: np.ndarray
    labels: np.ndarray | None
    timestamp_column: str | None
    label_column: str | None
    delimiter: str
    excluded: list[str] = field(default_factory=list)  # label-like columns left out of the channels

    def __len__(self) -> int:
        return int(self.values.shape[0])


def _number(cell: str, decimal_comma: bool) -> float:
    s = cell.strip()
    if s.lower() in MISSING:
        return math.nan
    try:
        return float(s)
    except ValueError:
        if decimal_comma and s.count(",") == 1 and "." not in s:
            return float(s.replace(",", "."))
        raise


def parse_timestamp(cell: str) -> float:
    """UNIX seconds from a number or ISO 8601 text (naive = UTC); ValueError otherwise."""
    s = cell.strip()
    try:
        return float(s)
    except ValueError:
        pass
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _sniff(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t").delimiter
    except csv.Error:
        first = sample.splitlines()[0] if sample else ""
        counts = {d: first.count(d) for d in (",", ";", "\t")}
        best = max(counts, key=lambda d: counts[d])
        if counts[best] == 0:
            raise DatasetError("cannot tell the delimiter (expected comma, semicolon or tab)") from None
        return best


def _numeric_fraction(cells: Sequence[str], decimal_comma: bool) -> float:
    present = [c for c in cells if c.strip().lower() not in MISSING]
    if not present:
        return 0.0
    ok = 0
    for c in present:
        try:
            _number(c, decimal_comma)
            ok += 1
        except ValueError:
            pass
    return ok / len(present)


def _label(cell: str, row: int, column: str) -> bool:
    s = cell.strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    try:
        return float(s) != 0.0
    except ValueError:
        raise DatasetError(f"label column {column!r}, row {row}: {cell!r} is not a 0/1 label") from None


def load_csv(
    path: str | Path,
    timestamp_column: str | None = None,
    channels: Sequence[str] | None = None,
    label_column: str | None = None,
) -> SeriesTable:
    """Load a CSV recording (see the module docstring for the rules)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{p}: no such file") from None
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise DatasetError(f"{p}: not a text file ({exc.__class__.__name__})") from None
    if not text.strip():
        raise DatasetError(f"{p}: empty file")
    delimiter = _sniff(text[:8192])
    rows = [r for r in csv.reader(text.splitlines(), delimiter=delimiter) if any(c.strip() for c in r)]
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    if len(body) < 2:
        raise DatasetError(f"{p}: needs a header and at least 2 data rows")
    if len(set(header)) != len(header):
        raise DatasetError(f"{p}: duplicate column names in header {header}")
    if _numeric_fraction(header, False) == 1.0:
        raise DatasetError(f"{p}: the first row must be a header of column names")
    width = len(header)
    for i, r in enumerate(body, start=2):
        if len(r) != width:
            raise DatasetError(f"{p}: row {i} has {len(r)} fields, header has {width}")
    columns = {h: [r[j] for r in body] for j, h in enumerate(header)}
    decimal_comma = delimiter != ","

    def need(name: str, what: str) -> None:
        if name not in columns:
            raise DatasetError(f"{p}: no {what} column {name!r}; columns: {', '.join(header)}")

    if label_column is not None:
        need(label_column, "label")
    if timestamp_column is not None:
        need(timestamp_column, "timestamp")
    else:
        named = [h for h in header if h.lower() in TIMESTAMP_NAMES and h != label_column]
        if named:
            timestamp_column = named[0]
        else:
            text_cols = [
                h for h in header if h != label_column and _numeric_fraction(columns[h][:200], decimal_comma) < 0.9
            ]
            timestamp_column = text_cols[0] if text_cols else None
    excluded: list[str] = []
    if channels:
        for c in channels:
            need(c, "channel")
        chosen = list(channels)
    else:
        numeric = [
            h
            for h in header
            if h not in (timestamp_column, label_column) and _numeric_fraction(columns[h], decimal_comma) >= 0.9
        ]
        excluded = [h for h in numeric if h.strip().lower() in LABEL_NAMES]
        chosen = [h for h in numeric if h not in excluded]
    if not chosen:
        raise DatasetError(f"{p}: no numeric channel columns (columns: {', '.join(header)})")
    if timestamp_column in chosen or (label_column is not None and label_column in chosen):
        raise DatasetError(f"{p}: a column cannot be both a channel and the timestamp/label")
    values = np.empty((len(body), len(chosen)))
    for j, name in enumerate(chosen):
        for i, cell in enumerate(columns[name]):
            try:
                values[i, j] = _number(cell, decimal_comma)
            except ValueError:
                raise DatasetError(f"{p}: column {name!r}, row {i + 2}: {cell!r} is not a number") from None
    has_value = [bool(np.isfinite(values[:, j]).any()) for j in range(values.shape[1])]
    if not all(has_value):
        empty = [c for c, ok in zip(chosen, has_value) if not ok]
        raise DatasetError(f"{p}: channel(s) with no numeric value: {', '.join(empty)}")
    if timestamp_column is not None:
        ts = np.empty(len(body))
        for i, cell in enumerate(columns[timestamp_column]):
            try:
                ts[i] = parse_timestamp(cell)
            except ValueError:
                raise DatasetError(
                    f"{p}: timestamp column {timestamp_column!r}, row {i + 2}: cannot parse {cell!r}"
                ) from None
    else:
        ts = np.arange(len(body), dtype=np.float64)
    labels = None
    if label_column is not None:
        labels = np.array([_label(c, i + 2, label_column) for i, c in enumerate(columns[label_column])], dtype=bool)
    return SeriesTable(str(p), chosen, values, ts, labels, timestamp_column, label_column, delimiter, excluded)


def load_label_windows(path: str | Path, data_file: str | Path) -> list[tuple[float, float]]:
    """NAB-style ``{"<dir>/<file>.csv": [[start, end], ...]}``: the windows (UNIX seconds)
    of the entry whose file name matches ``data_file``'s name."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read label windows ({exc})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: label windows must be a JSON object")
    name = Path(data_file).name
    matches = [k for k in data if Path(k).name == name]
    if len(matches) != 1:
        raise DatasetError(f"{path}: {'no' if not matches else 'several'} entries for {name}")
    try:
        return [(parse_timestamp(s), parse_timestamp(e)) for s, e in data[matches[0]]]
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: malformed window for {name}: {exc}") from None


def labels_from_windows(timestamps: np.ndarray, windows: Sequence[tuple[float, float]]) -> np.ndarray:
    """bool ``[L]``: True where a timestamp lies in a window, ends included (NAB's rule)."""
    ts = np.asarray(timestamps, dtype=np.float64)
    out = np.zeros(ts.shape, dtype=bool)
    for start, end in windows:
        out |= (ts >= start) & (ts <= end)
    return out
