"""The gateway's TOML configuration: one schema, unknown keys refused, all errors at once.

``load_config(path, registry)`` parses and validates the whole file before any I/O and
raises ConfigError listing every problem as ``key.path: message``. The core sections are
pydantic models here; each ``[[sources]]`` and ``[[handlers]]`` table is validated by the
options model its plugin registered (its ``type`` picks the plugin). Secrets are never
values in the file: options name an environment variable or a file (``*_env``,
``*_file``); ``redacted()`` hides anything that looks secret before logging.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from gateway.alerts.alert_windows import FeedbackSection
from gateway.alerts.policy import AlertPolicyConfig
from gateway.control.command_topic import CommandsSection
from gateway.ingest.profiles import ProfileConfig
from gateway.plugin_manager import Registry
from gateway.recording.config import RecordConfig, record_config_errors
from gateway.status.config import StatusSection

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "base"
SECRET_KEY = re.compile(r"(password|secret|token|key_file|passphrase)", re.I)


class ConfigError(Exception):
    """The config file cannot be used; ``errors`` holds one ``path: message`` per problem."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.errors = errors
        super().__init__(f"{source}: {len(errors)} error(s)\n" + "\n".join(f"  {e}" for e in errors))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GatewaySection(Strict):
    id: str = Field("lora-gateway", description="Name of this gateway in topics, alerts and logs.")
    state_dir: Path = Field(Path("/var/lib/lora-gateway"), description="Where the outbox, model store and pid file live (systemd StateDirectory).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    ingest_queue_size: int = Field(10000, ge=10, description="Uplinks buffered between sources and the pipeline; when full a source waits up to ingest_block_s, then the uplink is dropped and counted (reason queue_full).")
    ingest_block_s: float = Field(5.0, ge=0, description="How long a source waits for room in the ingest queue before dropping.")
    max_devices: int = Field(10000, ge=1, description="Devices tracked at once; the least recently seen is evicted (counted) beyond this.")
    drain_timeout_s: float = Field(10.0, gt=0, description="On SIGTERM, how long to keep delivering pending alerts before exiting.")
    sources_ready_timeout_s: float = Field(30.0, gt=0, description="At start, how long to wait for every source to connect before READY=1; past it the start fails (systemd restarts the service) unless allow_degraded_start.")
    allow_degraded_start: bool = Field(False, description="Start (READY=1) even when a source is not connected within sources_ready_timeout_s; it keeps retrying and /health answers 503 until it connects.")


class StateSection(Strict):
    durable_ingest: bool = Field(True, description="Acknowledge an uplink (MQTT PUBACK) only once it is in the ingest log in the state dir (one fsync per received chunk), checkpoint device state and replay the log after a restart. Off: uplinks are acknowledged on arrival and device state lives in memory only.")
    checkpoint_interval_s: float = Field(60.0, ge=0, description="How often per-device state (windows, standardisation, score profiles, alert state, last seen) is checkpointed to <state_dir>/checkpoint.sqlite; 0: only at a clean stop.")
    fsync: bool = Field(True, description="fsync the ingest log per received chunk (off only for benchmarks or disposable test boxes).")
    segment_bytes: int = Field(8 * 1024 * 1024, ge=65536, description="Ingest-log segment size; segments a checkpoint covers are deleted.")
    keep_segments: int = Field(2, ge=1, description="Newest ingest-log segments kept after a checkpoint (the redelivery check reloads their keys at start).")
    dedup_horizon: int = Field(65536, ge=16, description="Uplink ids remembered to drop redelivered duplicates (ChirpStack deduplicationId, else DevEUI+fCnt+payload).")


class PluginsSection(Strict):
    allow: list[str] | None = Field(None, description="Third-party plugins (entry-point names) allowed to load; unset loads all installed, [] loads none.")


class ModelSection(Strict):
    path: Path | None = Field(None, description="Model directory to serve. Unset: the model store's active model, else the bundled base model.")
    providers: list[str] = Field(
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider", "CPUExecutionProvider"],
        description="Execution providers in order of preference; filtered by what onnxruntime offers on this box.",
    )
    intra_op_threads: int = Field(1, ge=1, description="ONNX Runtime intra-op threads (1 plus batching is fastest on small boxes).")
    cuda_tf32: bool = Field(False, description="Let CUDA use TF32 for float32 matrix products (faster on recent GPUs, outputs differ from the CPU by up to about 4e-3). Off: CPU and GPU decide alike. Passed as the CUDA provider option `use_tf32`.")
    adapters: dict[str, Path] = Field(default_factory=dict, description="LoRA adapter name -> `.onnx_adapter` file; device profiles pick one with `adapter`.")
    calibration_steps: int | None = Field(None, ge=8, description="Readings per device whose mean/std standardise its channels (unset: the model manifest's value).")
    calibration_windows: int | None = Field(None, ge=8, description="Windows per device that calibrate its normal score profile before its scores count (unset: the manifest's value).")


class BatcherSection(Strict):
    max_batch: int | Literal["auto"] = Field("auto", description="Most windows in one ONNX Runtime call; \"auto\": the measured batch table's value for the execution provider serving (gateway/pipeline/batch_table.json, `lora-gateway doctor` prints it).")
    max_delay_ms: float | Literal["auto"] = Field("auto", description="Longest a due window waits for others before the batch runs; \"auto\": the batch table's value for the provider serving.")

    @field_validator("max_batch", "max_delay_ms", mode="before")
    @classmethod
    def _auto_or_number(cls, value: Any, info: ValidationInfo) -> Any:
        """One clear error per bad value (not one per member of the union)."""
        if value == "auto":
            return value
        integral = info.field_name == "max_batch"
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (integral and value != int(value)):
            raise ValueError(f"must be \"auto\" or {'an integer' if integral else 'a number'}, got {value!r}")
        if (integral and value < 1) or value < 0:
            raise ValueError(f"must be \"auto\" or {'>= 1' if integral else '>= 0'}, got {value!r}")
        return int(value) if integral else float(value)


class OutboxSection(Strict):
    path: Path | None = Field(None, description="SQLite file of the durable outbox; default <state_dir>/outbox.sqlite.")
    max_bytes: int = Field(64 * 1024 * 1024, ge=65536, description="Disk budget; when full, telemetry is dropped before alerts, every drop counted.")
    replay_rate_per_s: float = Field(50.0, gt=0, description="Most replayed alerts per second per handler after an outage.")


class MetricsSection(Strict):
    listen: str | None = Field("127.0.0.1:9108", description="host:port of the Prometheus metrics and health endpoint; unset disables it. Bound to localhost by default.")


class PluginTable(BaseModel):
    """A [[sources]] or [[handlers]] entry: ``type`` picks the plugin, the rest are its options."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(description="Plugin type name (see `lora-gateway plugins`).")
    name: str | None = Field(None, description="Instance name (defaults to the type).")


class GatewayConfig(Strict):
    gateway: GatewaySection = Field(default_factory=GatewaySection)
    plugins: PluginsSection = Field(default_factory=PluginsSection)
    sources: list[PluginTable] = Field(default_factory=list, description="Where uplinks come from.")
    handlers: list[PluginTable] = Field(default_factory=list, description="Where alerts go.")
    profiles: list[ProfileConfig] = Field(default_factory=list, description="Device profiles: decoder and channel mapping per device group.")
    model: ModelSection = Field(default_factory=ModelSection)
    batcher: BatcherSection = Field(default_factory=BatcherSection)
    alerts: AlertPolicyConfig = Field(default_factory=AlertPolicyConfig)
    outbox: OutboxSection = Field(default_factory=OutboxSection)
    state: StateSection = Field(default_factory=StateSection, description="Durable ingest (ack after the ingest log), checkpoints of device state and the replay after a restart.")
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    record: RecordConfig = Field(default_factory=RecordConfig, description="Recording of accepted readings to disk (`lora-gateway record export` reads it); off by default.")
    commands: CommandsSection = Field(default_factory=CommandsSection, description="MQTT command topic that activates an installed model version in the running daemon (`<topic_prefix>/command/model/activate`, JSON `{\"model\": \"NAME@VERSION\", \"request_id\": ...}`; result on `<topic_prefix>/command/model/result`); off by default. See docs/adapters.md.")
    feedback: FeedbackSection = Field(default_factory=FeedbackSection, description="Operator feedback on alerts: the readings kept around each model alert so a false/confirmed verdict can train the next adapter (`model finetune --feedback STATE_DIR`). See docs/operations.md.")
    status: StatusSection = Field(default_factory=StatusSection, description="The status page beside /metrics: devices, charts, recent alerts with an operator's verdict; read-only unless an operator token is set.")

    # Validated plugin options, filled by validate_config: (type, name, options model instance)
    source_options: list[tuple[str, str, BaseModel]] = Field(default_factory=list, exclude=True)
    handler_options: list[tuple[str, str, BaseModel]] = Field(default_factory=list, exclude=True)


def _loc(parts: tuple[Any, ...]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _message(error: Any) -> str:
    """pydantic's message, in our words where its own would puzzle a reader."""
    if error["type"] == "extra_forbidden":
        return "unknown key"
    return str(error["msg"])


def _errors(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[str]:
    return [f"{_loc(prefix + tuple(e['loc']))}: {_message(e)}" for e in exc.errors()]


def validate_config(data: dict[str, Any], registry: Registry, source: str = "config") -> GatewayConfig:
    """Validate a parsed config dict against the core schema and every plugin's options.

    Raises ConfigError with all problems found (never stops at the first one).
    """
    errors: list[str] = []
    try:
        cfg = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        errors.extend(_errors(exc))
        cfg = None
    if cfg is not None:
        errors.extend(record_config_errors(cfg.record, cfg.profiles))
    for section, kinds in (("sources", registry.sources), ("handlers", registry.handlers)):
        tables = data.get(section, [])
        if not isinstance(tables, list):
            continue
        seen: set[str] = set()
        for i, table in enumerate(tables):
            if not isinstance(table, dict) or "type" not in table:
                continue
            kind = table["type"]
            if kind not in kinds:
                errors.append(f"{section}[{i}].type: unknown {section[:-1]} type {kind!r} (known: {', '.join(sorted(kinds)) or 'none'})")
                continue
            name = str(table.get("name") or kind)
            if name in seen:
                errors.append(f"{section}[{i}].name: duplicate name {name!r}")
            seen.add(name)
            options = {k: v for k, v in table.items() if k not in ("type", "name")}
            try:
                parsed = kinds[kind][1].model_validate(options)
            except ValidationError as exc:
                errors.extend(_errors(exc, (section, i)))
                continue
            if cfg is not None:
                (cfg.source_options if section == "sources" else cfg.handler_options).append((kind, name, parsed))
    if errors:
        raise ConfigError(source, errors)
    assert cfg is not None
    return cfg


def read_config_data(path: Path | None) -> dict[str, Any]:
    """The parsed TOML of ``path`` (None: the embedded defaults, ``{}``); not yet validated.
    Raises ConfigError for a missing or unreadable file."""
    if path is None:
        return {}
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(str(path), ["file not found"]) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from exc


def plugin_allow_list(data: dict[str, Any], source: str = "config") -> list[str] | None:
    """``plugins.allow`` of a parsed config, validated alone: read before any third-party
    plugin is imported, so a plugin that is not allowed never runs its import-time code."""
    section = data.get("plugins", {})
    try:
        return PluginsSection.model_validate(section if isinstance(section, dict) else {}).allow
    except ValidationError as exc:
        raise ConfigError(source, _errors(exc, ("plugins",))) from exc


def load_config(path: Path | None, registry: Registry) -> GatewayConfig:
    """Read and validate a TOML file (None: the embedded defaults). Raises ConfigError."""
    return validate_config(read_config_data(path), registry, "defaults" if path is None else str(path))


def redacted(value: Any) -> Any:
    """A copy of a config value with secret-looking keys replaced by '***'."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: ("***" if SECRET_KEY.search(str(k)) and v not in (None, "") and not str(k).endswith("_env") else redacted(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value
