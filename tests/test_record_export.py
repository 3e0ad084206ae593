"""``lora-gateway record export`` through the CLI entry: selection by device, channel and
time, CSV and JSON lines, the directory from --dir or the config, and one-line errors
(no recording, unreadable file, empty selection) with corrupt lines counted and skipped."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from gateway.cli import main
from models.recordings import encode, file_name
from models.site_data import load_site_data

T0 = 1_717_200_000.0  # 2024-06-01 00:00:00 UTC
DEV_A, DEV_B = "a840410000000001", "a840410000000002"


def make_recording(directory: Path, corrupt: bool = True) -> None:
    """Two day files as the recorder writes them: devices A and B every 60 s; B also reports
    'pressure'; a torn line at the end of day 1 and a line with a string value in day 2."""
    directory.mkdir(parents=True, exist_ok=True)
    for day, (name, start) in enumerate((("2024-06-01", 0), ("2024-06-02", 100))):
        lines = []
        for i in range(start, start + 100):
            lines.append(encode(T0 + 60 * i, DEV_A, {"temp": 20 + i / 100, "rh": 50.0}, "lpp", 2, i, -80.0, 7.5))
            lines.append(encode(T0 + 60 * i, DEV_B, {"temp": 30 + i / 100, "pressure": 1013.0}, "lpp", 2, i))
        text = "".join(lines)
        if corrupt:
            text += (lines[0][:30] if day == 0 else '{"ts": 1, "device_id": "x", "values": {"temp": "warm"}}\n')
        (directory / file_name(name, 0)).write_text(text)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["record", "export", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_csv_of_one_device_and_its_channels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_recording(tmp_path / "rec")
    out = tmp_path / "a.csv"
    rc, _, err = run(capsys, "--dir", str(tmp_path / "rec"), "--device", DEV_A.upper(), "--channel", "temp",
                     "--channel", "rh", "-o", str(out))
    assert rc == 0, err
    assert f"wrote 200 reading(s) of 1 device(s), channel(s) temp, rh (csv) to {out} from 2 file(s)" in err
    assert "2 corrupt line(s) skipped (bad_value 1, invalid_json 1)" in err
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert list(rows[0]) == ["timestamp", "device_id", "temp", "rh"]
    assert rows[0] == {"timestamp": "2024-06-01T00:00:00.000000Z", "device_id": DEV_A, "temp": "20.0", "rh": "50.0"}
    assert len(rows) == 200 and rows[-1]["temp"] == "21.99"
    assert not (tmp_path / "a.csv.part").exists()


def test_all_devices_union_of_channels_time_range_and_radio(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_recording(tmp_path / "rec", corrupt=False)
    out = tmp_path / "b.csv"
    rc, _, err = run(capsys, "--dir", str(tmp_path / "rec"), "--since", "2024-06-01T01:00:00Z",
                     "--until", str(T0 + 60 * 109), "--radio", "-o", str(out))
    assert rc == 0, err
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert list(rows[0]) == ["timestamp", "device_id", "temp", "rh", "pressure", "f_port", "f_cnt", "rssi", "snr"]
    assert len(rows) == 2 * 50 and {r["device_id"] for r in rows} == {DEV_A, DEV_B}
    b = next(r for r in rows if r["device_id"] == DEV_B)
    assert b["rh"] == "" and b["pressure"] == "1013.0" and b["rssi"] == "" and b["f_port"] == "2"
    assert "corrupt" not in err


def test_jsonl_keeps_the_recording_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_recording(tmp_path / "rec")
    out = tmp_path / "b.jsonl"
    rc, _, err = run(capsys, "--dir", str(tmp_path / "rec"), "-d", DEV_B, "--channel", "pressure", "-o", str(out))
    assert rc == 0, err
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 200 and lines[0]["values"] == {"pressure": 1013.0} and lines[0]["f_cnt"] == 0
    data = load_site_data(out, ["pressure"])  # model finetune reads it back
    assert data.rows == 200
    rc, _, err = run(capsys, "--dir", str(tmp_path / "rec"), "--profile", "em300", "-o", str(out))
    assert rc == 1 and err.startswith("error: no readings match profile(s) em300; the recording holds 400"), err
    rc, _, err = run(capsys, "--dir", str(tmp_path / "rec"), "--profile", "em300,lpp", "-o", str(out))
    assert rc == 0 and "wrote 400 reading(s) of 2 device(s)" in err, err


def test_stdout_and_directory_from_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_recording(tmp_path / "state" / "recordings")
    config = tmp_path / "gw.toml"
    config.write_text(f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n[metrics]\nlisten = ""\n'
                      '[record]\nenabled = true\n')
    rc, out, err = run(capsys, "--config", str(config), "--device", f"{DEV_A},{DEV_B}", "--channel", "temp",
                       "--until", "2024-06-01T00:01:00")
    assert rc == 0, err
    assert out.splitlines() == ["timestamp,device_id,temp", f"2024-06-01T00:00:00.000000Z,{DEV_A},20.0",
                                f"2024-06-01T00:00:00.000000Z,{DEV_B},30.0", f"2024-06-01T00:01:00.000000Z,{DEV_A},20.01",
                                f"2024-06-01T00:01:00.000000Z,{DEV_B},30.01"]


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = tmp_path / "rec"
    make_recording(rec)
    out = tmp_path / "x.csv"
    cases = [
        (["--dir", str(rec), "--device", "ffffffffffffffff"],
         (f"error: no readings match device(s) ffffffffffffffff; the recording holds 400 reading(s) of 2 device(s) "
          f"({DEV_A}, {DEV_B}), channels temp, rh, pressure, 2024-06-01T00:00:00.000000Z to 2024-06-01T03:19:00.000000Z; "
          "2 corrupt line(s) skipped (bad_value 1, invalid_json 1)")),
        (["--dir", str(rec), "--since", "2030-01-01"], "error: no readings match time 2030-01-01T00:00:00.000000Z to ..."),
        (["--dir", str(rec), "--device", DEV_A, "--channel", "temp,pressure"],
         "error: channel(s) pressure never appear in the selected readings (they hold: temp)"),
        (["--dir", str(tmp_path / "nope")], f"error: {tmp_path / 'nope'}: no such recording directory or file"),
        (["--dir", str(tmp_path)], f"error: {tmp_path}: no recording files (readings-*.jsonl) there; is [record] enabled?"),
        (["--dir", str(rec), "--since", "tomorrow"], "error: --since 'tomorrow' is neither ISO 8601 nor Unix seconds"),
        (["--dir", str(rec), "--since", "2024-06-02", "--until", "2024-06-01"], "error: --until is before --since"),
        ([], "error: say where the recording is: --dir DIR, or --config FILE (its [record] dir)"),
    ]
    for argv, expected in cases:
        rc, stdout, err = run(capsys, *argv, "-o", str(out))
        assert rc == 1, argv
        assert err.strip().splitlines() == [expected] or err.startswith(expected), (argv, err)
        assert len(err.strip().splitlines()) == 1 and not out.exists() and stdout == ""
    unreadable = rec / file_name("2024-06-03", 0)
    unreadable.mkdir()  # named like a recording file, but the OS cannot read it as one (root reads any mode)
    rc, _, err = run(capsys, "--dir", str(rec), "-o", str(out))
    assert rc == 1 and err.strip() == f"error: {unreadable}: cannot read (Is a directory)", err
    assert not out.exists() and not (tmp_path / "x.csv.part").exists()


def test_exported_csv_feeds_site_data_for_one_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_recording(tmp_path / "rec")
    out = tmp_path / "all.csv"
    assert run(capsys, "--dir", str(tmp_path / "rec"), "-o", str(out))[0] == 0
    data = load_site_data(out, ["temp"], device_id=DEV_B)
    assert data.rows == 200 and data.timestamps[1] - data.timestamps[0] == 60.0
    np.testing.assert_allclose(data.values[:3, 0], [30.0, 30.01, 30.02])
