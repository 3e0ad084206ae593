"""``[status]``: the status page served beside ``/metrics`` (``gateway.status.page``)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StatusSection(BaseModel):
    """Options of the status page. The page is served on ``[metrics] listen`` (localhost by
    default) and is read-only unless an operator token is configured."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="Serve the status page at / on the metrics endpoint ([metrics] listen): "
                                            "devices, charts of recent readings and scores, recent alerts.")
    operator_token_env: str | None = Field(None, description="Environment variable holding the operator token. With a "
                                                             "token the page shows a 'false alarm / confirmed' control on "
                                                             "each raised alert (stored in <state_dir>/alert-feedback.jsonl); "
                                                             "without one the page is read-only.")
    operator_token_file: Path | None = Field(None, description="File holding the operator token (instead of operator_token_env).")
    history_points: int = Field(720, ge=16, le=100000, description="Readings and scores kept per charted device.")
    chart_devices: int = Field(64, ge=1, le=10000, description="Devices with a chart; a device that raises an alert "
                                                               "takes the place of the longest-silent one without an open alert.")
    reports_dir: Path | None = Field(None, description="Folder of PNG reports (`model eval`/`model score` --report) the page "
                                                       "links; default <state_dir>/reports.")
    refresh_s: int = Field(10, ge=0, le=3600, description="Auto-refresh of the page in seconds; 0 turns it off.")

    @model_validator(mode="after")
    def _one_token_source(self) -> "StatusSection":
        if self.operator_token_env and self.operator_token_file:
            raise ValueError("set operator_token_env or operator_token_file, not both")
        return self


def operator_token(section: StatusSection) -> str | None:
    """The configured operator token, None when none is configured. ValueError (one line)
    when the variable is unset or the file cannot be read or is empty."""
    if section.operator_token_env:
        value = os.environ.get(section.operator_token_env)
        if not value:
            raise ValueError(f"environment variable {section.operator_token_env} (operator_token_env) is not set")
        return value
    if section.operator_token_file:
        try:
            value = section.operator_token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"operator_token_file {section.operator_token_file}: {exc.strerror or exc}") from exc
        if not value:
            raise ValueError(f"operator_token_file {section.operator_token_file} is empty")
        return value
    return None
