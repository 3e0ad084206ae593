"""The ``lora-gateway`` command line.

Each area contributes its sub-commands from its own module: a module listed in
COMMAND_MODULES defines ``add_commands(subparsers) -> None`` and gives every parser a
``func(args) -> int`` default. Errors that reach here are shown as one line, exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys


from models.cli.errors import UserError

COMMAND_MODULES: tuple[str, ...] = (
    "gateway.cli.run",
    "gateway.cli.demo",
    "gateway.cli.decode",
    "gateway.cli.record",
    "gateway.cli.serial",
    "gateway.cli.alerts",
    "models.cli.main",
    "gateway.cli.cluster",
)


def _version() -> str:
    """The installed package's version (``unknown`` when run from a tree never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lora-edge-gateway")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lora-gateway",
        description="Edge gateway for LoRa sensor networks: uplinks in, ONNX model, alerts out.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"lora-gateway {_version()}",
                        help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
