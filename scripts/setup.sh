#!/usr/bin/env bash
# Create .venv and install the gateway into it. Usage: scripts/setup.sh [EXTRAS]
# EXTRAS is a pip extras list such as "test" or "train,test" (default: none = edge runtime only).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ -n "${1:-}" ]; then
  .venv/bin/python -m pip install -q -e ".[$1]"
else
  .venv/bin/python -m pip install -q -e .
fi
