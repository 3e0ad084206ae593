"""Every ``lora-gateway`` command and sub-command renders its --help (argparse formats help
strings with %-interpolation, so a stray ``%`` only fails when someone asks for help)."""

from __future__ import annotations

import argparse

from gateway.cli import build_parser


def _walk(parser: argparse.ArgumentParser, path: str = "lora-gateway"):  # type: ignore[no-untyped-def]
    yield path, parser
    for action in parser._actions:  # argparse keeps sub-parsers only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")


def test_every_command_renders_its_help() -> None:
    seen = []
    for path, parser in _walk(build_parser()):
        text = parser.format_help()
        assert "usage:" in text, path
        seen.append(path)
    for expected in ("lora-gateway model score", "lora-gateway record export", "lora-gateway model finetune",
                     "lora-gateway run", "lora-gateway demo"):
        assert expected in seen


def test_every_option_and_argument_has_help_text() -> None:
    """A newcomer reads ``--help``: every option and positional of every command says what
    it is for (argparse's own ``-h`` aside)."""
    missing = []
    for path, parser in _walk(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, "options without help text:\n" + "\n".join(missing)


def test_version_option_prints_the_package_version(capsys) -> None:  # type: ignore[no-untyped-def]
    from importlib.metadata import version

    import pytest

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"lora-gateway {version('lora-edge-gateway')}"
