"""Write the calibration part of a NAB series (its first rows) for fine-tuning an adapter on it.

    .venv/bin/python bench/nab_calibration_part.py SERIES.csv OUT.csv [--rows N] [--windows combined_windows.json]

``--rows`` defaults to ``lora-gateway model eval``'s calibration (15 % of the rows), so an
adapter trained on OUT.csv has seen nothing of the rows ``model eval`` scores. With
``--windows`` a ``label`` column (0/1, NAB's label windows) is added for a supervised
adapter; its labels then all lie before the evaluated rows. Prints the rows written and
how many are labelled.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.cli.training import DEFAULT_CALIBRATION_FRACTION  # noqa: E402
from models.datasets import labels_from_windows, load_csv, load_label_windows  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("series", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--rows", type=int, default=None, help="rows to keep (default: 15 %% of the rows)")
    ap.add_argument("--windows", type=Path, default=None, help="NAB label windows: add a 0/1 label column")
    args = ap.parse_args()
    table = load_csv(args.series)
    n = args.rows if args.rows is not None else int(DEFAULT_CALIBRATION_FRACTION * len(table))
    labels = (labels_from_windows(table.timestamps, load_label_windows(args.windows, args.series))
              if args.windows else None)
    with open(args.series, newline="") as src, open(args.out, "w", newline="") as dst:
        reader, writer = csv.reader(src), csv.writer(dst)
        writer.writerow(next(reader) + (["label"] if labels is not None else []))
        for i, row in zip(range(n), reader):
            writer.writerow(row + ([int(labels[i])] if labels is not None else []))
    labelled = int(labels[:n].sum()) if labels is not None else 0
    print(f"wrote {args.out}: the first {n} of {len(table)} rows" + (f", {labelled} labelled" if labels is not None else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
