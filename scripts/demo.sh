#!/usr/bin/env bash
# Set up (edge runtime only) and run the demo: a simulated field network on a pseudo-terminal
# through the bundled model; readings and alerts on the console, alerts in demo-out/alerts.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/lora-gateway demo --duration "${DURATION:-45}" --out demo-out "$@"
