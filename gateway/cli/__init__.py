"""The ``lora-gateway`` command line: ``main`` and ``build_parser`` live in ``gateway.cli.main``."""

from gateway.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
