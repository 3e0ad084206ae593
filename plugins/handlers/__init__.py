"""Built-in alert handlers: log, file, mqtt, webhook, homeassistant."""
