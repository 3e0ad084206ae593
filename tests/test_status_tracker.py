"""The status page's parts without a browser: the bounded tracker, the SVG chart, the page's
routes and token rule over a real HTTP socket, the alert-feedback store, histograms."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gateway.alerts.feedback import feedback_path, load_feedback, record_feedback
from gateway.metrics import Metrics
from gateway.metrics_http import serve_metrics
from gateway.status.page import StatusPage
from gateway.status.svg import MAX_POINTS, device_chart_svg
from gateway.status.tracker import StatusTracker
from gateway.types import Alert, RadioMeta, Reading


def reading(dev: str, ts: float, temp: float, rssi: float = -90.0) -> Reading:
    return Reading(device_id=dev, timestamp=ts, values={"temperature": temp, "bat": 3.3}, radio=RadioMeta(rssi=rssi, snr=5.0))


def alert(dev: str, state: str, ts: float, key: str) -> Alert:
    return Alert(device_id=dev, kind="anomaly", state=state, severity="critical" if state == "raised" else "info",  # type: ignore[arg-type]
                 timestamp=ts, message=f"anomaly {state}", key=key, score=5.0, details={"channel": "temperature"})


class Profile:
    channels = {"temperature": "temperature"}
    battery_field = "bat"


def test_tracker_keeps_bounded_history_and_spans() -> None:
    t = StatusTracker(history_points=16, chart_devices=2, max_devices=3, calibration_steps=8)
    for i in range(40):
        t.observe_reading(reading("a", 1000.0 + i, 20.0 + i), Profile(), None)  # type: ignore[arg-type]
    t.observe_score("a", 1039.0, 0.5, {"channel": "temperature"})
    chart = t.device_chart("a")
    assert chart is not None and len(chart["times"]) == 16 and chart["times"][-1] == 1039.0
    assert chart["values"]["temperature"][-1] == 59.0 and "bat" not in chart["values"]
    row = t.device("a")
    assert row is not None and row["battery"] == 3.3 and row["rssi"] == -90.0 and row["calibration"] == "scoring"
    t.on_alert(alert("a", "raised", 1030.0, "k1"))
    assert t.device("a")["open_alerts"] == ["anomaly"]  # type: ignore[index]
    t.on_alert(alert("a", "cleared", 1035.0, "k2"))
    assert t.device_chart("a")["spans"] == [("anomaly", 1030.0, 1035.0)]  # type: ignore[index]
    assert t.device("a")["open_alerts"] == []  # type: ignore[index]
    # a device not yet scored says how far its calibration is
    t.observe_reading(reading("b", 1.0, 1.0), Profile(), None)  # type: ignore[arg-type]
    assert t.device("b")["calibration"] == "learning (1/8 readings)"  # type: ignore[index]


def test_an_alerting_device_always_gets_a_chart() -> None:
    t = StatusTracker(history_points=16, chart_devices=2, max_devices=10)
    for dev in ("a", "b", "c"):
        t.observe_reading(reading(dev, 1.0, 1.0), Profile(), None)  # type: ignore[arg-type]
    assert [d["charted"] for d in t.devices()] == [True, True, False]
    t.on_alert(alert("c", "raised", 2.0, "k"))
    t.observe_reading(reading("c", 3.0, 2.0), Profile(), None)  # type: ignore[arg-type]
    charted = {d["device_id"] for d in t.devices() if d["charted"]}
    assert "c" in charted and len(charted) == 2
    assert t.device_chart("c")["spans"] == [("anomaly", 2.0, None)]  # type: ignore[index]


def test_tracker_forgets_the_least_recently_seen_device_beyond_max_devices() -> None:
    t = StatusTracker(max_devices=2)
    for dev in ("a", "b", "a", "c"):
        t.observe_reading(reading(dev, 1.0, 1.0), Profile(), None)  # type: ignore[arg-type]
    assert [d["device_id"] for d in t.devices()] == ["a", "c"]


def test_svg_draws_spans_threshold_and_thins_long_series() -> None:
    n = 5000
    chart = {"channels": ["temperature"], "times": [float(i) for i in range(n)],
             "values": {"temperature": [float(i % 7) for i in range(n)]},
             "score_times": [float(i) for i in range(n)], "scores": [0.1] * n,
             "spans": [("anomaly", 100.0, 200.0), ("anomaly", 4900.0, None), ("anomaly", -50.0, -10.0)]}
    svg = device_chart_svg(chart, 1.0, title="<dev>")
    assert svg.count('class="alert-span"') == 2  # the span before the charted stretch is left out
    assert 'data-state="open"' in svg and 'class="threshold"' in svg and "<dev>" not in svg
    for line in svg.split('points="')[1:]:
        assert len(line.split('"')[0].split()) <= MAX_POINTS


def _http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
    req = urllib.request.Request(url, data=data, headers=headers or {})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=10) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


@pytest.fixture
def served(tmp_path: Path) -> Any:
    def start(token: str | None) -> tuple[str, StatusTracker]:
        t = StatusTracker()
        t.observe_reading(reading("<img src=x>", 1.0, 1.0), Profile(), None)  # type: ignore[arg-type]
        t.observe_reading(reading("7", 1.0, 1.0), Profile(), None)  # type: ignore[arg-type]
        t.on_alert(alert("7", "raised", 1.0, "abc123"))
        reports = tmp_path / "reports"
        reports.mkdir(exist_ok=True)
        (reports / "site.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
        (tmp_path / "secret.png").write_bytes(b"no")
        page = StatusPage(t, tmp_path / "state", lambda: {"model": "m@1", "providers": ["CPUExecutionProvider"],
                                                          "raise_threshold": 1.0}, token=token, reports_dir=reports)
        server = serve_metrics("127.0.0.1:0", Metrics(), lambda: {"ready": True}, page)
        servers.append(server)
        return f"http://127.0.0.1:{server.port}/", t

    servers: list[Any] = []
    yield start
    for s in servers:
        s.shutdown()


def test_read_only_page_without_a_token(served: Any, tmp_path: Path) -> None:
    url, _ = served(None)
    code, body, _ = _http(url)
    assert code == 200 and b"<img src=x>" not in body and b"&lt;img src=x&gt;" in body
    assert b"<form" not in body
    code, body, _ = _http(url + "alerts/abc123/feedback", b"label=confirmed&token=")
    assert code == 403 and b"read-only" in body
    assert load_feedback(tmp_path / "state") == {}
    assert _http(url + "device/%3Cimg%20src%3Dx%3E")[0] == 200
    assert _http(url + "device/nope")[0] == 404
    assert _http(url + "metrics")[0] == 200 and _http(url + "health")[0] == 200


def test_feedback_needs_the_token_and_is_stored(served: Any, tmp_path: Path) -> None:
    url, _ = served("s3cret")
    code, body, _ = _http(url)
    assert b'action="/alerts/abc123/feedback"' in body
    assert _http(url + "alerts/abc123/feedback", b"label=confirmed&token=wrong")[0] == 403
    code, _, headers = _http(url + "alerts/abc123/feedback", b"label=confirmed&note=real&token=s3cret&back=/device/7")
    assert code == 303 and headers["Location"] == "/device/7"
    stored = load_feedback(tmp_path / "state")["abc123"]
    assert stored["label"] == "confirmed" and stored["note"] == "real" and stored["alert"]["device_id"] == "7"
    code, _, _ = _http(url + "alerts/abc123/feedback", b"label=false_alarm", {"Authorization": "Bearer s3cret"})
    assert code == 303 and load_feedback(tmp_path / "state")["abc123"]["label"] == "false_alarm"
    assert _http(url + "alerts/abc123/feedback", b"label=maybe&token=s3cret")[0] == 400
    assert _http(url + "alerts/abc123/feedback", b"x" * 9000)[0] == 413
    # an off-site redirect target is replaced by the page itself
    _, _, headers = _http(url + "alerts/abc123/feedback", b"label=confirmed&token=s3cret&back=//evil.example")
    assert headers["Location"] == "/"


def test_reports_are_served_by_name_only(served: Any) -> None:
    url, _ = served(None)
    code, body, _ = _http(url)
    assert b'href="/reports/site.png"' in body
    code, body, headers = _http(url + "reports/site.png")
    assert code == 200 and headers["Content-Type"] == "image/png" and body.startswith(b"\x89PNG")
    assert _http(url + "reports/..%2Fsecret.png")[0] == 404
    status = json.loads(_http(url + "api/status")[1])
    assert status["reports"] == ["site.png"] and status["writable"] is False


def test_feedback_store_keeps_the_latest_verdict_and_skips_torn_lines(tmp_path: Path) -> None:
    record_feedback(tmp_path, "k1", "false", note="dust")
    record_feedback(tmp_path, "k2", "confirmed")
    record_feedback(tmp_path, "k1", "confirmed", alert={"device_id": "3", "kind": "anomaly", "other": 1})
    with open(feedback_path(tmp_path), "a") as fh:
        fh.write('{"key": "k3", "lab')  # a torn last line
    got = load_feedback(tmp_path)
    assert {k: v["label"] for k, v in got.items()} == {"k1": "confirmed", "k2": "confirmed"}
    assert got["k1"]["alert"] == {"device_id": "3", "kind": "anomaly"}
    assert load_feedback(tmp_path / "none") == {}
    record_feedback(tmp_path, "k4", "false_alarm")  # a write after the torn line is whole
    assert load_feedback(tmp_path)["k4"]["label"] == "false_alarm"
    for bad in (("", "confirmed"), ("a/b", "confirmed"), ("k", "maybe")):
        with pytest.raises(ValueError):
            record_feedback(tmp_path, *bad)
    with pytest.raises(ValueError):
        record_feedback(tmp_path, "k", "confirmed", note="x" * 501)


def test_histogram_buckets_and_declaration() -> None:
    m = Metrics()
    m.histogram("lat_seconds", [0.1, 1.0])
    for v in (0.05, 0.1, 0.5, 3.0):
        m.observe("lat_seconds", v)
    [(name, bounds, labels, counts, total)] = m.histograms()
    assert (name, bounds, labels, counts) == ("lat_seconds", (0.1, 1.0), (), [2, 1, 1]) and total == pytest.approx(3.65)
    m.histogram("lat_seconds", [0.1, 1.0])  # the same again: fine
    with pytest.raises(ValueError):
        m.histogram("lat_seconds", [0.2])
    with pytest.raises(ValueError):
        m.histogram("x", [1.0, 1.0])
    with pytest.raises(KeyError):
        m.observe("never_declared", 1.0)
