"""The serial link to LoRa radio modules: frame codec, AT drivers, port supervision and a
module simulator. Stands alone: imports nothing from gateway, models or plugins."""
