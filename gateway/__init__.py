"""lora-edge-gateway: the daemon. Rooms: ingest, pipeline, alerts, recording, broker, control, cli; service.py on top."""

__version__ = "0.1.0"
