"""Configuration of the reading recorder (``[record]`` in the gateway config).

One pydantic model, unknown keys refused, every field described (the descriptions generate
the config reference). Recording is off by default. ``record_config_errors`` adds the
checks that need the rest of the config (profile names), in ``key.path: message`` form.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.recordings import normalise_device_id

MIB = 1024 * 1024


class RecordConfig(BaseModel):
    """What the recorder writes, where, and how much of it it keeps."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Record every accepted decoded reading to disk (for `lora-gateway record export` and site fine-tuning).")
    dir: Path | None = Field(None, description="Directory of the recording files; default <state_dir>/recordings.")
    devices: list[str] = Field(default_factory=list, description="Device ids to record (DevEUIs in any case/separator); empty records every device.")
    profiles: list[str] = Field(default_factory=list, description="Device profile names to record (`default` for devices no profile matches); empty records every profile. With devices too, a reading must pass both.")
    max_days: int = Field(30, ge=0, description="Keep the files of the last this many UTC days (today included); older files are deleted, oldest first, and counted. 0: no age bound.")
    max_total_bytes: int = Field(1024 * MIB, ge=0, description="Disk budget of the recording directory; past it the oldest files are deleted and counted. 0: no size bound (max_days must then be set).")
    max_file_bytes: int = Field(64 * MIB, ge=65536, description="A day's file is closed and a new part started when it would pass this size; at most max_total_bytes / 2.")
    flush_interval_s: float = Field(1.0, gt=0, le=60, description="Buffered lines reach the file at least this often; a crash loses at most the readings of the last interval (plus those still queued).")
    queue_size: int = Field(20000, ge=100, description="Readings waiting for the writer thread; when full, further readings are dropped and counted (recorder_dropped_total{reason=queue_full}); the pipeline never waits.")

    @field_validator("devices")
    @classmethod
    def _normalise_devices(cls, value: list[str]) -> list[str]:
        return [normalise_device_id(v) for v in value if v.strip()]

    @model_validator(mode="after")
    def _bounded(self) -> RecordConfig:
        if self.max_days == 0 and self.max_total_bytes == 0:
            raise ValueError("set max_days or max_total_bytes (or both): a recording must be bounded")
        if self.max_total_bytes and self.max_file_bytes * 2 > self.max_total_bytes:
            raise ValueError(f"max_file_bytes ({self.max_file_bytes}) must be at most half of "
                             f"max_total_bytes ({self.max_total_bytes})")
        return self


def record_config_errors(record: RecordConfig, profiles: Iterable[Any]) -> list[str]:
    """Checks against the rest of the config: every name in ``record.profiles`` is a profile."""
    known = {p.name for p in profiles} | {"default"}
    return [f"record.profiles: unknown profile {name!r} (known: {', '.join(sorted(known))})"
            for name in record.profiles if name not in known]


def recording_dir(record: RecordConfig, state_dir: Path) -> Path:
    """Where the recording lives: ``record.dir``, else ``<state_dir>/recordings``."""
    return record.dir if record.dir is not None else Path(state_dir) / "recordings"
