"""The ingest log (write-ahead log of accepted uplinks) and the acceptor in front of it.

Real files throughout; a full disk is the kernel's own ENOSPC from ``/dev/full`` (the
active segment is a symbolic link to it), power loss mid-fsync is a file cut at every byte
of its last record.
"""

from __future__ import annotations

import os
import queue
from pathlib import Path

import pytest

from gateway.ingest.accept import IngestAcceptor, dedup_key
from gateway.ingest.log import IngestLog
from gateway.metrics import Metrics
from gateway.types import RadioMeta, RawUplink


def uplink(i: int, device: str = "a1b2c3d4e5f60001", dedup: bool = True) -> RawUplink:
    return RawUplink(device_id=device, received_at=1.7e9 + i, payload=bytes([i % 256, 7, 9]), f_port=2, f_cnt=i,
                     radio=RadioMeta(rssi=-80.0 - i % 5, snr=7.5, gateway_id="0016c001ff10a235"),
                     decoded={"t": i} if i % 3 == 0 else None, device_name="node-1", source="cs", shape="chirpstack_v4",
                     dedup_id=f"dd-{device}-{i}" if dedup else None)


def same(a: RawUplink, b: RawUplink) -> bool:
    fields = ("device_id", "received_at", "payload", "f_port", "f_cnt", "decoded", "device_name", "source", "shape", "dedup_id")
    return all(getattr(a, f) == getattr(b, f) for f in fields) and a.radio.as_dict() == b.radio.as_dict()


def test_records_come_back_in_order_with_their_seq_after_a_reopen(tmp_path: Path) -> None:
    log = IngestLog(tmp_path, Metrics())
    ups = [uplink(i) for i in range(50)]
    log.write(ups[:20])
    log.write(ups[20:])
    assert [u.seq for u in ups] == list(range(1, 51))
    log.close()
    again = IngestLog(tmp_path, Metrics())
    back = list(again.records(0))
    assert [u.seq for u in back] == list(range(1, 51))
    assert all(same(a, b) for a, b in zip(ups, back, strict=True))
    assert [u.seq for u in again.records(45)] == [46, 47, 48, 49, 50]
    assert again.next_seq == 51


@pytest.mark.parametrize("cut_from_end", [1, 5, 17, 18, 40])
def test_a_torn_last_write_is_cut_off_and_every_whole_record_kept(tmp_path: Path, cut_from_end: int) -> None:
    """Power loss mid-fsync: the last record is on disk only in part."""
    log = IngestLog(tmp_path, Metrics())
    log.write([uplink(i) for i in range(10)])
    log.write([uplink(10)])
    log.close()
    (seg,) = tmp_path.glob("seg-*.wal")
    size = seg.stat().st_size
    with open(seg, "r+b") as fh:
        fh.truncate(size - cut_from_end)
    metrics = Metrics()
    again = IngestLog(tmp_path, metrics)
    assert [u.seq for u in again.records(0)] == list(range(1, 11))
    assert metrics.get("ingest_log_truncated_bytes_total") > 0
    again.write([uplink(11)])  # appends after the last whole record, readable as such
    assert [u.seq for u in again.records(9)] == [10, 11]  # the torn record was never durable: its seq is free


def test_a_flipped_byte_in_the_last_record_ends_the_log_there(tmp_path: Path) -> None:
    log = IngestLog(tmp_path, Metrics())
    log.write([uplink(i) for i in range(5)])
    log.close()
    (seg,) = tmp_path.glob("seg-*.wal")
    data = bytearray(seg.read_bytes())
    data[-3] ^= 0x10
    seg.write_bytes(bytes(data))
    assert [u.seq for u in IngestLog(tmp_path, Metrics()).records(0)] == [1, 2, 3, 4]


