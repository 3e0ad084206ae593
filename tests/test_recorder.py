"""The reading recorder: config checks, day files with size parts, retention by days and by
bytes (oldest first, counted), torn lines after a crash, drops counted, and a real gateway
over a real Mosquitto recording what its pipeline accepted."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pytest

from gateway.config import ConfigError, validate_config
from gateway.metrics import Metrics
from gateway.plugin_manager import Registry, make_plugin_manager
from gateway.ingest.profiles import ProfileConfig
from gateway.recording.recorder import ReadingRecorder, utc_day
from gateway.recording.config import RecordConfig
from models.recordings import (
    ReadStats,
    decode,
    encode,
    file_name,
    list_files,
    read_lines,
)
from gateway.types import RadioMeta, Reading

DAY = 86400.0
NOW = 1_717_200_000.0  # 2024-06-01 00:00:00 UTC


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(make_plugin_manager(load_entry_points=False))


def reading(i: int, device: str = "a840410000000001") -> Reading:
    return Reading(device, NOW + i, {"temperature": 20.0 + (i % 10) / 10, "humidity": 55.5},
                   RadioMeta(rssi=-81.0, snr=7.25), f_cnt=i)


def recorder(tmp_path: Path, metrics: Metrics, clock=lambda: NOW, **options) -> ReadingRecorder:
    options.setdefault("flush_interval_s", 0.05)
    return ReadingRecorder(RecordConfig(enabled=True, **options), tmp_path / "rec", metrics, clock=clock)


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def all_lines(directory: Path) -> list[dict]:
    return [json.loads(line) for f in list_files(directory) for line in f.path.read_text().splitlines()]


# ---- config -------------------------------------------------------------------------------

def test_recording_is_off_by_default_and_validated(registry: Registry) -> None:
    cfg = validate_config({}, registry)
    assert cfg.record.enabled is False and cfg.record.max_days == 30
    cfg = validate_config({"record": {"enabled": True, "devices": ["A8-40-41-00-00-00-00-01"],
                                      "profiles": ["lpp"]},
                           "profiles": [{"name": "lpp", "codec": "cayenne_lpp"}]}, registry)
    assert cfg.record.devices == ["a840410000000001"]
    with pytest.raises(ConfigError) as info:
        validate_config({"record": {"enabled": True, "max_days": 0, "max_total_bytes": 0, "colour": "red",
                                    "flush_interval_s": 0, "profiles": ["nope"]},
                         "profiles": [{"name": "lpp"}]}, registry)
    errors = "\n".join(info.value.errors)
    assert "record.colour: unknown key" in errors
    assert "record.flush_interval_s" in errors
    with pytest.raises(ConfigError, match="record: Value error, set max_days or max_total_bytes"):
        validate_config({"record": {"max_days": 0, "max_total_bytes": 0}}, registry)
    with pytest.raises(ConfigError, match="max_file_bytes .* must be at most half of max_total_bytes"):
        validate_config({"record": {"max_total_bytes": 1_000_000, "max_file_bytes": 600_000}}, registry)
    with pytest.raises(ConfigError, match=r"record.profiles: unknown profile 'nope' \(known: default, lpp\)"):
        validate_config({"record": {"profiles": ["nope"]}, "profiles": [{"name": "lpp"}]}, registry)


# ---- writing ------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    (NOW + 0.125, "a840410000000001", {"t": 21.5, "h": 55.0}, "lpp", 2, 17, -80.0, 7.5),
    (NOW, "nœud \"7\"\n", {"température": 1e-7, "x": -0.0, "big": 1e300}, None, None, None, None, None),
    (NOW, "d", {}, "p", 1, 0, 0.0, -1.25),
])
def test_a_line_is_one_line_that_decodes_to_what_was_written(args: tuple) -> None:
    line = encode(*args)
    assert line.endswith("\n") and line.count("\n") == 1
    profile, rest = args[3], args[4:]
    optional = [k for k, v in zip(("f_port", "f_cnt", "rssi", "snr"), rest) if v is not None]
    assert list(json.loads(line)) == ["ts", "device_id", *(["profile"] if profile else []), "values", *optional]
    back = decode(line)
    assert (back.ts, back.device_id, back.values, back.profile, back.f_port, back.f_cnt, back.rssi, back.snr) == args


def test_non_finite_numbers_are_refused() -> None:
    for bad in ((math.nan, "d", {"t": 1.0}), (NOW, "d", {"t": math.inf}), (NOW, "d", {}, None, None, None, math.nan)):
        with pytest.raises(ValueError):
            encode(*bad)


def test_every_reading_written_in_order_with_its_fields(tmp_path: Path) -> None:
    m = Metrics()
    rec = recorder(tmp_path, m)
    rec.start()
    profile = ProfileConfig(name="lpp")
    for i in range(500):
        rec.put(reading(i), profile, 2)
    rec.stop()
    files = list_files(tmp_path / "rec")
    assert [f.path.name for f in files] == [file_name("2024-06-01", 0)]
    lines = all_lines(tmp_path / "rec")
    assert [x["f_cnt"] for x in lines] == list(range(500))
    assert lines[3] == {"ts": NOW + 3, "device_id": "a840410000000001", "profile": "lpp",
                        "values": {"temperature": 20.3, "humidity": 55.5}, "f_port": 2, "f_cnt": 3,
                        "rssi": -81.0, "snr": 7.25}
    assert m.get("recorder_readings_total") == 500 and m.get("recorder_dropped_total") == 0
    assert m.get("recorder_bytes") == files[0].size


def test_filter_by_device_and_profile(tmp_path: Path) -> None:
    m = Metrics()
    rec = recorder(tmp_path, m, devices=["A840410000000001", "a840410000000002"], profiles=["keep"])
    rec.start()
    keep, other = ProfileConfig(name="keep"), ProfileConfig(name="other")
    rec.put(reading(1, "a840410000000001"), keep, 1)
    rec.put(reading(2, "a840410000000002"), other, 1)   # profile not selected
    rec.put(reading(3, "a840410000000003"), keep, 1)    # device not selected
    rec.put(reading(4, "A840410000000002"), keep, 1)    # device id case does not matter
    rec.stop()
    assert [x["f_cnt"] for x in all_lines(tmp_path / "rec")] == [1, 4]


def test_size_parts_and_total_bytes_retention_delete_oldest_first(tmp_path: Path) -> None:
    m = Metrics()
    rec = recorder(tmp_path, m, max_file_bytes=65536, max_total_bytes=3 * 65536, max_days=0)
    rec.start()
    for i in range(5000):  # about 150 bytes each: ~750 KB, ~12 parts of 64 KiB
        rec.put(reading(i), None, None)
        if i % 500 == 499:
            assert wait_for(lambda: rec.queue_depth() == 0)
    rec.stop()
    files = list_files(tmp_path / "rec")
    total = sum(f.size for f in files)
    assert total <= 3 * 65536 and all(f.size <= 65536 for f in files)
    deleted = int(m.get("recorder_files_deleted_total", reason="max_total_bytes"))
    assert deleted >= 8 and [f.part for f in files] == list(range(deleted, deleted + len(files)))
    written_bytes = sum(len(encode(r.timestamp, r.device_id, r.values, None, None, r.f_cnt, -81.0, 7.25).encode())
                        for r in map(reading, range(5000)))
    assert m.get("recorder_bytes_deleted_total", reason="max_total_bytes") + total == written_bytes
    kept = all_lines(tmp_path / "rec")
    assert [x["f_cnt"] for x in kept] == list(range(5000 - len(kept), 5000)), "the newest readings are kept, in order"
    assert m.get("recorder_readings_total") == 5000 and m.get("recorder_dropped_total") == 0


def test_files_older_than_max_days_are_deleted_and_counted(tmp_path: Path) -> None:
    directory = tmp_path / "rec"
    directory.mkdir()
    line = json.dumps({"ts": NOW, "device_id": "d", "values": {"t": 1.0}}) + "\n"
    for days_ago in (10, 3, 2, 1):
        (directory / file_name(utc_day(NOW - days_ago * DAY), 0)).write_text(line)
    (directory / "notes.txt").write_text("not ours")
    m = Metrics()
    rec = recorder(tmp_path, m, max_days=3)  # keep today, yesterday and the day before
    rec.start()
    rec.put(reading(0), None, None)
    rec.stop()
    assert [f.day for f in list_files(directory)] == ["2024-05-30", "2024-05-31", "2024-06-01"]
    assert m.get("recorder_files_deleted_total", reason="max_days") == 2
    assert m.get("recorder_bytes_deleted_total", reason="max_days") == 2 * len(line)
    assert (directory / "notes.txt").exists()


def test_day_change_starts_a_new_file(tmp_path: Path) -> None:
    now = [NOW - 10]
    rec = recorder(tmp_path, Metrics(), clock=lambda: now[0])
    rec.start()
    rec.put(reading(1), None, None)
    assert wait_for(lambda: list_files(tmp_path / "rec") and list_files(tmp_path / "rec")[0].size > 0)
    now[0] = NOW + 10
    rec.put(reading(2), None, None)
    rec.stop()
    files = list_files(tmp_path / "rec")
    assert [(f.day, f.part) for f in files] == [("2024-05-31", 0), ("2024-06-01", 0)]


def test_restart_after_a_torn_line_appends_cleanly(tmp_path: Path) -> None:
    directory = tmp_path / "rec"
    directory.mkdir()
    good = json.dumps({"ts": NOW, "device_id": "d", "values": {"t": 1.0}})
    (directory / file_name("2024-06-01", 0)).write_text(good + "\n" + good[:25])  # a crash mid-line
    rec = recorder(tmp_path, Metrics())
    rec.start()
    rec.put(reading(7), None, None)
    rec.stop()
    files = list_files(directory)
    assert len(files) == 1, "the day's last part is appended to"
    stats = ReadStats()
    got = list(read_lines(files[0].path, stats))
    assert [r.f_cnt for r in got] == [None, 7]
    assert stats.corrupt == {"invalid_json": 1} and stats.lines == 3


def test_full_queue_drops_are_counted_never_block(tmp_path: Path) -> None:
    """The writer not running at all is the extreme of 'cannot keep up': put() still returns
    at once, and every reading past the queue's bound is counted."""
    m = Metrics()
    rec = recorder(tmp_path, m, queue_size=100)
    t0 = time.perf_counter()
    for i in range(1000):
        rec.put(reading(i), None, None)
    assert time.perf_counter() - t0 < 1.0
    assert m.get("recorder_dropped_total", reason="queue_full") == 900
    rec.start()
    rec.stop()
    assert [x["f_cnt"] for x in all_lines(tmp_path / "rec")] == list(range(100))


