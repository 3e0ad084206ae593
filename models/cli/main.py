"""The ``lora-gateway model`` command and its groups of sub-commands.

Each group lives in its own module that defines ``add_model_commands(model_sub) -> None``
(``model_sub`` is the sub-parsers object of ``model``) and gives every parser a
``func(args) -> int`` default:

- ``models.cli.training``: ``pretrain``, ``score``, ``eval`` (base model, scoring, evaluation)
- ``models.cli.store``: ``install``, ``list``, ``activate``, ``rollback``, ``verify``,
  ``remove``, ``finetune``, ``export`` (model store and LoRA adapters)

A group module that fails to import is an error (no group is optional).
Group modules must keep heavy imports (torch) inside their handlers.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

MODEL_COMMAND_MODULES: tuple[str, ...] = (
    "models.cli.training",
    "models.cli.store",
)


def add_commands(subparsers: Any) -> None:
    """Add the ``model`` command and every available group of its sub-commands."""
    model = subparsers.add_parser(
        "model",
        help="base model, LoRA adapters, scoring and evaluation",
        description="Train, score, evaluate, install and switch models and LoRA adapters.",
    )
    model_sub = model.add_subparsers(dest="model_command", metavar="MODEL_COMMAND")

    def _help(args: argparse.Namespace) -> int:
        model.print_help()
        return 2

    model.set_defaults(func=_help)
    for name in MODEL_COMMAND_MODULES:
        importlib.import_module(name).add_model_commands(model_sub)