def test_segments_rotate_and_checkpointed_ones_are_deleted(tmp_path: Path) -> None:
    log = IngestLog(tmp_path, Metrics(), segment_bytes=2000, keep_segments=2)
    for k in range(10):
        log.write([uplink(k * 10 + i) for i in range(10)])
    assert log.segment_count() >= 5
    before = log.segment_count()
    assert log.release_through(30) >= 1
    assert log.segment_count() < before
    assert [u.seq for u in log.records(30)] == list(range(31, 101))  # nothing after the checkpoint is gone
    log.release_through(100)
    assert log.segment_count() == 2  # the newest are kept for the duplicate horizon
    log.close()
    assert [u.seq for u in IngestLog(tmp_path, Metrics()).records(0)][-1] == 100


def _full_disk_log(tmp_path: Path, metrics: Metrics) -> IngestLog:
    """A log whose active segment's descriptor now writes to /dev/full: every write gets
    the kernel's ENOSPC until the log reopens the segment (space is back)."""
    log = IngestLog(tmp_path, metrics)
    log.write([uplink(0)])
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, log._fd)  # type: ignore[arg-type]
    os.close(full)
    return log


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_accepts_nothing_and_the_redelivery_is_taken_once_space_is_back(tmp_path: Path) -> None:
    metrics = Metrics()
    log = _full_disk_log(tmp_path, metrics)
    delivered: queue.Queue[RawUplink] = queue.Queue()
    acceptor = IngestAcceptor(log, delivered.put, metrics)
    emit = acceptor.emitter("cs")
    ups = [uplink(i) for i in range(1, 6)]
    for up in ups:
        emit(up)
    assert emit.commit() is False  # no PUBACKs for these
    assert delivered.empty()
    assert metrics.get("uplinks_dropped_total", reason="log_write_failed") == 5
    assert metrics.get("ingest_log_errors_total", reason="disk_full") == 1
    # space is back (the log reopens its segment after a failed write); the broker
    # redelivers the same messages
    for up in [uplink(i) for i in range(1, 6)]:
        emit(up)
    assert emit.commit() is True
    got = [delivered.get_nowait() for _ in range(5)]
    assert [u.f_cnt for u in got] == [1, 2, 3, 4, 5] and delivered.empty()
    assert metrics.get("uplinks_duplicate_total") == 0  # the failed ones were forgotten, not duplicates
    acceptor.close()
    assert [u.f_cnt for u in IngestLog(tmp_path, Metrics()).records(0)] == [0, 1, 2, 3, 4, 5]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_on_a_serial_source_still_hands_frames_on_and_counts_them(tmp_path: Path) -> None:
    metrics = Metrics()
    log = _full_disk_log(tmp_path, metrics)
    delivered: list[RawUplink] = []
    acceptor = IngestAcceptor(log, delivered.append, metrics)
    emit = acceptor.emitter("radio", redelivers=False)
    emit(uplink(1, dedup=False))
    assert emit.commit() is False
    assert len(delivered) == 1 and metrics.get("ingest_log_bypassed_total") == 1


def test_redelivered_uplinks_are_dropped_and_counted_also_after_a_restart(tmp_path: Path) -> None:
    metrics = Metrics()
    delivered: list[RawUplink] = []
    acceptor = IngestAcceptor(IngestLog(tmp_path, metrics), delivered.append, metrics)
    emit = acceptor.emitter("cs")
    for i in range(10):
        emit(uplink(i))
    emit(uplink(3))  # a redelivery within the same run
    assert emit.commit()
    assert [u.f_cnt for u in delivered] == list(range(10))
    assert metrics.get("uplinks_duplicate_total", reason="dedup_id") == 1
    acceptor.close()
    # restart: the checkpoint reflects up to seq 6; the log's keys come back as well
    metrics2 = Metrics()
    replayed: list[RawUplink] = []
    acceptor2 = IngestAcceptor(IngestLog(tmp_path, metrics2), replayed.append, metrics2)
    assert acceptor2.replay(6) == 4
    assert [u.f_cnt for u in replayed] == [6, 7, 8, 9]
    emit2 = acceptor2.emitter("cs")
    for i in (8, 9, 10):  # 8 and 9 were on disk but never acknowledged: the broker sends them again
        emit2(uplink(i))
    assert emit2.commit()
    assert [u.f_cnt for u in replayed] == [6, 7, 8, 9, 10]
    assert metrics2.get("uplinks_duplicate_total") == 2
    acceptor2.close()


