"""The status page: plain server-rendered HTML and SVG beside ``/metrics`` (no script, no build).

Routes (``handle(method, path, headers, body)`` -> ``Response``):

- ``GET /`` : the serving model, provider and adapters; the devices (last seen, battery,
  RSSI/SNR, calibration, score against the raise threshold, open alerts); the recent alerts
  with a "false alarm / confirmed" form each; links to PNG reports.
- ``GET /device/<id>`` : one device: its row, its chart (readings, scores, threshold, alert
  spans; ``gateway.status.svg``) and its alerts. ``GET /device/<id>/chart.svg`` the chart alone.
- ``GET /api/status`` : the same as JSON.
- ``GET /reports/<name>.png`` : a PNG from the reports folder (``model eval``/``model score``
  ``--report`` output put there).
- ``POST /alerts/<key>/feedback`` (form: ``label``, ``note``, ``token``): stores the verdict
  with ``gateway.alerts.feedback.record_feedback``. Only when an operator token is
  configured and given (form field or ``Authorization: Bearer``); otherwise 403 and the
  page is read-only (no forms shown).

Every value that came from a device (ids, names, messages) is HTML-escaped. ``?refresh=N``
sets the page's auto-refresh (seconds, 0 = off; default 10).
"""

from __future__ import annotations

import hmac
import json
import re
import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs, quote, unquote, urlsplit

from gateway.alerts.feedback import load_feedback, record_feedback
from gateway.status.svg import device_chart_svg
from gateway.status.tracker import StatusTracker
from gateway.types import Alert

MAX_BODY = 8192
MAX_ROWS = 200  # device rows on the index page
_REPORT = re.compile(r"^[A-Za-z0-9_.-]{1,120}\.png$")

CSS = """
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222;max-width:1100px}
h1{font-size:1.3em;margin:.2em 0}h2{font-size:1.08em;margin:1.2em 0 .4em}
table{border-collapse:collapse;font-size:.9em}td,th{padding:.25em .55em;border-bottom:1px solid #e3e3e3;text-align:left}
th{background:#f4f4f4}.num{text-align:right;font-variant-numeric:tabular-nums}
.bad{color:#b00020;font-weight:600}.ok{color:#1b7f3b}.muted{color:#777}
.alert-raised{background:#fff1f1}.pill{border-radius:.8em;padding:0 .5em;background:#eee;font-size:.85em}
.pill.critical{background:#f8c9c9}.pill.warning{background:#fde8b5}
form.fb{display:inline}form.fb input[type=text],form.fb input[type=password]{width:7em}
.model{background:#f6f8fa;padding:.5em .8em;border-radius:.4em;display:inline-block}
"""


@dataclass(slots=True)
class Response:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    d = max(0.0, now - ts)
    if d < 90:
        return f"{d:.0f} s ago"
    if d < 5400:
        return f"{d / 60:.0f} min ago"
    return f"{d / 3600:.1f} h ago"


def _num(v: float | None, fmt: str = "{:.3g}", unit: str = "") -> str:
    return "&ndash;" if v is None else escape(fmt.format(v) + unit)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


