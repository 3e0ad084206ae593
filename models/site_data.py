"""A site's recorded data for adapter fine-tuning: CSV files as users bring them (numpy + stdlib).

:func:`load_site_csv` reads a CSV with a header row: the delimiter is sniffed (comma or
semicolon; with semicolons a decimal comma ``21,5`` is accepted), a timestamp column
(ISO 8601 or Unix epoch seconds/milliseconds; found by name when not given, and without one
the rows are taken in file order), the channels picked by name, and an
optional label column (``0``/``1``, ``true``/``false``, ``normal``/``anomaly``...; empty
counts as normal). Rows are sorted by time; empty or unparseable values become NaN
(counted); duplicate timestamps are kept in file order. Every problem that makes the file
unusable raises :class:`SiteDataError` with one line saying what and where.

A CSV may hold several devices in a ``device_id`` column (what ``lora-gateway record
export`` writes): then one is picked with ``device_id`` (required when there are several),
since windows must never run across two devices' series.

:func:`load_site_data` also accepts the gateway's own recording (a recording directory, or
a ``.jsonl`` file: the recorder's line format, ``models.recordings``), picking one
device; corrupt lines there (a torn last line after a crash...) are skipped and counted in
``notes``.
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from models.datasets import TIMESTAMP_NAMES
from models.recordings import ReadStats, normalise_device_id, read_lines, recording_paths

TRUE_LABELS = frozenset({"1", "true", "yes", "y", "anomaly", "anomalous", "fault", "abnormal", "alarm"})
DEVICE_COLUMN = "device_id"
FALSE_LABELS = frozenset({"", "0", "false", "no", "n", "normal", "ok", "none"})


class SiteDataError(Exception):
    """The data cannot be used for fine-tuning; one line saying why."""


@dataclass
class SiteData:
    """Time-ordered site readings: ``values [L, C]`` (NaN = missing), ``timestamps [L]`` (Unix s)."""

    values: np.ndarray
    timestamps: np.ndarray
    channels: list[str]
    labels: np.ndarray | None = None  # [L] bool, True = anomalous
    source: str = "arrays"
    sha256: str | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.values.ndim != 2 or self.values.shape[1] != len(self.channels):
            raise SiteDataError(f"values must be [rows, {len(self.channels)} channels], got {self.values.shape}")
        self.timestamps = np.asarray(self.timestamps, dtype=np.float64)
        if self.timestamps.shape != (self.values.shape[0],):
            raise SiteDataError("timestamps must have one entry per row")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=bool)
            if self.labels.shape != (self.values.shape[0],):
                raise SiteDataError("labels must have one entry per row")

    @property
    def rows(self) -> int:
        return int(self.values.shape[0])


def parse_timestamp(text: str) -> float:
    """ISO 8601 (``Z`` or offset; naive = UTC) or epoch seconds/milliseconds -> Unix seconds."""
    s = text.strip()
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(f"timestamp {text!r}")
        return value / 1000.0 if value > 1e11 else value
    dt = datetime.fromisoformat(s)  # Python 3.11: accepts "Z", offsets and a space separator
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _parse_value(text: str, decimal_comma: bool) -> float:
    s = text.strip()
    if not s or s.lower() in ("nan", "na", "null", "none", "-"):
        return math.nan
    if decimal_comma:
        s = s.replace(",", ".")
    return float(s)


def _parse_label(text: str, where: str) -> bool:
    s = text.strip().lower()
    if s in TRUE_LABELS:
        return True
    if s in FALSE_LABELS:
        return False
    try:
        return float(s) != 0.0
    except ValueError:
        raise SiteDataError(f"{where}: label {text!r} is not 0/1, true/false or normal/anomaly") from None


def sniff_delimiter(sample: str) -> str:
    """``,`` or ``;`` (csv.Sniffer limited to those two; more ``;`` than ``,`` in the header wins on doubt)."""
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;").delimiter
    except csv.Error:
        header = sample.splitlines()[0] if sample else ""
        return ";" if header.count(";") > header.count(",") else ","


def load_site_csv(path: Path, channels: list[str], timestamp_column: str | None,
                  label_column: str | None = None, min_rows: int = 2, device_id: str | None = None,
                  device_column: str = DEVICE_COLUMN) -> SiteData:
    """Read a site CSV; see the module docstring. Raises SiteDataError for an unusable file.

    ``timestamp_column=None`` picks the first column named like a time
    (``models.datasets.TIMESTAMP_NAMES``, case-insensitive); a file without one is taken in
    file order, one step per row (noted in ``notes``). A column named explicitly must exist.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SiteDataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    if not text.strip():
        raise SiteDataError(f"{path}: the file is empty")
    delimiter = sniff_delimiter(text[:8192])
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise SiteDataError(f"{path}: the file is empty") from None
    if timestamp_column is None:
        timestamp_column = next((h for h in header if h.lower() in TIMESTAMP_NAMES
                                 and h not in channels and h != label_column), None)
    wanted = ([timestamp_column] if timestamp_column else []) + [*channels] + ([label_column] if label_column else [])
    missing = [c for c in wanted if c not in header]
    if missing:
        raise SiteDataError(f"{path}: no column(s) {', '.join(repr(m) for m in missing)}; the header "
                            f"(delimiter {delimiter!r}) has: {', '.join(header)}")
    if not channels:
        raise SiteDataError("pick at least one channel")
    dev_i = header.index(device_column) if device_column in header else None
    if device_id is not None and dev_i is None:
        raise SiteDataError(f"{path}: a device was picked ({device_id!r}) but the file has no {device_column!r} column")
    want_device = normalise_device_id(device_id) if device_id is not None else None
    devices_seen: dict[str, int] = {}
    ts_i = header.index(timestamp_column) if timestamp_column else None
    ch_i = [header.index(c) for c in channels]
    lb_i = header.index(label_column) if label_column else None
    decimal_comma = delimiter == ";"
    stamps: list[float] = []
    rows: list[list[float]] = []
    labels: list[bool] = []
    bad_values = 0
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < len(header):
            raise SiteDataError(f"{path}:{line_no}: {len(row)} fields, the header has {len(header)}")
        if dev_i is not None:
            dev = normalise_device_id(row[dev_i])
            devices_seen[dev] = devices_seen.get(dev, 0) + 1
            if want_device is not None and dev != want_device:
                continue
        if ts_i is None:
            stamps.append(float(len(stamps)))
        else:
            try:
                stamps.append(parse_timestamp(row[ts_i]))
            except ValueError:
                raise SiteDataError(f"{path}:{line_no}: timestamp {row[ts_i]!r} is neither ISO 8601 nor "
                                    "epoch seconds") from None
        values = []
        for i in ch_i:
            try:
                values.append(_parse_value(row[i], decimal_comma))
            except ValueError:
                values.append(math.nan)
                bad_values += 1
        rows.append(values)
        if lb_i is not None:
            labels.append(_parse_label(row[lb_i], f"{path}:{line_no}"))
    if dev_i is not None and want_device is None and len(devices_seen) > 1:
        raise SiteDataError(f"{path}: rows of {len(devices_seen)} devices in column {device_column!r}; pick one "
                            f"with --device ({_device_list(devices_seen)})")
    if want_device is not None and not rows:
        raise SiteDataError(f"{path}: no rows of device {device_id!r} (the file has {_device_list(devices_seen)})")
    if len(rows) < min_rows:
        raise SiteDataError(f"{path}: {len(rows)} data rows; at least {min_rows} are needed")
    order = np.argsort(np.asarray(stamps), kind="stable")
    values_arr = np.asarray(rows, dtype=np.float64)[order]
    all_nan = [channels[c] for c in range(len(channels)) if not np.isfinite(values_arr[:, c]).any()]
    if all_nan:
        raise SiteDataError(f"{path}: channel(s) {', '.join(all_nan)} hold no numeric value")
    notes = [f"delimiter {delimiter!r}"]
    if ts_i is None:
        notes.append("no timestamp column: rows taken in file order, one step each")
    if bad_values:
        notes.append(f"{bad_values} unparseable value(s) read as missing")
    if not np.all(np.diff(np.asarray(stamps)) >= 0):
        notes.append("rows were not in time order: sorted by timestamp")
    if want_device is not None:
        notes.append(f"device {want_device}: {len(rows)} of {sum(devices_seen.values())} rows")
    return SiteData(values=values_arr, timestamps=np.asarray(stamps)[order], channels=list(channels),
                    labels=np.asarray(labels)[order] if lb_i is not None else None,
                    source=f"{path}#{want_device}" if want_device else str(path),
                    sha256=hashlib.sha256(raw).hexdigest(), notes=notes)


