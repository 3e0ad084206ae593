#!/usr/bin/env bash
# Set up everything the tests need and run them: Mosquitto from Debian's packages (the tests
# start their own broker on a free loopback port), gcc for the C codec's host tests, chromium and
# chromium-driver for the status page test, and the
# package with its [train,test] extras in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto mosquitto-clients)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || need_apt+=(python3-venv)
# the status page test drives Debian's chromium through its packaged driver (selenium)
{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || need_apt+=(chromium chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
scripts/setup.sh "train,test"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
