"""Model activation over an MQTT command topic (``[commands]``, off by default).

Topics under ``topic_prefix`` (default ``lora-gateway/<gateway_id>``):

- ``<prefix>/command/model/activate``: a JSON object
  ``{"model": "NAME@VERSION", "request_id": "..."}`` (``request_id`` optional, a string of
  at most 128 characters or an integer; no other keys).
- ``<prefix>/command/model/result``: one JSON reply per command, QoS ``qos``, not retained:
  ``{"command": "activate", "request_id", "model", "ok", "changed", "serving", "reason",
  "error"}``. ``serving`` is the ``name@version`` the daemon serves after the command;
  ``reason`` is a short code (``activated``, ``already_serving``, or why it failed).

What an activation does: the store must hold ``NAME@VERSION`` as a base or merged model;
the daemon loads it with its own providers and adapters and runs the warm-up batch
(``Gateway.switch_model``, the SIGHUP reload path); only then the store activates it
(``ModelStore.activate``: hashes, graph and warm-up checked again, atomic symlink swap) and
the new model is swapped in between two batches, so no reading is dropped. If the load,
the warm-up or the store refuses, nothing changes: the old model keeps serving, the store's
active model stays what it was, and the reply carries the reason.

Rejected before anything runs, each counted in ``model_command_rejects_total{reason}`` and
answered (with the ``request_id`` when one could be read): ``too_large`` (over 4 KiB),
``retained`` (a retained message would re-run on every reconnect; seen on live delivery
too with MQTT v5, which subscribes with retain-as-published), ``not_json``,
``not_object``, ``unknown_key``, ``bad_model`` (not ``NAME@VERSION``), ``bad_request_id``,
``busy`` (``max_pending`` commands already waiting).

The same listener takes operators' verdicts on alerts (``<prefix>/command/alert/feedback``,
replies on ``<prefix>/command/alert/result``; ``gateway.control.feedback_command``); they
queue and run on the same worker, behind any activation.

Authorisation: the listener exists only with ``[commands] enabled = true``; anyone who
may publish on the command topic may switch models (and mark alerts), so restrict that topic with the
broker's ACL (e.g. Mosquitto ``acl_file``) and use TLS and credentials as for the other
MQTT connections. Commands run one at a time on a worker thread; paho's thread only
parses and queues.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from paho.mqtt import client as mqtt
from pydantic import ConfigDict, Field

from gateway.broker.connection import MqttConnection
from gateway.broker.options import BrokerOptions
from gateway.control.feedback_command import (
    FEEDBACK_LEAF,
    FEEDBACK_RESULT_LEAF,
    FeedbackCommand,
    FeedbackRejected,
    parse_feedback,
    rejection_reply,
    store_feedback,
)
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 4096
ACTIVATE_LEAF = "command/model/activate"
RESULT_LEAF = "command/model/result"
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}@[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_TOPIC_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")


class CommandsSection(BrokerOptions):
    """``[commands]``: the MQTT command topic that activates installed models."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(False, description="Listen for model activation commands on <topic_prefix>/command/model/activate (replies on <topic_prefix>/command/model/result) and for operators' alert verdicts on <topic_prefix>/command/alert/feedback (replies on <topic_prefix>/command/alert/result). Off by default: anyone who may publish there may switch models, so restrict the topics with the broker's ACL.")
    topic_prefix: str | None = Field(None, description="Topic prefix of the command and result topics; default lora-gateway/<gateway_id>.")
    qos: Literal[1, 2] = Field(1, description="QoS of the command subscription and of the replies.")
    max_pending: int = Field(4, ge=1, le=64, description="Commands waiting to run (they run one at a time); more are rejected (reason busy) and answered.")