def test_write_errors_are_counted_and_recovered_from(tmp_path: Path) -> None:
    m = Metrics()
    rec = recorder(tmp_path, m, max_file_bytes=65536, max_total_bytes=10 * 65536)
    rec.start()
    rec.put(reading(0), None, None)
    assert wait_for(lambda: m.get("recorder_readings_total") == 1)
    shutil.rmtree(tmp_path / "rec")
    (tmp_path / "rec").write_text("a file where the directory was")  # new parts cannot be created
    for i in range(1, 1000):  # > 64 KiB: the writer must start a new part, and cannot
        rec.put(reading(i), None, None)
    assert wait_for(lambda: m.get("recorder_dropped_total", reason="write_error") > 0)
    (tmp_path / "rec").unlink()
    (tmp_path / "rec").mkdir()
    rec.put(reading(1000), None, None)
    rec.stop()
    written, lost = m.get("recorder_readings_total"), m.get("recorder_dropped_total", reason="write_error")
    assert written + lost == 1001 and lost > 0
    assert all_lines(tmp_path / "rec")[-1]["f_cnt"] == 1000


# ---- in the daemon ------------------------------------------------------------------------

def test_gateway_records_what_its_pipeline_accepts(broker, tmp_path: Path) -> None:
    from tests.test_e2e_mqtt import make_gateway
    from tests.uplink_factory import dev_eui, field_uplinks, publish_all

    gw = make_gateway(broker, tmp_path, {"record": {"enabled": True, "flush_interval_s": 0.2}})
    gw.start()
    try:
        uplinks = field_uplinks(devices=3, readings=100)
        bad = [("application/app-1/device/00/event/up", b"{not json")]
        publish_all(broker.host, broker.port, uplinks + bad)
        assert wait_for(lambda: gw.metrics.get("recorder_readings_total") >= len(uplinks), 30), gw.metrics.snapshot()
    finally:
        gw.stop()
    lines = all_lines(tmp_path / "state" / "recordings")
    assert len(lines) == len(uplinks) == gw.metrics.get("readings_total")
    first = next(x for x in lines if x["device_id"] == dev_eui(1))
    assert first["profile"] == "lpp-nodes" and first["f_port"] == 2 and first["rssi"] == -80
    assert set(first["values"]) == {"temperature_1", "humidity_2", "voltage_3"}
    assert gw.metrics.get("recorder_dropped_total") == 0


def test_unusable_recording_directory_stops_start_up(broker, tmp_path: Path) -> None:
    from gateway.service import StartupError
    from tests.test_e2e_mqtt import make_gateway

    (tmp_path / "not-a-dir").write_text("")
    gw = make_gateway(broker, tmp_path, {"record": {"enabled": True, "dir": str(tmp_path / "not-a-dir" / "rec")}})
    try:
        with pytest.raises(StartupError, match="record: directory .*not-a-dir/rec is not usable"):
            gw.start()
    finally:
        gw.stop()
