"""``lora-gateway decode``: decode one uplink by hand and print the normalised reading.

Input (a file, or stdin with ``-`` or no argument) is either

- one JSON message in any uplink shape (ChirpStack v4/v3, The Things Stack v3, the plain
  ``json`` shape; auto-detected, or forced with ``--shape``), or
- a raw payload as hex (``03 67 01 10``, ``0x0367...``) or base64, decoded with
  ``--codec NAME`` (auto-detection when no codec is given) and ``--f-port``.

Output: one JSON object on stdout: ``device_id``, ``device_name``, ``time`` (UNIX seconds)
and ``time_iso``, ``f_port``, ``f_cnt``, ``shape``, ``decoder`` (the codec that answered),
``channels`` (what the pipeline would feed the model), ``fields`` (the decoder's raw
output) and ``radio``. Input it cannot use is one ``error:`` line, exit status 1.
``--list-codecs`` prints the codec names the loaded plugins offer, one per line.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import math
import re
import sys
import time
from datetime import datetime, timezone
from typing import Any

from models.cli.errors import UserError
from gateway.ingest.decoding import available_codecs, decode_with_profile
from gateway.ingest.profiles import ProfileConfig
from gateway.types import DecodeError, RawUplink

MAX_INPUT_BYTES = 1024 * 1024
_HEX_TEXT = re.compile(r"(?:0x)?[0-9a-fA-F\s:,-]+")


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "decode",
        help="decode one uplink (JSON message or raw payload) and print the reading",
        description="Decode one uplink and print the normalised reading as JSON. Input is a "
                    "network-server JSON message (ChirpStack v4/v3, The Things Stack v3, plain "
                    "json shape) or a raw hex/base64 payload.",
    )
    p.add_argument("input", nargs="?", default="-", help="file to read, or - for stdin (default)")
    p.add_argument("--shape", default="auto",
                   help="JSON message shape: auto (default) or one a source plugin offers "
                        "(built-in: chirpstack_v4, chirpstack_v3, tts_v3, json)")
    p.add_argument("--topic", help="MQTT topic the message came on (refuses non-uplink events)")
    p.add_argument("--codec", help="decoder to use (see --list-codecs); default: auto-detect")
    p.add_argument("--f-port", type=int, help="fPort of a raw payload (overrides the message's)")
    p.add_argument("--encoding", choices=("auto", "hex", "base64"), default="auto",
                   help="how a raw payload is written (default: hex when it is valid hex, else base64)")
    p.add_argument("--device-id", default="cli", help="device id to report for a raw payload")
    p.add_argument("--list-codecs", action="store_true", help="list the codec names and exit")
    p.set_defaults(func=run_decode)


def _plugin_manager() -> Any:
    from gateway.plugin_manager import PluginError, make_plugin_manager

    try:
        return make_plugin_manager()
    except PluginError as exc:
        raise UserError(str(exc)) from exc


def _read_input(name: str) -> bytes:
    try:
        if name == "-":
            data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
        else:
            with open(name, "rb") as fh:
                data = fh.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise UserError(f"cannot read {name}: {exc.strerror or exc}") from exc
    if len(data) > MAX_INPUT_BYTES:
        raise UserError(f"input is larger than {MAX_INPUT_BYTES} bytes; one uplink expected")
    if not data.strip():
        raise UserError("input is empty: give a JSON uplink message or a hex/base64 payload")
    return data


def parse_raw_payload(text: str, encoding: str = "auto") -> bytes:
    """Hex (spaces, colons, commas or a 0x prefix allowed) or base64 text -> bytes.

    Text that is valid hex is read as hex (``"0102"`` is two bytes, not base64).
    Raises UserError for text that is neither.
    """
    stripped = text.strip()
    if encoding != "base64" and _HEX_TEXT.fullmatch(stripped):
        digits = re.sub(r"[\s:,-]|0x", "", stripped)
        if len(digits) % 2 == 0:
            return bytes.fromhex(digits)
    if encoding == "hex":
        raise UserError("input is not a hex payload (even number of hex digits expected)")
    try:
        return base64.b64decode("".join(stripped.split()), validate=True)
    except (binascii.Error, ValueError):
        raise UserError("input is neither a JSON message nor a hex or base64 payload") from None


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    return value


def _iso(ts: float) -> str | None:
    try:
        return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return None


def run_decode(args: argparse.Namespace) -> int:
    """Handler of ``lora-gateway decode``."""
    pm = _plugin_manager()
    if args.list_codecs:
        for codec in available_codecs(pm):
            print(codec)
        return 0
    data = _read_input(args.input)
    if data.lstrip()[:1] == b"{":
        shapes = sorted({s for found in pm.hook.lora_gateway_message_shapes() for s in found})
        if args.shape not in shapes:
            raise UserError(f"unknown --shape {args.shape!r} (known: {', '.join(shapes) or 'none'})")
        try:
            uplink = pm.hook.lora_gateway_parse_message(topic=args.topic, body=data, shape=args.shape)
        except ValueError as exc:
            raise UserError(f"not a usable uplink message ({exc})") from exc
        if args.f_port is not None:
            uplink.f_port = args.f_port
    else:
        if args.shape != "auto":
            raise UserError(f"--shape {args.shape} needs a JSON message, got a raw payload")
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise UserError("input is neither a JSON message nor a hex or base64 payload") from None
        uplink = RawUplink(device_id=args.device_id, received_at=time.time(),
                           payload=parse_raw_payload(text, args.encoding), f_port=args.f_port, shape="raw")
    profile = ProfileConfig(name="cli", codec=args.codec)
    try:
        reading, decoder, fields = decode_with_profile(pm, uplink, profile)
    except DecodeError as exc:
        codec = args.codec or "auto"
        raise UserError(f"cannot decode the payload {uplink.payload.hex() or '(empty)'} "
                        f"with codec {codec}: {exc}") from exc
    out = {
        "device_id": reading.device_id,
        "device_name": reading.device_name,
        "time": reading.timestamp,
        "time_iso": _iso(reading.timestamp),
        "f_port": uplink.f_port,
        "f_cnt": uplink.f_cnt,
        "shape": uplink.shape,
        "decoder": decoder,
        "channels": reading.values,
        "fields": _json_safe(fields),
        "radio": reading.radio.as_dict(),
        "payload_hex": uplink.payload.hex(),
    }
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0