class CommandRejected(ValueError):
    """A command that cannot run; ``reason`` is its counted reason code."""

    def __init__(self, reason: str, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.request_id = request_id


@dataclass(frozen=True)
class ActivateCommand:
    """A validated ``activate`` command."""

    model: str  # NAME@VERSION
    request_id: str | None = None


@dataclass(frozen=True)
class CommandResult:
    """What an activation did; ``serving`` is the model serving afterwards (``name@version``)."""

    ok: bool
    reason: str
    serving: str | None
    changed: bool = False
    error: str | None = None


def parse_activate(payload: bytes, retained: bool = False) -> ActivateCommand:
    """Validate an activate command's payload; raises CommandRejected with a reason code."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise CommandRejected("too_large", f"command of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandRejected("not_json", f"command is not UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CommandRejected("not_object", "command must be a JSON object {\"model\": \"NAME@VERSION\"}")
    request_id = data.get("request_id")
    if request_id is not None:
        if isinstance(request_id, bool) or not isinstance(request_id, (str, int)) or len(str(request_id)) > 128:
            raise CommandRejected("bad_request_id", "request_id must be a string of at most 128 characters "
                                  "or an integer")
        request_id = str(request_id)
    if retained:
        raise CommandRejected("retained", "retained commands are refused (they would run again on every "
                              "reconnect); publish with retain=false", request_id)
    unknown = sorted(set(data) - {"model", "request_id"})
    if unknown:
        raise CommandRejected("unknown_key", f"unknown key(s) {unknown}; expected model and request_id",
                              request_id)
    model = data.get("model")
    if not isinstance(model, str) or not _REF.match(model):
        raise CommandRejected("bad_model", f"model must be \"NAME@VERSION\" (letters, digits, . _ + -), got "
                              f"{str(model)[:80]!r}", request_id)
    return ActivateCommand(model=model, request_id=request_id)


class ModelHost(Protocol):
    """What the command needs from the daemon (``gateway.service.Gateway``)."""

    config: Any

    def switch_model(self, model_dir: Path, commit: Callable[[], None] | None = None) -> str | None: ...

    def serving_ref(self) -> str | None: ...


def activate(host: ModelHost, ref: str) -> CommandResult:
    """Activate the installed ``ref`` and serve it; see the module docstring. Never raises
    for a refused activation: the result says why."""
    from models.runtime import ModelLoadError
    from models.store import ACTIVATABLE, ModelStore, StoreError

    before = host.serving_ref()
    if host.config.model.path is not None:
        return CommandResult(False, "model_path_pinned", before, error="[model] path is set in the config: the "
                             "daemon serves that directory, not the store's active model")
    store = ModelStore.for_state_dir(host.config.gateway.state_dir)
    try:
        model = store.get(ref)
    except StoreError as exc:
        return CommandResult(False, "not_installed", before, error=str(exc))
    if model.kind not in ACTIVATABLE:
        return CommandResult(False, "not_activatable", before, error=f"{ref} is an {model.kind}: adapters are "
                             "served on their base through [model] adapters")
    if before == ref and model.active:
        return CommandResult(True, "already_serving", before)

    def commit() -> None:
        try:
            store.activate(model.name, model.version)
        except StoreError as exc:
            raise ModelLoadError(f"the store refused to activate {ref}: {exc}") from exc

    error = host.switch_model(model.path, commit=commit)
    if error is not None:
        return CommandResult(False, "load_failed", host.serving_ref(), error=error)
    return CommandResult(True, "activated", host.serving_ref(), changed=True)


def _topic_part(text: str) -> str:
    return _TOPIC_UNSAFE.sub("_", text) or "_"


class ModelCommandListener:
    """Subscribes to the activate topic, runs commands one at a time, publishes each result."""

    def __init__(self, options: CommandsSection, gateway_id: str, host: ModelHost, metrics: Metrics) -> None:
        self.options = options
        self.host = host
        self.metrics = metrics
        prefix = (options.topic_prefix or f"lora-gateway/{_topic_part(gateway_id)}").rstrip("/")
        self.command_topic = f"{prefix}/{ACTIVATE_LEAF}"
        self.result_topic = f"{prefix}/{RESULT_LEAF}"
        self.feedback_topic = f"{prefix}/{FEEDBACK_LEAF}"
        self.feedback_result_topic = f"{prefix}/{FEEDBACK_RESULT_LEAF}"
        self.client_id = options.client_id or f"{_topic_part(gateway_id)}-commands"
        self._queue: queue.Queue[ActivateCommand | FeedbackCommand | None] = queue.Queue(maxsize=options.max_pending)
        self._conn: MqttConnection | None = None
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()
        metrics.describe("model_commands_total", "Model commands run, by result (ok/error) and reason")
        metrics.describe("model_command_rejects_total", "Model commands refused before running, by reason")
        metrics.describe("model_command_reply_failures_total", "Command results that could not be published")
        metrics.describe("alert_feedback_total", "Operators' alert verdicts taken over the command topic, by result and label")
        metrics.describe("alert_feedback_rejects_total", "Alert verdicts refused before storing, by reason")

    def start(self) -> None:
        """Connect in the background and start the worker; returns at once."""
        conn = MqttConnection("commands", self.options, self.client_id, None, self.metrics,
                              metric_label="role", max_queued=100)
        # re-subscribed on every connect; with MQTT v5 the broker keeps the retain flag on live
        # deliveries too (retainAsPublished), so a retained command is refused at once
        conn.subscribe_on_connect(self.command_topic, self.options.qos, retain_as_published=True)
        conn.subscribe_on_connect(self.feedback_topic, self.options.qos, retain_as_published=True)
        conn.on_connect_hooks.append(lambda: self.metrics.set("model_commands_connected", 1))
        conn.on_disconnect_hooks.append(lambda: self.metrics.set("model_commands_connected", 0))
        conn.on_message_hooks.append(self._on_message)
        self._worker = threading.Thread(target=self._work, name="model-commands", daemon=True)
        self._worker.start()
        conn.start()
        self._conn = conn
        log.info("model commands: listening on %s (results on %s)", self.command_topic, self.result_topic)

    def connected(self) -> bool:
        return self._conn is not None and self._conn.connected()

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the command running (if any; its result is still published), drop and count
        queued ones (reason ``stopping``), disconnect. Idempotent."""
        self._stopping.set()
        worker, self._worker = self._worker, None
        if worker is not None:
            while True:
                try:
                    dropped = self._queue.get_nowait()
                    if isinstance(dropped, ActivateCommand):
                        self.metrics.inc("model_command_rejects_total", reason="stopping")
                    elif dropped is not None:
                        self.metrics.inc("alert_feedback_rejects_total", reason="stopping")
                except queue.Empty:
                    break
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                pass
            worker.join(timeout)
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.stop()
        self.metrics.set("model_commands_connected", 0)

    # ---- paho's thread: parse and queue only ----------------------------------------------
    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        if message.topic == self.feedback_topic:
            self._on_feedback(message)
            return
        try:
            command = parse_activate(bytes(message.payload), retained=bool(message.retain))
        except CommandRejected as exc:
            self._reject(exc.reason, str(exc), exc.request_id, None)
            return
        if self._stopping.is_set():
            self._reject("stopping", "the daemon is stopping", command.request_id, command.model)
            return
        try:
            self._queue.put_nowait(command)
        except queue.Full:
            self._reject("busy", f"{self.options.max_pending} commands are already waiting; try again later",
                         command.request_id, command.model)

    def _on_feedback(self, message: mqtt.MQTTMessage) -> None:
        try:
            command = parse_feedback(bytes(message.payload), retained=bool(message.retain))
            if self._stopping.is_set():
                raise FeedbackRejected("stopping", "the daemon is stopping")
            try:
                self._queue.put_nowait(command)
            except queue.Full:
                raise FeedbackRejected("busy", f"{self.options.max_pending} commands are already waiting; try "
                                       "again later", command.request_id, command.key) from None
        except FeedbackRejected as exc:
            self.metrics.inc("alert_feedback_rejects_total", reason=exc.reason)
            log.warning("alert feedback rejected (%s): %s", exc.reason, exc)
            self._reply(rejection_reply(exc), wait=False, topic=self.feedback_result_topic)

    def _reject(self, reason: str, error: str, request_id: str | None, model: str | None) -> None:
        self.metrics.inc("model_command_rejects_total", reason=reason)
        log.warning("model command rejected (%s): %s", reason, error)
        self._reply({"command": "activate", "request_id": request_id, "model": model, "ok": False,
                     "changed": False, "serving": self.host.serving_ref(), "reason": reason, "error": error},
                    wait=False)

    # ---- worker thread ----------------------------------------------------------------------
    def _work(self) -> None:
        while (command := self._queue.get()) is not None:
            if isinstance(command, FeedbackCommand):
                reply = store_feedback(self.host.config.gateway.state_dir, command, self.metrics)
                log.info("alert %s marked %s over the command topic (%s, %d readings)", command.key, command.label,
                         reply["reason"], reply["window_rows"])
                self._reply(reply, wait=True, topic=self.feedback_result_topic)
                continue
            try:
                result = activate(self.host, command.model)
            except Exception as exc:  # noqa: BLE001 - reported in the reply and the log; the worker goes on
                log.exception("model command %s failed", command.model)
                result = CommandResult(False, "internal_error", self.host.serving_ref(),
                                       error=f"{type(exc).__name__}: {exc}")
            self.metrics.inc("model_commands_total", result="ok" if result.ok else "error", reason=result.reason)
            (log.info if result.ok else log.error)(
                "model command activate %s: %s%s; serving %s", command.model, result.reason,
                f" ({result.error})" if result.error else "", result.serving)
            self._reply({"command": "activate", "request_id": command.request_id, "model": command.model,
                         "ok": result.ok, "changed": result.changed, "serving": result.serving,
                         "reason": result.reason, "error": result.error}, wait=True)

    def _reply(self, body: dict[str, Any], wait: bool, topic: str | None = None) -> None:
        """Publish a result; on paho's thread (``wait`` False) it is only handed over."""
        conn = self._conn
        info = None if conn is None else conn.publish_handle(
            topic or self.result_topic, json.dumps(body, separators=(",", ":")), qos=self.options.qos)
        if info is None:
            self.metrics.inc("model_command_reply_failures_total")
            return
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.metrics.inc("model_command_reply_failures_total")
            log.warning("model commands: result not published (%s)", mqtt.error_string(info.rc))
            return
        if wait:
            try:
                info.wait_for_publish(10.0)
            except (RuntimeError, ValueError) as exc:
                self.metrics.inc("model_command_reply_failures_total")
                log.warning("model commands: result not acknowledged: %s", exc)
