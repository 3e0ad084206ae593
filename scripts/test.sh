#!/usr/bin/env bash
# Set up everything the tests need and run them: Mosquitto and RabbitMQ from Debian's
# packages (the tests start their own brokers on free loopback ports; RabbitMQ's system
# service is kept from starting while it installs), gcc for the C codec's host tests,
# chromium and chromium-driver for the status page test, and the package with its
# [train,test] extras in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto mosquitto-clients)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || need_apt+=(python3-venv)
# the status page test drives Debian's chromium through its packaged driver (selenium)
{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || need_apt+=(chromium chromium-driver)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need_apt+=(rabbitmq-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  # no package may start a system service (rabbitmq-server would): the tests run their own
  no_services=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    no_services=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
  if [ "$no_services" = 1 ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
fi
scripts/setup.sh "train,test"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
