"""Ingest: an uplink becomes a Reading (device profiles, decoder plugins, quarantine)."""
