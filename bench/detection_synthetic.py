"""Detection on generated devices: the base model's scoring vs the PCA baseline, by fault kind.

    .venv/bin/python bench/detection_synthetic.py [--devices 12] [--calibration 2016]

Each device: 3-8 channels of random sensor kinds, 10-minute readings, events on (rain,
irrigation, motor starts), ``--calibration`` fault-free rows, then 2,000 rows with 4
faults of random kinds. Scored exactly as ``lora-gateway model eval`` scores a CSV
(models.evaluate.score_recording). Prints point-wise metrics over all scored rows, the
fraction of faulty rows alerted per fault kind, and the alert fraction on fault-free
devices. Not a timed test: a report for docs/models.md.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.evaluate import point_metrics, score_recording
from models.export import onnx_session
from models.manifest import base_model_dir, load_manifest
from models.scoring.settings import settings_from
from models.synthetic import FAULT_KINDS, SENSOR_KINDS, generate_device


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=12)
    ap.add_argument("--calibration", type=int, default=2016)
    ap.add_argument("--model", type=Path, default=base_model_dir())
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a scoring setting")
    args = ap.parse_args()
    manifest = load_manifest(args.model)
    session = onnx_session(args.model / "model.onnx")
    settings = settings_from(manifest, **{k: float(v) for k, v in (kv.split("=", 1) for kv in args.set)})
    cal, t = args.calibration, manifest.window_length
    rng = np.random.default_rng(args.seed)
    labels_all, alert_all, pca_all = [], [], []
    by_kind: dict[str, list[tuple[float, float]]] = defaultdict(list)
    quiet: list[tuple[float, float]] = []
    for i in range(args.devices):
        kinds = tuple(str(k) for k in rng.choice(list(SENSOR_KINDS), size=int(rng.integers(3, 8)), replace=False))
        if rng.random() < 0.3:
            kinds = (*kinds, "temperature")
        dev = generate_device(int(rng.integers(2**31)), cal + 2000, kinds=kinds, interval_s=600, n_faults=4,
                              fault_free_prefix=cal + 100)
        r = score_recording(dev.values, session, t, cal, settings)
        y = dev.step_labels
        labels_all.append(y[cal:])
        alert_all.append(r.alert[cal:])
        pca_all.append(r.pca_alert[cal:])
        for f in dev.faults:
            rows = np.zeros(len(y), dtype=bool)
            rows[f.start:f.end] = True
            rows &= dev.labels.any(axis=1)
            by_kind[f.kind].append((float(r.alert[rows].mean()), float(r.pca_alert[rows].mean())))
        clean = generate_device(int(rng.integers(2**31)), cal + 2000, kinds=kinds, interval_s=600)
        rc = score_recording(clean.values, session, t, cal, settings)
        quiet.append((float(rc.alert[cal:].mean()), float(rc.pca_alert[cal:].mean())))
    y = np.concatenate(labels_all)
    print(f"{args.devices} devices, calibration {cal} rows, {int(y.size)} scored rows ({int(y.sum())} faulty)")
    print(f"{'detector':<12} {'precision':>9} {'recall':>7} {'F1':>6} {'false-alarm':>11} {'events':>9} {'quiet FA':>9}")
    for j, (name, alerts) in enumerate((("model", alert_all), ("PCA T2+Q", pca_all))):
        m = point_metrics(y, np.concatenate(alerts))
        fa = float(np.mean([q[j] for q in quiet]))
        print(f"{name:<12} {m.precision:>9.3f} {m.recall:>7.3f} {m.f1:>6.3f} {m.false_alarm_rate:>11.4f} "
              f"{m.events_detected:>4}/{m.events:<4} {fa:>9.4f}")
    print("fraction of faulty rows alerted, by fault kind (model / PCA):")
    for kind in FAULT_KINDS:
        if by_kind[kind]:
            a = np.array(by_kind[kind])
            print(f"  {kind:<12} n={len(a):>2}  {a[:, 0].mean():.3f} / {a[:, 1].mean():.3f}")
    print("quiet FA: alert fraction on the same devices generated without faults")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
