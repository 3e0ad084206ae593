"""``webhook`` alert handler: HTTP POST of one JSON alert per request (stdlib urllib).

Request: ``POST <url>``, ``Content-Type: application/json``, body = ``alert.as_dict()`` plus
``gateway_id``; headers ``Idempotency-Key: <alert.key>`` (the same on every retry of the same
event, so receivers drop duplicates) and, when a secret is configured,
``X-Signature-256: sha256=<hex HMAC-SHA256 of the exact body bytes>``. The secret comes
from ``secret_env`` or ``secret_file``, never from the config file, and is never logged.

Outcomes (the dispatcher and outbox do the retrying, with exponential back-off):

- 2xx: delivered.
- 408, 429, 5xx, timeout, connection error: ``DeliveryError``, retried later.
- any other 4xx (400, 401, 403, 404, 413, ...) and 3xx: ``PermanentDeliveryError``: the
  receiver refuses this request and retrying the same bytes cannot change that, so the
  delivery is dropped, counted (``delivery_failures_total{reason=permanent}``) and logged
  instead of blocking the handler's queue forever. Redirects are not followed: configure
  the final URL.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.contracts import DeliveryError, PermanentDeliveryError, PluginContext
from gateway.hookspecs import hookimpl
from gateway.types import Alert, Reading

RETRYABLE_4XX = {408, 429}


class WebhookOptions(BaseModel):
    """Options of the ``webhook`` handler."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="http:// or https:// URL the alerts are POSTed to.")
    timeout_s: float = Field(10.0, gt=0, description="Seconds to wait for the connection and the response; "
                                                     "a timeout is retried with back-off.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers (no secrets: "
                                                                      "use secret_env/secret_file).")
    secret_env: str | None = Field(None, description="Environment variable holding the HMAC-SHA256 secret.")
    secret_file: Path | None = Field(None, description="File holding the HMAC-SHA256 secret (first line).")
    signature_header: str = Field("X-Signature-256", description="Header carrying 'sha256=<hex digest>'.")
    idempotency_header: str = Field("Idempotency-Key", description="Header carrying the alert's "
                                                                   "idempotency key.")
    ca_file: Path | None = Field(None, description="CA bundle for an https URL with a private CA; "
                                                   "certificates are always verified.")

    @field_validator("url")
    @classmethod
    def _http_only(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return url


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx surfaces as HTTPError


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value: ``sha256=`` + hex HMAC-SHA256 of ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookHandler:
    """POSTs alerts; see the module docstring for outcomes."""

    def __init__(self, name: str, options: WebhookOptions, gateway_id: str) -> None:
        self.name = name
        self.options = options
        self.gateway_id = gateway_id
        self._secret: bytes | None = None
        handlers: list[Any] = [_NoRedirect()]
        if options.url.startswith("https://"):
            ctx = ssl.create_default_context(cafile=str(options.ca_file) if options.ca_file else None)
            handlers.append(urllib.request.HTTPSHandler(context=ctx))
        self._opener = urllib.request.build_opener(*handlers)
        parts = urllib.parse.urlsplit(options.url)
        # Shown in errors and logs: no user info, no query string (either may hold a token).
        self.shown_url = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"

    def start(self) -> None:
        """Read the signing secret; ValueError when the configured source is missing."""
        o = self.options
        if o.secret_env:
            value = os.environ.get(o.secret_env)
            if not value:
                raise ValueError(f"environment variable {o.secret_env} (secret_env) is not set")
            self._secret = value.encode()
        elif o.secret_file:
            lines = o.secret_file.read_text(encoding="utf-8").splitlines()
            if not lines or not lines[0].strip():
                raise ValueError(f"secret_file {o.secret_file} is empty")
            self._secret = lines[0].strip().encode()

    def request_for(self, alert: Alert) -> urllib.request.Request:
        """The exact request ``deliver`` sends (body, signature, idempotency key)."""
        body = json.dumps({**alert.as_dict(), "gateway_id": self.gateway_id}, separators=(",", ":"),
                          default=str).encode()
        headers = {**self.options.headers, "Content-Type": "application/json",
                   "User-Agent": "lora-edge-gateway", self.options.idempotency_header: alert.key}
        if self._secret is not None:
            headers[self.options.signature_header] = sign(self._secret, body)
        return urllib.request.Request(self.options.url, data=body, headers=headers, method="POST")

    def deliver(self, alert: Alert) -> None:
        """POST one alert; DeliveryError (retry) or PermanentDeliveryError (drop) on failure."""
        req = self.request_for(alert)
        try:
            with self._opener.open(req, timeout=self.options.timeout_s) as resp:
                resp.read(65536)
        except urllib.error.HTTPError as exc:
            code = exc.code
            exc.close()
            if code in RETRYABLE_4XX or code >= 500:
                raise DeliveryError(f"{self.shown_url} answered HTTP {code}") from None
            raise PermanentDeliveryError(f"{self.shown_url} refused the alert: HTTP {code} "
                                         f"(not retried)") from None
        except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise DeliveryError(f"POST {self.shown_url} failed: {reason}") from exc

    def on_reading(self, reading: Reading) -> None:
        return None  # webhooks carry alerts only

    def stop(self) -> None:
        return None


def make_webhook_handler(name: str, options: WebhookOptions, context: PluginContext) -> WebhookHandler:
    return WebhookHandler(name, options, context.gateway_id)


@hookimpl
def lora_gateway_register_alert_handlers(register: Callable[..., None]) -> None:
    register("webhook", make_webhook_handler, WebhookOptions)
