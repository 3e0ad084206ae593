"""Built-in payload decoders (``lora_gateway_decode`` hook implementations)."""
