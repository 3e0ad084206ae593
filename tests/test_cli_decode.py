"""``lora-gateway decode``: JSON messages, raw payloads, codec list, one-line errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, Any, str]:
    rc = main(["decode", *argv])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 and out.strip().startswith("{") else out), err


def test_list_codecs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "--list-codecs"]) == 0
    codecs = capsys.readouterr().out.split()
    assert {"network_server", "json", "cayenne_lpp", "dragino_lht65", "dragino_lse01",
            "milesight_em300"} <= set(codecs)


def test_chirpstack_message_with_codec(capsys: pytest.CaptureFixture[str], formats_dir: Path) -> None:
    rc, out, _ = _run(capsys, [str(formats_dir / "chirpstack_v4_up_em300th.json"), "--codec", "milesight_em300"])
    assert rc == 0
    assert out["device_id"] == "1000000000000001" and out["decoder"] == "milesight_em300"
    assert out["channels"] == {"temperature": 30.8, "humidity": 50.5}
    assert out["fields"]["battery"] == 92.0
    assert out["time_iso"] == "2023-05-22T07:47:05.404859Z" and out["shape"] == "chirpstack_v4"
    assert out["radio"]["rssi"] == -35.0 and out["f_cnt"] == 4


def test_tts_message_auto(capsys: pytest.CaptureFixture[str], formats_dir: Path) -> None:
    rc, out, _ = _run(capsys, [str(formats_dir / "ttn_v3_up.json"), "--shape", "tts_v3"])
    assert rc == 0 and out["decoder"] == "network_server" and out["channels"] == {"Temperature": 21.83}
    assert out["fields"]["Device Status"]["Sensor Fault"] == "No"


def test_raw_hex_and_base64_payloads(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                     tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("CB F6 0B 0D 03 76 01 0A DD 7F FF\n")
    rc, out, _ = _run(capsys, [str(f), "--codec", "dragino_lht65", "--f-port", "2", "--device-id", "lht-1"])
    assert rc == 0 and out["device_id"] == "lht-1" and out["f_port"] == 2
    assert out["channels"]["temperature"] == 28.29 and out["channels"]["external_temperature"] == 27.81
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"AWcA5gJoMANzJigEZQD9\n")))
    rc, out, _ = _run(capsys, ["-"])
    assert rc == 0 and out["decoder"] == "cayenne_lpp" and out["channels"]["barometer_3"] == 976.8


@pytest.mark.parametrize(("content", "args", "message"), [
    (b"", [], "input is empty"),
    (b"not a payload!", [], "neither a JSON message nor a hex or base64 payload"),
    (b"{broken", [], "not a usable uplink message (malformed_json"),
    (b"0167FF", ["--codec", "cayenne_lpp"], "lpp_truncated"),
    (b"01755C", ["--codec", "no_such"], "unknown_codec"),
    (b"0167FFD7", ["--shape", "tts_v3"], "needs a JSON message"),
    (b"AQID", ["--encoding", "hex"], "not a hex payload"),
])
def test_one_line_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes,
                         args: list[str], message: str) -> None:
    f = tmp_path / "in"
    f.write_bytes(content)
    rc, out, err = _run(capsys, [str(f), *args])
    assert rc == 1 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, _, err = _run(capsys, [str(tmp_path / "nope.json")])
    assert rc == 1 and "cannot read" in err


def test_the_installed_command(formats_dir: Path) -> None:
    exe = Path(sys.executable).with_name("lora-gateway")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "gateway.cli"]
    body = (formats_dir / "chirpstack_v3_up.json").read_text().replace('"data": "..."', '"data": ""')
    proc = subprocess.run([*cmd, "decode", "-"], input=body, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["device_id"] == "0202020202020202"
    assert out["channels"] == {"temperatureSensor": 25.0, "humiditySensor": 32.0}
    bad = subprocess.run([*cmd, "decode", "-"], input=(formats_dir / "chirpstack_v3_up.json").read_text(),
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.strip() == "error: not a usable uplink message (bad_base64: data)"