def test_without_a_deduplication_id_the_frame_counter_and_payload_identify_a_redelivery() -> None:
    a, b = uplink(5, dedup=False), uplink(5, dedup=False)
    assert dedup_key(a) == dedup_key(b)
    b.payload = b"other"
    assert dedup_key(a) != dedup_key(b)
    a.f_cnt = None
    assert dedup_key(a) is None


def test_the_duplicate_horizon_is_bounded(tmp_path: Path) -> None:
    metrics = Metrics()
    delivered: list[RawUplink] = []
    acceptor = IngestAcceptor(IngestLog(tmp_path, metrics), delivered.append, metrics, dedup_horizon=8)
    emit = acceptor.emitter("cs")
    for i in range(20):
        emit(uplink(i))
    emit(uplink(0))  # beyond the horizon: taken again
    emit(uplink(19))  # within it: dropped
    assert emit.commit()
    assert len(delivered) == 21 and metrics.get("uplinks_duplicate_total") == 1
    acceptor.close()


def test_a_source_that_never_commits_is_committed_by_the_timer(tmp_path: Path) -> None:
    metrics = Metrics()
    delivered: queue.Queue[RawUplink] = queue.Queue()
    acceptor = IngestAcceptor(IngestLog(tmp_path, metrics), delivered.put, metrics, max_delay_s=0.01)
    acceptor.start()
    emit = acceptor.emitter("third-party")
    emit(uplink(1))
    assert delivered.get(timeout=10).seq == 1
    acceptor.close()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_mqtt_chunks_that_could_not_be_logged_are_not_acknowledged_and_come_again(broker, tmp_path: Path) -> None:
    """A real MqttSource over a real broker: the first log write fails with ENOSPC, so that
    chunk's PUBACKs are withheld and the connection dropped; the broker delivers the
    messages again on the next connection and every uplink is taken exactly once."""
    import json
    import time

    from gateway.contracts import PluginContext
    from plugins.sources.mqtt.source import MqttSource, MqttSourceOptions
    from tests.uplink_factory import field_uplinks, publish_all

    metrics = Metrics()
    log = _full_disk_log(tmp_path / "log", metrics)  # the next write fails; the one after reopens and works
    delivered: list[RawUplink] = []
    acceptor = IngestAcceptor(log, delivered.append, metrics)
    options = MqttSourceOptions(host=broker.host, port=broker.port, client_id="durable-src",
                                reconnect_min_s=0.2, reconnect_max_s=0.5)
    source = MqttSource("cs", options, PluginContext(metrics=metrics, gateway_id="g", state_dir=str(tmp_path)))
    uplinks = field_uplinks(devices=4, readings=50, seed=2)
    try:
        source.start(acceptor.emitter("cs", redelivers=source.redelivers))
        assert source.wait_connected(10)
        time.sleep(0.3)  # subscribed
        publish_all(broker.host, broker.port, [(t, json.dumps(b).encode()) for t, b in uplinks])
        deadline = time.monotonic() + 30
        while len(delivered) < len(uplinks) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        source.stop()
        acceptor.close()
    assert metrics.get("uplinks_dropped_total", reason="log_write_failed") >= 1
    assert metrics.get("mqtt_reconnects_total") >= 1
    got = sorted((u.device_id, u.f_cnt) for u in delivered)
    assert got == sorted((b["deviceInfo"]["devEui"], b["fCnt"]) for _, b in uplinks)  # all, each once
    assert [u.seq for u in IngestLog(tmp_path / "log", Metrics()).records(1)] == [u.seq for u in delivered]
