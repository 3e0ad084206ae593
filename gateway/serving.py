"""Which model the daemon serves and how it is loaded: the same calls for ``run``,
``doctor`` and a model switch, so ``doctor`` fails exactly where ``run`` would."""

from __future__ import annotations

import logging
from pathlib import Path

from gateway.config import DEFAULT_MODEL_DIR, GatewayConfig
from models.runtime import ModelRuntime

log = logging.getLogger(__name__)


def resolve_model_dir(config: GatewayConfig) -> Path:
    """The configured model dir, else the store's active model, else the bundled base model."""
    if config.model.path is not None:
        return config.model.path
    try:
        from models.store import ModelStore, NoActiveModel

        try:
            return Path(ModelStore.for_state_dir(config.gateway.state_dir).active())
        except NoActiveModel:
            pass
    except Exception as exc:  # noqa: BLE001 - an unusable store falls back to the bundled model, loudly
        log.warning("model store unusable (%s); serving the bundled base model", exc)
    return DEFAULT_MODEL_DIR


def load_model(config: GatewayConfig, model_dir: Path) -> ModelRuntime:
    """The model with its configured adapters, warmed up: what ``run`` serves and what
    ``doctor`` checks (the same call, so doctor fails where run would). ModelLoadError."""
    adapters = {name: Path(p) for name, p in config.model.adapters.items()}
    return ModelRuntime.load(model_dir, config.model.providers, intra_op_threads=config.model.intra_op_threads,
                             adapters=adapters or None, cuda_tf32=config.model.cuda_tf32)
