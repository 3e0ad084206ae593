"""The HTTP endpoint: ``/metrics`` (Prometheus text format) and ``/health`` (JSON readiness).

prometheus-client renders the exposition format from a custom collector that reads the
gateway's own Metrics registry, so the pipeline never touches prometheus-client objects on
its hot path. ``/health`` answers 200 when ready (model serving, all sources connected),
503 otherwise. Bound to 127.0.0.1 by default (config ``metrics.listen``).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gateway.metrics import Metrics


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Any] = {}
        for name, labels, value in self.metrics.counters():
            base = name[:-6] if name.endswith("_total") else name
            fam = families.get(("c", base))
            if fam is None:
                fam = CounterMetricFamily(f"lora_gateway_{base}", self.metrics.help_text(name), labels=[k for k, _ in labels])
                families[("c", base)] = fam
            fam.add_metric([v for _, v in labels], value)
        for name, labels, value in self.metrics.gauges():
            fam = families.get(("g", name))
            if fam is None:
                fam = GaugeMetricFamily(f"lora_gateway_{name}", self.metrics.help_text(name), labels=[k for k, _ in labels])
                families[("g", name)] = fam
            fam.add_metric([v for _, v in labels], value)
        yield from families.values()


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


def serve_metrics(listen: str, metrics: Metrics, health: Callable[[], dict[str, Any]]) -> MetricsServer:
    """Start the endpoint on ``host:port`` (port 0 picks a free one) in a daemon thread."""
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
            else:
                body, status, ctype = b"not found\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet access log
            return

    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return MetricsServer(server, thread)
