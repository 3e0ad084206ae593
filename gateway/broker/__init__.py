"""The MQTT broker connection (options, TLS, credentials, one shared connection class)."""
