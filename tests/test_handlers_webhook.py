"""webhook alert handler against a real local HTTP server."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from pydantic import ValidationError

from gateway.alerts.dispatcher import Dispatcher
from gateway.alerts.outbox import Outbox
from gateway.contracts import DeliveryError, PermanentDeliveryError, PluginContext
from gateway.metrics import Metrics
from gateway.types import Alert
from plugins.handlers.webhook_handler import WebhookHandler, WebhookOptions, make_webhook_handler

SECRET = b"hook-secret-123"


class Server:
    """Answers with the next status of ``script`` (then 200); records every request."""

    def __init__(self) -> None:
        self.script: list[int | str] = []
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                sig = self.headers.get("X-Signature-256")
                expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
                action = outer.script.pop(0) if outer.script else 200
                outer.requests.append({"body": json.loads(body), "headers": dict(self.headers),
                                       "sig_ok": sig is not None and hmac.compare_digest(sig, expected),
                                       "answer": action, "path": self.path})
                if action == "hang":
                    outer.release.wait(5)
                    return
                self.send_response(int(action))
                if action == 302:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    try:
        yield s
    finally:
        s.close()


def alert(i: int) -> Alert:
    return Alert("dev1", "battery_low", "raised", "warning", 1000.0 + i, f"m{i}", f"key{i}")


def handler(url: str, monkeypatch: pytest.MonkeyPatch, **opts: Any) -> WebhookHandler:
    monkeypatch.setenv("TEST_HOOK_SECRET", SECRET.decode())
    h = make_webhook_handler("webhook", WebhookOptions(url=url, secret_env="TEST_HOOK_SECRET", **opts),
                             PluginContext(metrics=Metrics(), gateway_id="gw1"))
    h.start()
    return h


def test_500_then_200_retried_and_delivered_once_with_same_key(
        server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server.script = [500, 503]
    h = handler(server.url, monkeypatch)
    m = Metrics()
    with Outbox(tmp_path / "o.db", ["webhook"], 1 << 20, m, base_backoff_s=0.05) as ob:
        d = Dispatcher(ob, [h], m)
        d.start()
        try:
            ob.append(alert(1))
            deadline = time.monotonic() + 10
            while ob.pending("webhook"):
                assert time.monotonic() < deadline
                time.sleep(0.01)
        finally:
            d.stop(1)
    assert [r["answer"] for r in server.requests] == [500, 503, 200]
    assert {r["headers"]["Idempotency-Key"] for r in server.requests} == {"key1"}
    assert all(r["sig_ok"] for r in server.requests)
    assert server.requests[-1]["body"]["key"] == "key1" and server.requests[-1]["body"]["gateway_id"] == "gw1"
    assert server.requests[-1]["body"]["replay"] is True and server.requests[0]["body"]["replay"] is False
    assert m.get("delivery_failures_total", handler="webhook", reason="error") == 2
    assert m.get("alerts_delivered_total", handler="webhook") == 1


def test_timeout_is_retryable(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    server.script = ["hang"]
    h = handler(server.url, monkeypatch, timeout_s=0.3)
    t0 = time.monotonic()
    with pytest.raises(DeliveryError, match="timed out"):
        h.deliver(alert(1))
    assert time.monotonic() - t0 < 3
    server.release.set()
    h.deliver(alert(1))  # the next attempt goes through


@pytest.mark.parametrize("status,permanent", [(400, True), (401, True), (404, True), (302, True),
                                              (408, False), (429, False), (502, False)])
def test_status_classification(server: Server, monkeypatch: pytest.MonkeyPatch, status: int,
                               permanent: bool) -> None:
    server.script = [status]
    h = handler(server.url, monkeypatch)
    with pytest.raises(DeliveryError, match=f"HTTP {status}") as info:
        h.deliver(alert(1))
    assert isinstance(info.value, PermanentDeliveryError) is permanent
    assert [r["path"] for r in server.requests] == ["/hook"]  # redirects not followed


def test_permanent_failure_does_not_block_the_queue(
        server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server.script = [400]
    h = handler(server.url, monkeypatch)
    m = Metrics()
    with Outbox(tmp_path / "o.db", ["webhook"], 1 << 20, m) as ob:
        d = Dispatcher(ob, [h], m)
        d.start()
        try:
            ob.append(alert(1))
            ob.append(alert(2))
            deadline = time.monotonic() + 10
            while ob.pending("webhook"):
                assert time.monotonic() < deadline
                time.sleep(0.01)
        finally:
            d.stop(1)
    assert [(r["body"]["key"], r["answer"]) for r in server.requests] == [("key1", 400), ("key2", 200)]
    assert m.get("delivery_failures_total", handler="webhook", reason="permanent") == 1


def test_connection_refused_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    h = handler(f"http://127.0.0.1:{free_port()}/x?token=abc", monkeypatch)
    with pytest.raises(DeliveryError, match="refused") as info:
        h.deliver(alert(1))
    assert not isinstance(info.value, PermanentDeliveryError)
    assert "abc" not in str(info.value)  # the query string may hold a token


def test_secret_sources(tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = PluginContext(metrics=Metrics())
    missing = WebhookHandler("w", WebhookOptions(url=server.url, secret_env="NOPE_NOT_SET_X"), "gw")
    with pytest.raises(ValueError, match="NOPE_NOT_SET_X"):
        missing.start()
    f = tmp_path / "secret"
    f.write_text(SECRET.decode() + "\n")
    h = make_webhook_handler("w", WebhookOptions(url=server.url, secret_file=f), ctx)
    h.start()
    h.deliver(alert(3))
    unsigned = make_webhook_handler("w", WebhookOptions(url=server.url), ctx)
    unsigned.start()
    unsigned.deliver(alert(4))
    assert [r["sig_ok"] for r in server.requests] == [True, False]
    assert "X-Signature-256" not in server.requests[1]["headers"]


def test_options_validated() -> None:
    with pytest.raises(ValidationError):
        WebhookOptions(url="ftp://x")
    with pytest.raises(ValidationError):
        WebhookOptions(url="http://x", retries=3)  # type: ignore[call-arg]
    assert all(f.description for f in WebhookOptions.model_fields.values())
