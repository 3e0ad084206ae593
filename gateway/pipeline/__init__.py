"""The pipeline thread: ingest queue, per-device windows, batched inference."""
