"""The daemon: builds every part from a validated config, runs it, and shuts it down cleanly.

Start order: state dir and pid file -> model (warm-up included) -> alert handlers -> outbox
(one delivery row per handler, so it needs their names) -> dispatcher -> telemetry fan-out,
reading recorder (``[record]``), alert-window keeper (``[feedback]``) -> pipeline -> sources ->
metrics endpoint -> command topic -> READY=1. A failed start still runs ``stop()``. Stop order is
the reverse: sources first (no new input), the pipeline drains its queue and flushes the last
batch, the recorder writes what it holds, the dispatcher delivers for up to ``drain_timeout_s``,
then handlers stop. Each part's cleanup runs even when another's fails.

SIGTERM/SIGINT stop the daemon; SIGHUP reloads the model (the store's active version) and
keeps the old one serving if the new one fails to load or to run its warm-up batch. With
``[commands]`` enabled, ``<prefix>/command/model/activate`` on MQTT does the same for a named
store version (``gateway.control.command_topic``), moving the store's active pointer only after the
new model has loaded and warmed up; every command gets a reply on ``.../model/result``.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pluggy

from gateway import sdnotify
from gateway.alerts.alert_windows import AlertWindowKeeper, new_alert_windows
from gateway.alerts.dispatcher import Dispatcher
from gateway.alerts.outbox import Outbox
from gateway.alerts.policy import AlertPolicy
from gateway.alerts.telemetry import TelemetryFanout
from gateway.config import GatewayConfig
from gateway.contracts import (
    AlertHandler,
    PartitionedSource,
    PluginContext,
    ReadingObserver,
    ReconnectNotifier,
    ScoreObserver,
    Source,
)
from gateway.control.command_topic import ModelCommandListener
from gateway.ingest.decoding import UplinkDecoder
from gateway.ingest.profiles import ProfileSet
from gateway.ingest.quarantine import Quarantine
from gateway.metrics import DASHBOARD_COUNTERS, Metrics
from gateway.pipeline.batching import BatchTableError, resolve_batching
from gateway.pipeline.handoff import PipelineHandoff
from gateway.pipeline.inference import InferenceEngine
from gateway.pipeline.loop import CallbackObserver, Pipeline, PipelineSettings
from gateway.pipeline.windows import WindowStore
from gateway.plugin_manager import Registry
from gateway.recording.config import recording_dir
from gateway.recording.recorder import ReadingRecorder
from gateway.serving import load_model, resolve_model_dir
from gateway.state.codec import DeviceStateCodec
from gateway.status.wiring import new_page, new_tracker
from gateway.types import Alert, Reading
from models.runtime import ModelLoadError, ModelRuntime

log = logging.getLogger(__name__)

SIGNAL_POLL_S = 0.2  # the main thread wakes this often so signal handlers run promptly


class StartupError(Exception):
    """The gateway could not start; the message says which part and why."""


class Gateway:
    def __init__(self, config: GatewayConfig, plugin_manager: pluggy.PluginManager, registry: Registry,
                 metrics: Metrics | None = None, on_reading: Callable[[Reading], None] | None = None,
                 on_alert: Callable[[Alert], None] | None = None) -> None:
        self.config = config
        self.pm = plugin_manager
        self.registry = registry
        self.metrics = metrics or Metrics()
        self.on_reading = on_reading
        self.on_alert = on_alert
        self.sources: list[Source] = []
        self.handlers: list[AlertHandler] = []
        self.runtime: ModelRuntime | None = None
        self.outbox: Outbox | None = None
        self.dispatcher: Dispatcher | None = None
        self.pipeline: Pipeline | None = None
        self.telemetry: TelemetryFanout | None = None
        self.recorder: ReadingRecorder | None = None
        self.metrics_server: Any = None
        self.status: Any = None  # gateway.status.tracker.StatusTracker when the page is served
        self.serving_dir: str | None = None
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._last_watchdog = 0.0
        self._watchdog_every = sdnotify.watchdog_interval_s()
        self._model_labels: dict[str, str] | None = None
        self._switch_lock = threading.Lock()  # one model switch at a time (SIGHUP, command topic)
        self.commands: ModelCommandListener | None = None
        self.durability: Any = None  # gateway.state.durability.Durability with [state] durable_ingest
        self.alert_windows: AlertWindowKeeper | None = None  # readings around model alerts ([feedback])
        self.metrics.describe("model_info", "The model serving (1) and the one it replaced (0)")
        self.metrics.zero(DASHBOARD_COUNTERS)

    # ---- model ------------------------------------------------------------------------
    def load_runtime(self, model_dir: Path) -> ModelRuntime:
        runtime = load_model(self.config, model_dir)
        log.info("model %s serving on %s", model_dir, ", ".join(runtime.providers_in_use))
        return runtime  # skipped providers: ModelRuntime.load logged them in one line

    def reload_model(self) -> bool:
        """Load the current model; swap it in only if it loads and warms up. True on swap."""
        return self.switch_model(resolve_model_dir(self.config)) is None

    def switch_model(self, model_dir: Path, commit: Callable[[], None] | None = None) -> str | None:
        """Load ``model_dir`` (warm-up included) and swap it in between two batches.

        ``commit`` runs after a good load and before the swap (the command topic's store
        activation); a ModelLoadError from the load or from ``commit`` keeps the previous
        model serving, is counted (``model_reload_failures_total``) and its one-line reason
        returned. None on a swap. One switch at a time.
        """
        with self._switch_lock:
            log.info("model reload requested: loading %s", model_dir)
            runtime: ModelRuntime | None = None
            try:
                runtime = self.load_runtime(model_dir)
                if commit is not None:
                    commit()
            except ModelLoadError as exc:
                if runtime is not None:
                    runtime.close()
                self.metrics.inc("model_reload_failures_total")
                log.error("model reload failed, the previous model keeps serving: %s", exc)
                return str(exc)
            assert self.pipeline is not None
            self.pipeline.engine.swap_runtime(runtime)
            # thresholds left unset in [alerts] follow the new model's manifest
            self.pipeline.policy.config = self.config.alerts.resolved(runtime.manifest)
            self.runtime = runtime
            self._publish_model_info(runtime, model_dir)
            self.metrics.inc("model_reloads_total")
            log.info("model reloaded from %s", model_dir)
            return None

    def serving_ref(self) -> str | None:
        """``name@version`` of the model serving now (None before the first load)."""
        runtime = self.runtime
        if runtime is None:
            return None
        return f"{runtime.manifest.get('name', '?')}@{runtime.manifest.get('version', '?')}"

    def _publish_model_info(self, runtime: ModelRuntime, model_dir: Path) -> None:
        """``model_info{model,version,path}`` is 1 for the model serving now, 0 for the one before."""
        labels = {"model": str(runtime.manifest.get("name", "?")), "version": str(runtime.manifest.get("version", "?")),
                  "path": str(model_dir)}
        if self._model_labels is not None and self._model_labels != labels:
            self.metrics.set("model_info", 0, **self._model_labels)
        self.metrics.set("model_info", 1, **labels)
        self._model_labels = labels
        self.serving_dir = str(model_dir)

    # ---- alerts -----------------------------------------------------------------------
    def publish_alerts(self, alerts: list[Alert]) -> None:
        assert self.outbox is not None and self.dispatcher is not None
        for alert in alerts:
            self.outbox.append(alert)
            if self.status is not None:
                self.status.on_alert(alert)
            if self.alert_windows is not None:
                self.alert_windows.on_alert(alert)
            if self.on_alert is not None:
                self.on_alert(alert)
        self.dispatcher.wake()

    # ---- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.config
        state_dir = cfg.gateway.state_dir
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            (state_dir / "lora-gateway.pid").write_text(str(os.getpid()))
        except OSError as exc:
            raise StartupError(f"state directory {state_dir} is not usable: {exc}") from exc
        try:
            self.runtime = self.load_runtime(resolve_model_dir(cfg))
        except ModelLoadError as exc:
            raise StartupError(f"model: {exc}") from exc
        self._publish_model_info(self.runtime, resolve_model_dir(cfg))
        context = PluginContext(metrics=self.metrics, gateway_id=cfg.gateway.id, state_dir=str(state_dir))
        for kind, name, options in cfg.handler_options:
            handler = self.registry.handlers[kind][0](name, options, context)
            handler.start()
            self.handlers.append(handler)
        outbox_path = cfg.outbox.path or state_dir / "outbox.sqlite"
        self.outbox = Outbox(outbox_path, [h.name for h in self.handlers], cfg.outbox.max_bytes, self.metrics)
        self.dispatcher = Dispatcher(self.outbox, self.handlers, self.metrics, replay_rate_per_s=cfg.outbox.replay_rate_per_s)
        self.dispatcher.start()
        self._wire_reconnect_retries(self.dispatcher)
        self.telemetry = TelemetryFanout(self.handlers, self.metrics, outbox=self.outbox)
        self.telemetry.start()
        if cfg.record.enabled:
            self.recorder = ReadingRecorder(cfg.record, recording_dir(cfg.record, state_dir), self.metrics)
            try:
                self.recorder.start()
            except OSError as exc:
                raise StartupError(f"record: directory {self.recorder.directory} is not usable: {exc}") from exc
        try:
            batching = resolve_batching(cfg.batcher.max_batch, cfg.batcher.max_delay_ms, self.runtime.providers_in_use[0])
        except BatchTableError as exc:
            raise StartupError(f"batcher: {exc}") from exc
        log.info("batcher: max_batch %d, deadline %.2f ms for %s (%s)", batching.max_batch, batching.max_delay_ms,
                 batching.provider, batching.source)
        engine = InferenceEngine(self.runtime, self.metrics, calibration_steps=cfg.model.calibration_steps,
                                 calibration_windows=cfg.model.calibration_windows)
        observers: list[ReadingObserver | ScoreObserver] = [self.telemetry]
        if self.recorder is not None:
            observers.append(self.recorder)
        if self.on_reading is not None:
            observers.append(CallbackObserver(self.on_reading))
        self.status = new_tracker(self)
        if self.status is not None:
            observers.append(self.status)
        self.alert_windows = new_alert_windows(self, observers)  # started; appended to observers when on
        self.pipeline = Pipeline(
            decoder=UplinkDecoder(self.pm, ProfileSet(cfg.profiles),
                                  Quarantine(state_dir / "quarantine.jsonl", self.metrics)),
            engine=engine,
            windows=WindowStore(self.runtime.window_length, cfg.gateway.max_devices, self.metrics),
            policy=AlertPolicy(cfg.alerts.resolved(self.runtime.manifest), self.metrics),
            publish_alerts=self.publish_alerts,
            metrics=self.metrics,
            observers=observers,
            settings=PipelineSettings(max_batch=batching.max_batch,
                                      max_delay_s=batching.max_delay_ms / 1000.0,
                                      queue_size=cfg.gateway.ingest_queue_size,
                                      block_s=cfg.gateway.ingest_block_s),
        )
        self.pipeline.add_periodic(self._watchdog)
        if cfg.state.durable_ingest:
            from gateway.state.durability import Durability

            self.durability = Durability(state_dir, cfg.state, self.pipeline, self.metrics,
                                         barriers=[self.telemetry.flush])
            self.durability.restore()
        self.pipeline.start()
        if self.durability is not None:
            self.durability.replay()
        for kind, name, options in cfg.source_options:
            source = self.registry.sources[kind][0](name, options, context)
            if isinstance(source, PartitionedSource):
                source.bind_pipeline(PipelineHandoff(self.pipeline, self.metrics, codec=self.state_codec(),
                                                     recorder=self.recorder))
            source.start(self.pipeline.ingest if self.durability is None else self.durability.emitter(source, name))
            self.sources.append(source)
        if cfg.metrics.listen:
            from gateway.metrics_http import serve_metrics

            try:
                page = new_page(self, self.status) if self.status is not None else None
            except ValueError as exc:
                raise StartupError(f"status: {exc}") from exc
            try:
                self.metrics_server = serve_metrics(cfg.metrics.listen, self.metrics, self.health, page)
            except OSError as exc:
                raise StartupError(f"metrics: cannot listen on {cfg.metrics.listen}: {exc.strerror or exc}") from exc
        if cfg.commands.enabled:
            self.commands = ModelCommandListener(cfg.commands, cfg.gateway.id, self, self.metrics)
            self.commands.start()
        self._wait_sources_up(cfg.gateway.sources_ready_timeout_s, cfg.gateway.allow_degraded_start)
        self.ready.set()
        sdnotify.notify("READY=1")
        log.info("gateway %s ready: %d source(s), %d handler(s)", cfg.gateway.id, len(self.sources), len(self.handlers))

    def _wire_reconnect_retries(self, dispatcher: Dispatcher) -> None:
        """Handlers that report reconnects (``ReconnectNotifier``, the MQTT-based ones) end
        their back-off when the connection comes back, so a backlog goes out at once."""
        for handler in self.handlers:
            if isinstance(handler, ReconnectNotifier):
                handler.add_reconnect_callback(functools.partial(dispatcher.retry_now, handler.name))

    def _wait_sources_up(self, timeout: float, allow_degraded: bool) -> None:
        """Wait up to ``timeout`` for every source; then a StartupError (systemd restarts
        the service), or with ``allow_degraded`` a warning (they keep retrying)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(s.connected() for s in self.sources):
            time.sleep(0.05)
        down = [s.name for s in self.sources if not s.connected()]
        if down and not allow_degraded:
            raise StartupError(f"source(s) {', '.join(down)} not connected within {timeout:g} s "
                               "(set [gateway] allow_degraded_start = true to start without them)")
        for name in down:
            log.warning("source %s not connected yet; it keeps retrying (allow_degraded_start)", name)

    def health(self) -> dict[str, Any]:
        """Readiness: the model serves and every source is connected."""
        sources = {s.name: s.connected() for s in self.sources}
        serving = self.runtime is not None and self.pipeline is not None
        out = {"ready": bool(self.ready.is_set() and serving and all(sources.values())),
               "model_serving": serving, "sources": sources,
               "providers": self.runtime.providers_in_use if self.runtime else []}
        cluster = {s.name: s.health_details() for s in self.sources if isinstance(s, PartitionedSource)}
        if cluster:
            out["cluster"] = cluster
        return out

    def state_codec(self) -> DeviceStateCodec:
        """The device-state codec over the pipeline's windows, engine and policy (the
        durable ingest's, when it is on)."""
        if self.durability is not None:
            return self.durability.codec
        assert self.pipeline is not None
        return DeviceStateCodec(self.pipeline.windows, self.pipeline.engine, self.pipeline.policy)

    def _watchdog(self) -> None:
        self.metrics.set("pipeline_heartbeat_timestamp", time.time())
        if self._watchdog_every and time.monotonic() - self._last_watchdog >= self._watchdog_every:
            self._last_watchdog = time.monotonic()
            sdnotify.notify("WATCHDOG=1")
        if self._reload.is_set():
            self._reload.clear()
            threading.Thread(target=self.reload_model, name="model-reload", daemon=True).start()

    def request_reload(self) -> None:
        self._reload.set()

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        sdnotify.notify("STOPPING=1")
        steps: list[tuple[str, Callable[[], None]]] = []
        if self.commands is not None:
            steps.append(("model commands", self.commands.stop))
        steps += [(f"source {s.name}", s.stop) for s in self.sources]
        durability = self.durability
        if durability is not None:
            steps.append(("ingest log", durability.stop_intake))
        pipeline_done = [False]
        if self.pipeline is not None:
            pipeline = self.pipeline
            steps.append(("pipeline", lambda: pipeline_done.__setitem__(0, pipeline.stop())))
        if self.telemetry is not None:
            steps.append(("telemetry", self.telemetry.stop))
        if self.alert_windows is not None:
            steps.append(("alert windows", self.alert_windows.stop))
        if durability is not None:
            steps.append(("checkpoint", lambda: durability.close(pipeline_done[0])))
        if self.recorder is not None:
            steps.append(("recorder", self.recorder.stop))
        if self.dispatcher is not None:
            dispatcher = self.dispatcher
            steps.append(("dispatcher", lambda: dispatcher.stop(self.config.gateway.drain_timeout_s)))
        steps += [(f"handler {h.name}", h.stop) for h in self.handlers]
        if self.outbox is not None:
            steps.append(("outbox", self.outbox.close))
        if self.metrics_server is not None:
            steps.append(("metrics endpoint", self.metrics_server.shutdown))
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - every part's cleanup runs
                log.error("stopping %s failed: %s", what, exc)
        try:
            (self.config.gateway.state_dir / "lora-gateway.pid").unlink(missing_ok=True)
        except OSError:
            pass
        log.info("gateway stopped")

    def run(self, duration: float | None = None, install_signals: bool = True) -> None:
        """Start, serve until a signal (or ``duration`` seconds), then stop."""
        if install_signals:
            signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
            signal.signal(signal.SIGINT, lambda *_: self.request_stop())
            signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
        try:
            self.start()  # a failed start still runs stop(): threads end, the pid file goes
            self._serve_until_stopped(duration)
        finally:
            self.stop()

    def _serve_until_stopped(self, duration: float | None) -> None:
        """Wait for a stop request (or ``duration``) in short slices.

        The kernel may deliver SIGTERM/SIGHUP to any thread; CPython runs the Python handler
        only when the main thread next executes bytecode. A main thread parked in one endless
        ``Event.wait()`` never would (seen in tests: SIGHUP ignored); waking every 0.2 s bounds that.
        """
        deadline = None if duration is None else time.monotonic() + duration
        while not self._stop.is_set():
            left = SIGNAL_POLL_S if deadline is None else min(SIGNAL_POLL_S, deadline - time.monotonic())
            if left <= 0:
                return
            self._stop.wait(left)