def _device_list(counts: dict[str, int], limit: int = 10) -> str:
    items = [f"{d} ({n} rows)" for d, n in sorted(counts.items(), key=lambda kv: -kv[1])[:limit]]
    return ", ".join(items) + (", ..." if len(counts) > limit else "")


def load_recording(path: Path, channels: list[str], device_id: str | None = None, min_rows: int = 2) -> SiteData:
    """Read the gateway's recording (a recording directory or one ``.jsonl`` file) for one
    device (the only one if None). Corrupt lines are skipped and counted in ``notes``."""
    path = Path(path)
    try:
        paths = recording_paths(path)
    except OSError as exc:
        raise SiteDataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not paths:
        raise SiteDataError(f"{path}: no recording files (readings-*.jsonl) in this directory")
    stats = ReadStats()
    digest = hashlib.sha256()
    by_device: dict[str, list[tuple[float, list[float]]]] = {}
    for file in paths:
        try:
            digest.update(file.read_bytes())
            for rec in read_lines(file, stats):
                row = [rec.values.get(c, math.nan) for c in channels]
                by_device.setdefault(rec.device_id, []).append((rec.ts, row))
        except OSError as exc:
            raise SiteDataError(f"{file}: cannot read ({exc.strerror or exc})") from None
    if not by_device:
        corrupt = stats.corrupt_summary()
        raise SiteDataError(f"{path}: no readings" + (f" ({corrupt})" if corrupt else ""))
    counts = {d: len(r) for d, r in by_device.items()}
    if device_id is None:
        if len(by_device) != 1:
            raise SiteDataError(f"{path}: readings of {len(by_device)} devices; pick one with --device "
                                f"({_device_list(counts)})")
        device_id = next(iter(by_device))
    readings = by_device.get(device_id) or by_device.get(normalise_device_id(device_id))
    if not readings or len(readings) < min_rows:
        raise SiteDataError(f"{path}: {len(readings or [])} readings of device {device_id!r}; "
                            f"at least {min_rows} needed (the recording has {_device_list(counts)})")
    readings.sort(key=lambda r: r[0])
    values = np.asarray([r[1] for r in readings], dtype=np.float64)
    missing = [channels[c] for c in range(len(channels)) if not np.isfinite(values[:, c]).any()]
    if missing:
        raise SiteDataError(f"{path}: device {device_id!r} has no readings of {', '.join(missing)}")
    notes = [f"recording: {len(paths)} file(s), {stats.lines} line(s)"]
    if stats.corrupt:
        notes.append(stats.corrupt_summary())
    return SiteData(values=values, timestamps=np.asarray([r[0] for r in readings]), channels=list(channels),
                    source=f"{path}#{device_id}", sha256=digest.hexdigest(), notes=notes)


def load_site_data(path: Path, channels: list[str], timestamp_column: str | None = None,
                   label_column: str | None = None, device_id: str | None = None) -> SiteData:
    """A recording directory or ``.jsonl``/``.ndjson`` file (the gateway's recording), else a CSV."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() in (".jsonl", ".ndjson"):
        return load_recording(path, channels, device_id)
    return load_site_csv(path, channels, timestamp_column, label_column, device_id=device_id)
