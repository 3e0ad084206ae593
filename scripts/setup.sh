#!/usr/bin/env bash
# Create .venv and install the gateway into it. Usage: scripts/setup.sh [EXTRAS]
# EXTRAS is a pip extras list such as "test" or "train,test" (default: none = edge runtime only).
# The install is editable, so code changes need no reinstall: when .venv already holds an
# install from this pyproject.toml with (at least) these extras, pip is not run again
# (the stamp is .venv/.lora-gateway-setup; delete it to force a reinstall).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
EXTRAS="${1:-}"
STAMP=.venv/.lora-gateway-setup
HASH="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -x .venv/bin/python ] && [ -f "$STAMP" ]; then
  read -r old_hash old_extras < "$STAMP" || true
  if [ "$old_hash" = "$HASH" ]; then
    missing=""
    for e in ${EXTRAS//,/ }; do
      case ",${old_extras:-}," in *",$e,"*) ;; *) missing="$missing $e" ;; esac
    done
    [ -z "$missing" ] && exit 0
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ -n "$EXTRAS" ]; then
  .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
else
  .venv/bin/python -m pip install -q -e .
fi
# remember what is installed: the extras asked now plus those a previous install had
all="$EXTRAS"
if [ -f "$STAMP" ]; then
  read -r old_hash old_extras < "$STAMP" || true
  [ "${old_hash:-}" = "$HASH" ] && [ -n "${old_extras:-}" ] && all="${old_extras}${all:+,$all}"
fi
echo "$HASH ${all:-}" > "$STAMP"
