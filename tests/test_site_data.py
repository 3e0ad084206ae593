"""Reading a site's CSV or the gateway's JSON-lines recording for fine-tuning (no torch)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from models.site_data import SiteDataError, load_recording, load_site_csv, load_site_data, parse_timestamp


def test_comma_csv_with_iso_timestamps_sorted(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("ts,temp,rh,other\n"
                    "2024-05-01T00:10:00Z,21.5,40,x\n"
                    "2024-05-01T00:00:00Z,20.0,,y\n"
                    "2024-05-01 00:05:00,20.5,41,z\n")
    data = load_site_csv(path, ["temp", "rh"], "ts")
    assert data.channels == ["temp", "rh"] and data.rows == 3 and data.labels is None
    np.testing.assert_allclose(data.values[:, 0], [20.0, 20.5, 21.5])
    assert math.isnan(data.values[0, 1])
    assert data.timestamps[0] == parse_timestamp("2024-05-01T00:00:00+00:00")
    assert "rows were not in time order: sorted by timestamp" in data.notes
    assert len(data.sha256 or "") == 64


def test_semicolon_csv_decimal_comma_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "b.csv"
    path.write_text("time;pressure;state\n1700000000;1,25;normal\n1700000060;1,5;anomaly\n"
                    "1700000120;abc;0\n1700000180000;2,0;1\n")
    data = load_site_csv(path, ["pressure"], "time", label_column="state")
    np.testing.assert_allclose(data.values[[0, 1, 3], 0], [1.25, 1.5, 2.0])
    assert math.isnan(data.values[2, 0]) and "1 unparseable value(s) read as missing" in data.notes
    assert data.labels is not None and data.labels.tolist() == [False, True, False, True]
    assert data.timestamps[3] == pytest.approx(1700000180.0)  # epoch milliseconds


@pytest.mark.parametrize("content,match", [
    ("", "empty"),
    ("ts,a\n1,2\n", "at least 2 are needed"),
    ("ts,a\n1,2\n2,3\n", "no column\\(s\\) 'b'; the header .* has: ts, a"),
    ("ts,a\nyesterday,2\n2,3\n", "b.csv:2: timestamp 'yesterday'"),
    ("ts,a,lab\n1,2,maybe\n2,3,0\n", "b.csv:2: label 'maybe'"),
    ("ts,a\n1,x\n2,y\n", "hold no numeric value"),
    ("ts,a,b\n1,2\n2,3,4\n", "b.csv:2: 2 fields"),
])
def test_unusable_csv_is_a_clear_error(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "b.csv"
    path.write_text(content)
    channels = ["b"] if "'b'" in match else ["a"]
    with pytest.raises(SiteDataError, match=match):
        load_site_csv(path, channels, "ts", label_column="lab" if "lab" in content else None)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SiteDataError, match="cannot read"):
        load_site_data(tmp_path / "nope.csv", ["a"])


def test_recording_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    lines = [{"device_id": "d1", "ts": 1700000000 + 60 * i, "values": {"t": 20 + i, "h": 50}} for i in range(3)]
    lines.append({"device_id": "d2", "ts": "2024-01-01T00:00:00Z", "values": {"t": 1}})
    path.write_text("\n".join(json.dumps(x) for x in reversed(lines)) + "\n")
    with pytest.raises(SiteDataError, match="readings of 2 devices"):
        load_recording(path, ["t"])
    data = load_site_data(path, ["t", "h"], device_id="d1")
    np.testing.assert_allclose(data.values[:, 0], [20, 21, 22])
    assert data.source.endswith("#d1")
    with pytest.raises(SiteDataError, match="no readings of h"):
        load_recording(path, ["t", "h"], device_id="d2", min_rows=1)
    path.write_text("not json\n")
    with pytest.raises(SiteDataError, match=r"rec.jsonl: no readings \(1 corrupt line\(s\) skipped \(invalid_json 1\)\)"):
        load_recording(path, ["t"])


def test_recording_skips_and_counts_corrupt_lines(tmp_path: Path) -> None:
    """A torn last line (crash) and a line with a missing field are skipped and counted, not fatal."""
    good = [json.dumps({"ts": 1700000000 + 60 * i, "device_id": "d1", "values": {"t": float(i)}}) for i in range(4)]
    path = tmp_path / "rec.jsonl"
    path.write_text("\n".join([good[0], '{"ts": 1, "values": {}}', *good[1:], '{"ts": 17000003']))
    data = load_recording(path, ["t"])
    np.testing.assert_allclose(data.values[:, 0], [0, 1, 2, 3])
    assert "2 corrupt line(s) skipped (invalid_json 1, missing_field 1)" in data.notes


def test_csv_with_device_column_picks_one_device(tmp_path: Path) -> None:
    """What `record export` writes: timestamp, device_id, channels; several devices need --device."""
    path = tmp_path / "export.csv"
    rows = ["timestamp,device_id,t"]
    for i in range(6):
        rows.append(f"2024-05-01T00:{i:02d}:00Z,{'A84041000000000' + str(i % 2)},{i}")
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(SiteDataError, match="rows of 2 devices in column 'device_id'; pick one with --device"):
        load_site_data(path, ["t"])
    data = load_site_data(path, ["t"], device_id="a8:40:41:00:00:00:00:01")
    np.testing.assert_allclose(data.values[:, 0], [1, 3, 5])
    assert data.source.endswith("#a840410000000001")
    with pytest.raises(SiteDataError, match="no rows of device 'ffff'"):
        load_site_data(path, ["t"], device_id="ffff")
    plain = tmp_path / "plain.csv"
    plain.write_text("timestamp,t\n1,2\n2,3\n")
    with pytest.raises(SiteDataError, match="has no 'device_id' column"):
        load_site_data(plain, ["t"], device_id="d1")


def test_recording_directory_is_read_across_files(tmp_path: Path) -> None:
    """`model finetune --data <recording dir> --device ID` reads the recorder's day files as they are."""
    from models.recordings import encode, file_name

    directory = tmp_path / "recordings"
    directory.mkdir()
    for part, start in ((0, 0), (1, 5)):
        (directory / file_name("2024-06-01", part)).write_text("".join(
            encode(1717200000 + 60 * i, dev, {"t": float(i)}, "p", 2, i) for i in range(start, start + 5)
            for dev in ("a840410000000001", "a840410000000002")))
    (directory / "unrelated.txt").write_text("x")
    with pytest.raises(SiteDataError, match="readings of 2 devices; pick one with --device"):
        load_site_data(directory, ["t"])
    data = load_site_data(directory, ["t"], device_id="A840410000000002")
    np.testing.assert_allclose(data.values[:, 0], np.arange(10))
    assert "recording: 2 file(s), 20 line(s)" in data.notes
    (tmp_path / "empty").mkdir()
    with pytest.raises(SiteDataError, match="no recording files"):
        load_site_data(tmp_path / "empty", ["t"])


