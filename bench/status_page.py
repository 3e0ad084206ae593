"""The status page's cost: what the tracker adds per reading and per score on the pipeline
thread, and how long the page takes to render (index with many devices, one device's chart
with a full history). Figures, not a test; compare within one run.

    .venv/bin/python bench/status_page.py [--devices 1000] [--readings 200000]
"""

from __future__ import annotations

import argparse
import time

import _common  # noqa: F401 - puts the repository on sys.path

from gateway.status.page import StatusPage
from gateway.status.tracker import StatusTracker
from gateway.types import Alert, RadioMeta, Reading


class Profile:
    channels = {"temperature": "temperature", "humidity": "humidity"}
    battery_field = "battery"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--readings", type=int, default=200000)
    ap.add_argument("--history", type=int, default=720)
    args = ap.parse_args()
    tracker = StatusTracker(history_points=args.history, chart_devices=64, max_devices=10000)
    readings = [Reading(device_id=str(i % args.devices), timestamp=1000.0 + i,
                        values={"temperature": 20.0 + (i % 13), "humidity": 50.0, "battery": 3.3},
                        radio=RadioMeta(rssi=-90.0, snr=5.0)) for i in range(args.readings)]
    profile = Profile()
    t0 = time.perf_counter()
    for r in readings:
        tracker.observe_reading(r, profile, None)  # type: ignore[arg-type]
    per_reading = (time.perf_counter() - t0) / len(readings)
    details = {"channel": "temperature"}
    t0 = time.perf_counter()
    for r in readings:
        tracker.observe_score(r.device_id, r.timestamp, 0.5, details)
    per_score = (time.perf_counter() - t0) / len(readings)
    for d in range(0, args.devices, max(1, args.devices // 20)):
        tracker.on_alert(Alert(device_id=str(d), kind="anomaly", state="raised", severity="critical",
                               timestamp=2000.0, message="anomaly score 5", key=f"k{d}", score=5.0))
    page = StatusPage(tracker, __import__("pathlib").Path("/nonexistent-state"),
                      lambda: {"model": "m@1", "providers": ["CPUExecutionProvider"], "raise_threshold": 1.0})
    n = 20
    t0 = time.perf_counter()
    for _ in range(n):
        index = page.index_html(0)
    index_ms = (time.perf_counter() - t0) / n * 1000
    t0 = time.perf_counter()
    for _ in range(n):
        dev = page.device_html("0", 0)
    device_ms = (time.perf_counter() - t0) / n * 1000
    print(f"devices {args.devices}, readings {args.readings}, history {args.history} points, 64 charted")
    print(f"tracker per reading   {per_reading * 1e6:6.2f} us (pipeline thread)")
    print(f"tracker per score     {per_score * 1e6:6.2f} us (pipeline thread)")
    print(f"index page            {index_ms:6.1f} ms, {len(index) / 1024:.0f} KiB ({args.devices} devices, at most 200 rows)")
    print(f"device page (chart)   {device_ms:6.1f} ms, {len(dev) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
