"""The ``lora-gateway`` command (placeholder entry until the CLI lands)."""

def main() -> int:
    return 0
