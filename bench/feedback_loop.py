"""Operator feedback trains the next adapter (issue 11, point 4): figures, not a test.

1. The alert-window keeper's cost on the pipeline thread: ``observe_reading`` per reading
   for devices with no alert open (a dict lookup) and with one open (a row appended), and
   ``on_alert`` per raise (the window copied, a record queued), timed alone.
2. The loop on the cold-room scenario of ``tests/test_feedback_loop.py`` (seeded: a daily
   defrost the base alarms on, a compressor fault): alerts raised by the gateway with the
   base, the operator marks the first defrost false and the fault confirmed, ``model
   finetune --feedback`` (timed), the merged adapter served by the same gateway over the
   same uplinks: alerts raised then.

    .venv/bin/python bench/feedback_loop.py [--readings 200000] [--skip-loop]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401 - puts the repository on sys.path

from gateway.alerts.alert_windows import AlertWindowKeeper
from gateway.alerts.policy_state import alert_key
from gateway.metrics import Metrics
from gateway.pipeline.windows import WindowStore
from gateway.types import Alert, RawUplink, Reading


def keeper_cost(readings: int, devices: int = 1000) -> None:
    metrics = Metrics()
    store = WindowStore(32, 10000, metrics)
    with tempfile.TemporaryDirectory() as tmp:
        keeper = AlertWindowKeeper(Path(tmp), metrics, after_rows=10**9, max_pending=64)
        keeper.windows_of = lambda: store
        keeper.start()
        rs = [Reading(device_id=str(i % devices), timestamp=1000.0 + i, values={"t": 20.0 + i % 7, "h": 50.0})
              for i in range(readings)]
        uplink = RawUplink(device_id="x", received_at=0.0, payload=b"")
        for r in rs[:devices * 32]:
            store.add(r)
        t0 = time.perf_counter()
        for r in rs:
            keeper.observe_reading(r, None, uplink)
        idle = (time.perf_counter() - t0) / len(rs)
        alerts = [Alert(device_id=str(d), kind="anomaly", state="raised", severity="warning", timestamp=2e6,
                        message="", key=alert_key(str(d), "anomaly", "raised", 2e6 + d), score=2.0)
                  for d in range(64)]
        t0 = time.perf_counter()
        for a in alerts:
            keeper.on_alert(a)
        per_raise = (time.perf_counter() - t0) / len(alerts)
        open_rs = [r for r in rs if int(r.device_id) < 64][:20000]
        t0 = time.perf_counter()
        for r in open_rs:
            keeper.observe_reading(r, None, uplink)
        collecting = (time.perf_counter() - t0) / len(open_rs)
        keeper.stop()
    print(f"keeper observe_reading, no alert open: {idle * 1e6:.3f} us/reading ({readings} readings, {devices} devices)")
    print(f"keeper observe_reading, alert open:    {collecting * 1e6:.3f} us/reading")
    print(f"keeper on_alert (raise, 32x2 window):  {per_raise * 1e6:.1f} us/alert")


def loop() -> None:
    import json

    import tests.test_feedback_loop as scenario
    from gateway.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        state = root / "state"
        base_alerts = scenario.run_gateway(state)
        raised = [a for a in base_alerts if a.kind == "anomaly" and a.state == "raised"]
        fault = next(a for a in raised if scenario.FAULT[0] <= scenario._row(a) < scenario.FAULT[1])
        main(["alerts", "feedback", raised[0].key, "false", "--state-dir", str(state)])
        main(["alerts", "feedback", fault.key, "confirmed", "--state-dir", str(state)])
        t0 = time.perf_counter()
        rc = main(["model", "finetune", "--data", str(state / "recordings"), "--channels", scenario.CHANNELS,
                   "--device", scenario.DEVICE, "--feedback", str(state), "--out", str(root / "adapter"),
                   "--no-progress"])
        seconds = time.perf_counter() - t0
        assert rc == 0
        manifest = json.loads((root / "adapter" / "manifest.json").read_text())
        main(["model", "export", "--adapter", str(root / "adapter"), "--merged", str(root / "merged")])
        after = scenario.run_gateway(root / "state2", root / "merged")
    print(f"finetune --feedback: {seconds:.1f} s, {manifest['training']['epochs_run']} epochs "
          f"(best {manifest['training']['best_epoch']})")
    for v in manifest["evaluation"]["feedback_gate"]["verdicts"]:
        print(f"  gate: alert {v['key'][:8]} ({v['label']}): max score {v['base']['max_score']} -> "
              f"{v['adapter']['max_score']}, fires {v['base']['fires']} -> {v['adapter']['fires']}")
    print(f"gateway, base:    anomaly raised at rows {scenario.raised_rows(base_alerts)}")
    print(f"gateway, adapter: anomaly raised at rows {scenario.raised_rows(after)} (fault rows {scenario.FAULT[:2]})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--readings", type=int, default=200000)
    ap.add_argument("--skip-loop", action="store_true")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    keeper_cost(args.readings)
    if not args.skip_loop:
        loop()


if __name__ == "__main__":
    main()
