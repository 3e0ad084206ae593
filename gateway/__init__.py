"""lora-edge-gateway: the daemon (config, pipeline, windows, inference, alerts, CLI)."""

__version__ = "0.1.0"
