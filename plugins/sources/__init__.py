"""Built-in sources: MQTT (LoRaWAN network servers) and serial (LoRa radio modules)."""
