"""``lora-gateway record export``: the recorder's readings as CSV or JSON lines.

The recording directory comes from ``--dir`` or from the config file (``[record] dir``,
default ``<state_dir>/recordings``). Errors (no recording, an unreadable file, an empty
selection) are one line, exit status 1; corrupt lines are skipped and reported by count.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.recording.export import (
    ExportError,
    Format,
    Selection,
    plan,
    write,
    write_to_path,
)
from models.cli.errors import UserError


def _split(values: list[str] | None) -> list[str] | None:
    """``--device a --device b,c`` -> ``[a, b, c]``."""
    if not values:
        return None
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return out or None


def _time(text: str | None, option: str) -> float | None:
    if text is None:
        return None
    from models.site_data import parse_timestamp

    try:
        return parse_timestamp(text)
    except ValueError:
        raise UserError(f"{option} {text!r} is neither ISO 8601 nor Unix seconds") from None


def _directory(args: argparse.Namespace) -> Path:
    if args.dir is not None:
        return Path(args.dir)
    if args.config is None:
        raise UserError("say where the recording is: --dir DIR, or --config FILE (its [record] dir)")
    from gateway.cli.run import load_everything
    from gateway.recording.config import recording_dir

    config, _, _ = load_everything(args.config)
    return recording_dir(config.record, config.gateway.state_dir)


def cmd_export(args: argparse.Namespace) -> int:
    fmt: Format = args.format or ("jsonl" if args.out not in (None, "-") and Path(args.out).suffix.lower()
                                  in (".jsonl", ".ndjson") else "csv")
    source = _directory(args)
    try:
        sel = Selection.of(_split(args.device), _split(args.channel), _time(args.since, "--since"),
                           _time(args.until, "--until"), _split(args.profile))
        p = plan(source, sel)
        if args.out in (None, "-"):
            rows = write(p, sys.stdout, fmt, args.radio)
            sys.stdout.flush()
            where = "stdout"
        else:
            rows = write_to_path(p, Path(args.out), fmt, args.radio)
            where = args.out
    except ExportError as exc:
        raise UserError(str(exc)) from None
    s = p.summary
    corrupt = s.stats.corrupt_summary()
    print(f"wrote {rows} reading(s) of {len(s.devices)} device(s), channel(s) {', '.join(p.channels)} "
          f"({fmt}) to {where} from {s.stats.files} file(s) in {source}" + (f"; {corrupt}" if corrupt else ""),
          file=sys.stderr)
    return 0


def add_commands(sub: Any) -> None:
    r = sub.add_parser("record", help="the gateway's recording of readings ([record] in the config)")
    rsub = r.add_subparsers(dest="record_command", metavar="SUBCOMMAND")
    e = rsub.add_parser(
        "export", help="write recorded readings as CSV (for model finetune) or JSON lines",
        description="Read the recording directory and write the selected readings. CSV columns: timestamp "
                    "(ISO 8601 UTC), device_id, one per channel; `lora-gateway model finetune --data FILE "
                    "--channels ... --device ID` reads it as is. Rows are in recording order.")
    where = e.add_mutually_exclusive_group()
    where.add_argument("--dir", type=Path, help="recording directory")
    where.add_argument("--config", "-c", type=Path, help="gateway TOML config (its [record] dir)")
    e.add_argument("--device", "-d", action="append", metavar="ID",
                   help="device id (DevEUI, any case); repeat or comma-separate for several (default: all)")
    e.add_argument("--profile", action="append", metavar="NAME",
                   help="device profile the readings were decoded with; repeat or comma-separate (default: all)")
    e.add_argument("--channel", action="append", metavar="NAME",
                   help="channel to export; repeat or comma-separate (default: every channel seen)")
    e.add_argument("--since", help="first timestamp (ISO 8601, naive = UTC, or Unix seconds), inclusive")
    e.add_argument("--until", help="last timestamp, inclusive")
    e.add_argument("--format", choices=("csv", "jsonl"), help="default: jsonl for a .jsonl/.ndjson --out, else csv")
    e.add_argument("--radio", action="store_true", help="CSV: add f_port, f_cnt, rssi, snr columns")
    e.add_argument("--out", "-o", help="output file (default '-': stdout)")
    e.set_defaults(func=cmd_export)
    r.set_defaults(func=lambda a: (r.print_help(), 2)[1])