def test_industrial_shape_without_timestamp_column_reads_in_file_order(tmp_path: Path) -> None:
    """8 numeric channels, semicolons, decimal commas, a 0/1 label column and no time column:
    usable through options alone (rows in file order), as ``model eval`` does."""
    names = [f"s{i}" for i in range(8)]
    lines = [";".join([*names, "label"])]
    for r in range(30):
        lines.append(";".join([f"{r},{c}" for c in range(8)] + ["1" if r == 7 else "0"]))
    path = tmp_path / "plant.csv"
    path.write_text("\n".join(lines) + "\n")
    data = load_site_csv(path, names, None, label_column="label")
    assert data.values.shape == (30, 8)
    assert data.values[3, 2] == pytest.approx(3.2)
    assert list(data.timestamps[:3]) == [0.0, 1.0, 2.0]
    assert data.labels is not None and int(data.labels.sum()) == 1 and bool(data.labels[7])
    assert any("file order" in n for n in data.notes)


def test_timestamp_column_found_by_name_and_explicit_missing_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "site.csv"
    path.write_text("Time,temp\n1700000600,2\n1700000000,1\n")
    data = load_site_csv(path, ["temp"], None)
    assert list(data.values[:, 0]) == [1.0, 2.0]  # sorted by the detected time column
    with pytest.raises(SiteDataError, match="no column"):
        load_site_csv(path, ["temp"], "stamp")
