"""``lora-gateway alerts feedback KEY false|confirmed``: an operator's verdict on an alert.

Stored in the gateway's state dir by ``gateway.alerts.feedback`` (the same store a status
page or the MQTT command topic writes to), with the readings the daemon kept around the
alert (``gateway.alerts.alert_windows``) when it kept any; ``model finetune --feedback``
trains on them. The state dir comes from ``--state-dir``, or
from ``--config FILE`` (its ``[gateway] state_dir``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from models.cli.errors import UserError


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir is not None:
        return Path(args.state_dir)
    if args.config is None:
        raise UserError("say where the state dir is: --state-dir DIR, or --config FILE (its [gateway] state_dir)")
    from gateway.cli.run import load_everything

    config, _, _ = load_everything(args.config)
    return Path(config.gateway.state_dir)


def cmd_feedback(args: argparse.Namespace) -> int:
    from gateway.alerts.feedback import FeedbackError, load_feedback, record_feedback

    state_dir = _state_dir(args)
    try:
        record = record_feedback(state_dir, args.key, args.label, args.note, device_id=args.device)
    except FeedbackError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot write feedback under {state_dir}: {exc.strerror or exc}") from None
    count = len(load_feedback(state_dir))
    rows = len((record.get("window") or {}).get("values") or [])
    kept = (f"with the {rows} readings the daemon kept around it" if rows else
            "no readings kept for this key (a rule alert, or older than the windows files): it cannot train")
    print(f"alert {args.key} marked {record['label']}, {kept} ({count} alert(s) with a verdict in {state_dir})")
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("alerts", help="operator actions on alerts")
    alerts_sub = p.add_subparsers(dest="alerts_command", metavar="ACTION")
    f = alerts_sub.add_parser("feedback", help="mark an alert false or confirmed (stored in the state dir)")
    f.add_argument("key", help="the alert's key (its idempotency key, as handlers receive it)")
    f.add_argument("label", choices=["false", "false_alarm", "confirmed"], type=str.lower,
                   help="false (a false alarm) or confirmed (a real fault)")
    f.add_argument("--note", default=None, help="free text stored with the verdict")
    f.add_argument("--device", default=None, help="the alert's device id (optional)")
    where = f.add_mutually_exclusive_group()
    where.add_argument("--state-dir", type=Path, default=None, help="the gateway's state dir")
    where.add_argument("--config", "-c", type=Path, default=None, help="gateway TOML config (its state_dir)")
    f.set_defaults(func=cmd_feedback)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
