"""The HTTP endpoint: ``/metrics`` (Prometheus text format), ``/health`` (JSON readiness)
and, when given one, the status page (``gateway.status.page``) on every other path.

prometheus-client renders the exposition format from a custom collector that reads the
gateway's own Metrics registry, so the pipeline never touches prometheus-client objects on
its hot path. ``/health`` answers 200 when ready (model serving, all sources connected),
503 otherwise. Bound to 127.0.0.1 by default (config ``metrics.listen``). POST goes to the
page only (its feedback form), with a body of at most 8 KiB.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric

from gateway.metrics import Metrics

if TYPE_CHECKING:
    from gateway.status.page import StatusPage

MAX_POST_BYTES = 8192
log = logging.getLogger(__name__)


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Any] = {}
        # samples carry their own labels: series of one name may differ in label set (an
        # unlabelled zero series from the start, labelled ones once counted)
        for name, labels, value in self.metrics.counters():
            base = name[:-6] if name.endswith("_total") else name
            fam = families.get(("c", base))
            if fam is None:
                fam = families[("c", base)] = Metric(f"lora_gateway_{base}", self.metrics.help_text(name), "counter")
            fam.add_sample(f"lora_gateway_{base}_total", dict(labels), value)
        for name, labels, value in self.metrics.gauges():
            fam = families.get(("g", name))
            if fam is None:
                fam = families[("g", name)] = Metric(f"lora_gateway_{name}", self.metrics.help_text(name), "gauge")
            fam.add_sample(f"lora_gateway_{name}", dict(labels), value)
        for name, bounds, labels, counts, total in self.metrics.histograms():
            fam = families.get(("h", name))
            if fam is None:
                fam = HistogramMetricFamily(f"lora_gateway_{name}", self.metrics.help_text(name), labels=[k for k, _ in labels])
                families[("h", name)] = fam
            cumulative, running = [], 0
            for bound, count in zip([*map(_le, bounds), "+Inf"], counts):
                running += count
                cumulative.append((bound, running))
            fam.add_metric([v for _, v in labels], cumulative, total)
        yield from families.values()


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it (``0.005``, ``1.0``)."""
    return repr(float(bound))


class MetricsServer:
    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def shutdown(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(2)


def serve_metrics(listen: str, metrics: Metrics, health: Callable[[], dict[str, Any]],
                  page: "StatusPage | None" = None) -> MetricsServer:
    """Start the endpoint on ``host:port`` (port 0 picks a free one) in a daemon thread.
    OSError when the address cannot be bound."""
    host, _, port = listen.rpartition(":")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(metrics))  # type: ignore[arg-type]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            if self.path.startswith("/metrics"):
                body, status, ctype = generate_latest(registry), 200, "text/plain; version=0.0.4"
            elif self.path.startswith("/health"):
                state = health()
                body, status, ctype = json.dumps(state).encode(), 200 if state.get("ready") else 503, "application/json"
            elif page is not None:
                self._page("GET", b"")
                return
            else:
                body, status, ctype = b"not found\n", 404, "text/plain"
            self._send(status, ctype, body, {})

        def do_POST(self) -> None:  # noqa: N802 - http.server naming
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if page is None or length < 0 or length > MAX_POST_BYTES:
                self._send(404 if page is None else 413, "text/plain", b"refused\n", {})
                return
            self._page("POST", self.rfile.read(length))

        def _page(self, method: str, body: bytes) -> None:
            assert page is not None
            try:
                r = page.handle(method, self.path, dict(self.headers.items()), body)
            except Exception as exc:  # noqa: BLE001 - a page bug must not take the metrics endpoint down
                log.exception("status page failed on %s %s", method, self.path)
                self._send(500, "text/plain", f"status page error: {type(exc).__name__}\n".encode(), {})
                return
            self._send(r.status, r.content_type, r.body, r.headers)

        def _send(self, status: int, ctype: str, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet access log
            return

    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return MetricsServer(server, thread)
