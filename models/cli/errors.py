"""The one error type every command line of the project shares.

A ``UserError`` is shown to the user as one line (``error: ...``, exit status 1) without a
traceback. It lives in ``models`` (the lowest layer) so that the gateway's CLI, the model
CLI and any future tool import it from one place without importing each other.
"""


class UserError(Exception):
    """An error to show the user as one line (exit status 1), without a traceback."""


def train_extra_missing(module: str | None) -> str:
    """The one wording for a command that needs the optional ``[train]`` extra."""
    return (f"this command needs the [train] extra ({module or 'a training package'} is missing): "
            "pip install 'lora-edge-gateway[train]' (or scripts/setup.sh train)")
