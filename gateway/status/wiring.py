"""Builds the status page for a running ``Gateway`` (kept here so ``service`` stays small).

``new_tracker(gateway)`` is None when the page is off (``[status] enabled = false``) or
there is no endpoint to serve it on (``[metrics] listen`` unset). ``new_page`` reads the
operator token (ValueError, one line, when one is configured but unreadable) and gives the
page a live view of the serving model: name and version, directory, execution providers,
adapters, and the alert policy's raise threshold (which follows a model switch).
"""

from __future__ import annotations

from typing import Any

from gateway.status.config import operator_token
from gateway.status.page import StatusPage
from gateway.status.tracker import StatusTracker


def new_tracker(gateway: Any) -> StatusTracker | None:
    cfg = gateway.config
    if not cfg.status.enabled or not cfg.metrics.listen:
        return None
    return StatusTracker(history_points=cfg.status.history_points, chart_devices=cfg.status.chart_devices,
                         max_devices=cfg.gateway.max_devices)


def new_page(gateway: Any, tracker: StatusTracker) -> StatusPage:
    cfg = gateway.config
    token = operator_token(cfg.status)
    if gateway.pipeline is not None:
        tracker.calibration_steps = gateway.pipeline.engine.calibration_steps

    def info() -> dict[str, Any]:
        runtime = gateway.runtime
        pipeline = gateway.pipeline
        return {"gateway_id": cfg.gateway.id, "model": gateway.serving_ref() or "?",
                "path": gateway.serving_dir,
                "providers": list(runtime.providers_in_use) if runtime is not None else [],
                "adapters": sorted(runtime.adapter_names) if runtime is not None else [],
                "raise_threshold": pipeline.policy.config.raise_threshold if pipeline is not None else None}

    reports = cfg.status.reports_dir or cfg.gateway.state_dir / "reports"
    return StatusPage(tracker, cfg.gateway.state_dir, info, token=token, reports_dir=reports,
                      refresh_s=cfg.status.refresh_s)