class StatusPage:
    """Renders the page from a StatusTracker and answers the routes above."""

    def __init__(self, tracker: StatusTracker, state_dir: Path, info: Callable[[], Mapping[str, Any]],
                 token: str | None = None, reports_dir: Path | None = None, refresh_s: int = 10) -> None:
        self.tracker = tracker
        self.state_dir = Path(state_dir)
        self.info = info
        self.token = token or None
        self.reports_dir = reports_dir
        self.refresh_s = refresh_s

    # ---- routing -----------------------------------------------------------------------
    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes = b"") -> Response:
        url = urlsplit(target)
        query = parse_qs(url.query)
        path = url.path
        refresh = self._refresh(query)
        if method == "POST":
            m = re.fullmatch(r"/alerts/([^/]+)/feedback", path)
            if m is None:
                return self._text(404, "not found")
            return self._feedback(unquote(m.group(1)), headers, body)
        if method != "GET":
            return self._text(405, "method not allowed")
        if path in ("/", "/status"):
            return self._html(self.index_html(refresh))
        if path == "/api/status":
            return Response(200, "application/json", json.dumps(self.snapshot(), default=str).encode())
        m = re.fullmatch(r"/device/([^/]+)(/chart\.svg)?", path)
        if m is not None:
            device_id = unquote(m.group(1))
            if self.tracker.device(device_id) is None:
                return self._text(404, "unknown device")
            if m.group(2):
                svg = self._chart_svg(device_id)
                return Response(200, "image/svg+xml", svg.encode()) if svg else self._text(404, "no chart")
            return self._html(self.device_html(device_id, refresh))
        m = re.fullmatch(r"/reports/([^/]+)", path)
        if m is not None:
            return self._report(unquote(m.group(1)))
        return self._text(404, "not found")

    def _refresh(self, query: dict[str, list[str]]) -> int:
        try:
            return max(0, min(3600, int(query.get("refresh", [self.refresh_s])[0])))
        except ValueError:
            return self.refresh_s

    @staticmethod
    def _text(status: int, text: str) -> Response:
        return Response(status, "text/plain; charset=utf-8", (text + "\n").encode())

    @staticmethod
    def _html(text: str) -> Response:
        return Response(200, "text/html; charset=utf-8", text.encode())

    # ---- data --------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        feedback = load_feedback(self.state_dir)
        return {"model": dict(self.info()), "devices": self.tracker.devices(),
                "alerts": [{**a.as_dict(), "feedback": (feedback.get(a.key) or {}).get("label")}
                           for a in self.tracker.recent_alerts()],
                "reports": self.reports(), "writable": self.token is not None}

    def reports(self) -> list[str]:
        if self.reports_dir is None or not self.reports_dir.is_dir():
            return []
        return sorted(p.name for p in self.reports_dir.iterdir() if _REPORT.match(p.name) and p.is_file())[:50]

    def _report(self, name: str) -> Response:
        if not _REPORT.match(name) or name not in self.reports():
            return self._text(404, "no such report")
        assert self.reports_dir is not None
        return Response(200, "image/png", (self.reports_dir / name).read_bytes())

    def _chart_svg(self, device_id: str) -> str | None:
        chart = self.tracker.device_chart(device_id)
        if chart is None:
            return None
        return device_chart_svg(chart, self.info().get("raise_threshold"), title=f"device {device_id}")

    # ---- feedback ----------------------------------------------------------------------
    def _feedback(self, key: str, headers: Mapping[str, str], body: bytes) -> Response:
        if self.token is None:
            return self._text(403, "read-only: no operator token is configured ([status] operator_token_env/_file)")
        if len(body) > MAX_BODY:
            return self._text(413, "form too large")
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        given = form.get("token") or ""
        auth = headers.get("Authorization") or headers.get("authorization") or ""
        if auth.startswith("Bearer "):
            given = auth[7:]
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return self._text(403, "wrong operator token")
        alert = self.tracker.find_alert(key)
        try:
            record_feedback(self.state_dir, key, form.get("label", ""), form.get("note"),
                            alert=alert.as_dict() if alert is not None else None)
        except ValueError as exc:
            return self._text(400, str(exc))
        back = form.get("back") or "/"
        if not back.startswith("/") or back.startswith("//"):
            back = "/"
        return Response(303, "text/plain; charset=utf-8", b"stored\n", {"Location": back})

    # ---- HTML --------------------------------------------------------------------------
    def _head(self, title: str, refresh: int) -> str:
        meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
        return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}'
                f"<title>{escape(title)}</title><style>{CSS}</style></head><body>")

    def _model_html(self) -> str:
        info = self.info()
        adapters = ", ".join(info.get("adapters") or []) or "none"
        return (f'<div class="model" id="model">model <b>{escape(str(info.get("model", "?")))}</b> '
                f'from <code>{escape(str(info.get("path", "?")))}</code> serving on '
                f'<b id="provider">{escape(", ".join(info.get("providers") or []) or "?")}</b>; '
                f'adapters: {escape(adapters)}; raise threshold {_num(info.get("raise_threshold"))}</div>')

    def index_html(self, refresh: int) -> str:
        now = time.time()
        info = self.info()
        out = [self._head(f"{info.get('gateway_id', 'gateway')} status", refresh),
               f"<h1>lora-gateway <code>{escape(str(info.get('gateway_id', '')))}</code></h1>", self._model_html(),
               "<h2>Devices</h2>"]
        devices = self.tracker.devices()
        if not devices:
            out.append('<p class="muted">no device seen yet</p>')
        else:
            # devices with open alerts first; a page of MAX_ROWS (the JSON has every one)
            devices.sort(key=lambda d: not d["open_alerts"])
            if len(devices) > MAX_ROWS:
                out.append(f'<p class="muted">{len(devices)} devices: the first {MAX_ROWS} shown (open alerts first); '
                           'all of them in <a href="/api/status">/api/status</a></p>')
                devices = devices[:MAX_ROWS]
            out.append('<table id="devices"><tr><th>device</th><th>last seen</th><th>battery</th><th>RSSI</th>'
                       "<th>SNR</th><th>calibration</th><th>score / threshold</th><th>open alerts</th></tr>")
            thr = info.get("raise_threshold")
            for d in devices:
                out.append(self._device_row(d, now, thr))
            out.append("</table>")
        out.append(self._alerts_html(self.tracker.recent_alerts(limit=30), "/"))
        out.append(self._reports_html())
        out.append('<p class="muted">Prometheus metrics: <a href="/metrics">/metrics</a>, readiness: '
                   '<a href="/health">/health</a>, JSON: <a href="/api/status">/api/status</a></p></body></html>')
        return "".join(out)

    def _device_row(self, d: dict[str, Any], now: float, thr: float | None) -> str:
        dev = d["device_id"]
        name = f' <span class="muted">{escape(d["device_name"])}</span>' if d.get("device_name") else ""
        score = d.get("score")
        over = score is not None and thr is not None and score >= thr
        score_html = (f'<span class="{"bad" if over else "ok"}">{_num(score)}</span> / {_num(thr)}'
                      if score is not None else f'<span class="muted">&ndash; / {_num(thr)}</span>')
        alerts = " ".join(f'<span class="pill">{escape(k)}</span>' for k in d["open_alerts"]) or \
            '<span class="muted">none</span>'
        return (f'<tr class="device{" alert-raised" if d["open_alerts"] else ""}" data-device="{escape(dev)}">'
                f'<td><a href="/device/{quote(dev, safe="")}">{escape(dev)}</a>{name}</td>'
                f'<td>{_ago(d["last_seen"], now)}</td><td class="num">{_num(d["battery"])}</td>'
                f'<td class="num">{_num(d["rssi"], unit=" dBm")}</td><td class="num">{_num(d["snr"], unit=" dB")}</td>'
                f'<td>{escape(d["calibration"])}</td><td class="num score">{score_html}</td>'
                f'<td class="open-alerts">{alerts}</td></tr>')

    def _alerts_html(self, alerts: list[Alert], back: str) -> str:
        out = ["<h2>Recent alerts</h2>"]
        if not alerts:
            out.append('<p class="muted">no alert yet</p>')
            return "".join(out)
        feedback = load_feedback(self.state_dir)
        out.append('<table id="alerts"><tr><th>time (reading clock, UTC)</th><th>device</th><th>kind</th><th>state</th>'
                   "<th>message</th><th>operator verdict</th></tr>")
        for a in alerts:
            verdict = (feedback.get(a.key) or {}).get("label")
            cell = f'<span class="verdict">{escape(verdict.replace("_", " "))}</span>' if verdict else ""
            if a.state == "raised" and self.token is not None:
                cell += self._feedback_form(a, back)
            elif not verdict:
                cell = '<span class="muted">&ndash;</span>'
            detail = f" ({escape(str(a.details['channel']))})" if a.details.get("channel") else ""
            out.append(f'<tr class="alert" data-key="{escape(a.key)}" data-device="{escape(a.device_id)}">'
                       f"<td>{_when(a.timestamp)}</td>"
                       f'<td><a href="/device/{quote(a.device_id, safe="")}">{escape(a.device_id)}</a></td>'
                       f'<td>{escape(a.kind)}{detail}</td><td><span class="pill {escape(a.severity)}">'
                       f"{escape(a.state)} {escape(a.severity)}</span></td><td>{escape(a.message)}</td>"
                       f"<td>{cell}</td></tr>")
        out.append("</table>")
        return "".join(out)

    @staticmethod
    def _feedback_form(a: Alert, back: str) -> str:
        key = quote(a.key, safe="")
        return (f'<form class="fb" method="post" action="/alerts/{key}/feedback">'
                f'<input type="hidden" name="back" value="{escape(back)}">'
                f'<input type="password" name="token" placeholder="operator token" autocomplete="off">'
                f'<input type="text" name="note" placeholder="note">'
                f'<button type="submit" name="label" value="false_alarm" class="false-alarm">false alarm</button>'
                f'<button type="submit" name="label" value="confirmed" class="confirmed">confirmed</button></form>')

    def _reports_html(self) -> str:
        names = self.reports()
        if not names:
            where = escape(str(self.reports_dir)) if self.reports_dir else "the reports folder"
            return (f'<h2>Model reports</h2><p class="muted">none yet: write one with '
                    f"<code>lora-gateway model eval ... --report {where}/NAME.png</code></p>")
        links = "".join(f'<li><a href="/reports/{quote(n)}">{escape(n)}</a></li>' for n in names)
        return f'<h2>Model reports</h2><ul id="reports">{links}</ul>'

    def device_html(self, device_id: str, refresh: int) -> str:
        now = time.time()
        info = self.info()
        d = self.tracker.device(device_id)
        assert d is not None
        out = [self._head(f"device {device_id}", refresh), '<p><a href="/">&larr; all devices</a></p>',
               f"<h1>device <code>{escape(device_id)}</code></h1>", self._model_html(),
               '<table id="devices"><tr><th>device</th><th>last seen</th><th>battery</th><th>RSSI</th><th>SNR</th>'
               "<th>calibration</th><th>score / threshold</th><th>open alerts</th></tr>",
               self._device_row(d, now, info.get("raise_threshold")), "</table>", "<h2>Recent readings and scores</h2>"]
        svg = self._chart_svg(device_id)
        out.append(svg if svg else '<p class="muted">no chart kept for this device (the page charts a bounded '
                                   "number of devices; one that raises an alert always gets one)</p>")
        out.append(self._alerts_html(self.tracker.recent_alerts(device_id), f"/device/{quote(device_id, safe='')}"))
        out.append("</body></html>")
        return "".join(out)
