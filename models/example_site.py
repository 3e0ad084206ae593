"""The example site behind the shipped example adapter (numpy only).

A cold room with a temperature and a humidity probe read every 5 minutes, whose
compressor runs 25 of every 60 minutes: the temperature carries a duty-cycle square wave
the base model never saw in pretraining. A few sensor faults are injected in the second
half and labelled, as a site's maintenance log would mark them. Written as users bring
data: semicolons, decimal commas, an ISO 8601 timestamp column, a ``fault`` label column.

``python -m models.example_site OUT.csv [ROWS] [SEED]`` writes the file that
``docs/models.md`` fine-tunes the example adapter on.
"""

from __future__ import annotations

import csv
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from models.synthetic import generate_device

DUTY_PERIOD = 12  # steps (60 min at 5 min)
DUTY_ON = 5  # steps on (25 min)


def write_example_site_csv(path: Path, rows: int = 4032, seed: int = 7, n_faults: int = 4) -> np.ndarray:
    """Write the example site's CSV; returns the per-row fault labels (bool ``[rows]``)."""
    dev = generate_device(seed, rows, kinds=("temperature", "humidity"), interval_s=300.0,
                          n_faults=n_faults, fault_free_prefix=rows // 2)
    values = dev.values.copy()
    duty = ((np.arange(rows) % DUTY_PERIOD) < DUTY_ON).astype(np.float64)
    values[:, 0] -= 1.5 * duty * dev.clean[:, 0].std()  # the compressor pulls the temperature down
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter=";")
        writer.writerow(["time", "temperature_c", "humidity_pct", "fault"])
        for i in range(rows):
            stamp = datetime.fromtimestamp(float(dev.timestamps[i]), tz=UTC).isoformat()
            writer.writerow([stamp, f"{values[i, 0]:.2f}".replace(".", ","),
                             f"{values[i, 1]:.1f}".replace(".", ","), int(dev.step_labels[i])])
    return np.asarray(dev.step_labels)


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("example-site.csv")
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 4032
    s = int(sys.argv[3]) if len(sys.argv) > 3 else 7
    labels = write_example_site_csv(out, n, s)
    print(f"wrote {out}: {n} rows, {int(labels.sum())} labelled faulty")
