"""``python -m gateway.cli``: the same as the ``lora-gateway`` command."""

import sys

from gateway.cli.main import main

sys.exit(main())
