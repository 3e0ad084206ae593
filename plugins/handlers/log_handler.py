"""``log`` alert handler: one log line per alert (journald picks it up under systemd).

Never fails to deliver: logging has no receiver to be down. Useful as a second handler
beside a network one, so an operator sees alerts in ``journalctl`` even while the broker
or webhook is unreachable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.contracts import PluginContext
from gateway.hookspecs import hookimpl
from gateway.types import Alert, Reading

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class LogHandlerOptions(BaseModel):
    """Options of the ``log`` handler."""

    model_config = ConfigDict(extra="forbid")
    logger: str = Field("lora_gateway.alerts", description="Logger name the alert lines are written to.")
    level: Literal["debug", "info", "warning", "error"] = Field(
        "warning", description="Level of raise lines for warning/critical alerts; clears and info "
        "alerts are logged at info.")


class LogHandler:
    """Writes ``ALERT <state> <kind> device=... severity=... key=...`` lines."""

    def __init__(self, name: str, options: LogHandlerOptions) -> None:
        self.name = name
        self.options = options
        self.log = logging.getLogger(options.logger)

    def start(self) -> None:
        return None

    def deliver(self, alert: Alert) -> None:
        """Log one line; never raises (logging errors are handled by the logging module)."""
        level = _LEVELS[self.options.level] if alert.state == "raised" and alert.severity != "info" else logging.INFO
        score = "" if alert.score is None else f" score={alert.score:.4g}"
        self.log.log(level, "ALERT %s %s device=%s severity=%s%s key=%s%s: %s", alert.state, alert.kind,
                     alert.device_id, alert.severity, score, alert.key, " replay" if alert.replay else "",
                     alert.message)

    def on_reading(self, reading: Reading) -> None:
        return None

    def stop(self) -> None:
        return None


def make_log_handler(name: str, options: LogHandlerOptions, context: PluginContext) -> LogHandler:
    return LogHandler(name, options)


@hookimpl
def lora_gateway_register_alert_handlers(register: Callable[..., None]) -> None:
    register("log", make_log_handler, LogHandlerOptions)
