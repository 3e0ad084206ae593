"""Cost of scoring a window next to the raw model, one core (issue 11: < 1 ms per window).

    .venv/bin/python bench/scoring_cost.py [--set KEY=VALUE ...]

Per window, at batch 1 and 64, C = 1 and 8: the ONNX model alone (1 intra-op thread), the
scorer (``WindowScorer.score_details``), and the level tracker's update for one reading
(``LevelTracker.update``, what the daemon adds per reading); the ratio scorer / model is
what to compare across machines. Also the one-off calibration of a device
(``calibrate_windows``: cross-fitted folds, tail fits) with the target thresholds and with
the old in-sample ones (and without ``threshold_confidence``'s bootstrap). Best of three runs (least disturbed by other processes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.export import onnx_session  # noqa: E402
from models.manifest import base_model_dir, load_manifest  # noqa: E402
from models.scoring.level import LevelTracker, window_level  # noqa: E402
from models.scoring.scorer import WindowScorer  # noqa: E402


def timed(fn, reps: int) -> float:  # type: ignore[no-untyped-def]
    for _ in range(max(2, reps // 10)):
        fn()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t) / reps)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a scoring setting")
    sets = {k: float(v) for k, v in (kv.split("=", 1) for kv in ap.parse_args().set)}
    manifest = load_manifest(base_model_dir())
    session = onnx_session(base_model_dir() / "model.onnx")
    t = manifest.window_length
    rng = np.random.default_rng(0)
    print(f"{'N':>3} {'C':>2} {'model us/win':>12} {'scorer us/win':>13} {'ratio':>6} {'level us/reading':>16}")
    for c in (1, 8):
        cal = rng.normal(size=(977, t, c)).astype(np.float32)  # 1008 calibration readings
        r, e = session.run(None, {"window": cal})
        outs = {"reconstruction": r, "embedding": e}
        new = WindowScorer(manifest, **sets)
        old = WindowScorer(manifest, **{**sets, "false_alarm_target": 0.0, "level_follow": 0.0})
        st = new.new_state(c)
        t_new = timed(lambda: new.calibrate_windows(new.new_state(c), cal, outs), 3)
        t_old = timed(lambda: old.calibrate_windows(old.new_state(c), cal, outs), 3)
        point = WindowScorer(manifest, **{**sets, "threshold_confidence": 0.0})  # the tail's point estimate, no bootstrap
        t_point = timed(lambda: point.calibrate_windows(point.new_state(c), cal, outs), 3)
        new.calibrate_windows(st, cal, outs)
        for n in (1, 64):
            x = rng.normal(size=(n, t, c)).astype(np.float32)
            rec, emb = session.run(None, {"window": x})
            out = {"reconstruction": rec, "embedding": emb}
            reps = max(20, 4000 // n)
            dt_model = timed(lambda x=x: session.run(None, {"window": x}), reps)
            dt_score = timed(lambda x=x, out=out: new.score_details(x, out, [st] * n), reps)
            tracker = LevelTracker(c, 1008)
            win = rng.normal(size=(t, c))
            dt_level = timed(lambda: tracker.update(window_level(win)), 2000)
            print(f"{n:>3} {c:>2} {dt_model / n * 1e6:>12.1f} {dt_score / n * 1e6:>13.1f} "
                  f"{dt_score / dt_model:>6.2f} {dt_level * 1e6:>16.1f}")
        print(f"    calibration of one device, C={c}, 977 windows: target thresholds {t_new * 1e3:.1f} ms "
              f"({t_point * 1e3:.1f} ms without the bootstrap bound), in-sample (old) {t_old * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
