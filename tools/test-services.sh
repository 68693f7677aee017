#!/usr/bin/env bash
# Installs what the tests need from Debian's packages:
# - MariaDB, for the tests of ML Metadata on MySQL (tests/test_metadata_mysql*.py start their own server
#   on 127.0.0.1 in a temporary data directory; the system service is never used or left running);
# - Chromium, the headless browser that opens the release report (tests/test_release.py).
set -euo pipefail
missing=()
if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
  missing+=(mariadb-server mariadb-client)
fi
if ! command -v chromium >/dev/null 2>&1; then
  missing+=(chromium)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "test-services: ${missing[*]} missing and cannot be installed here (needs root and apt-get);" \
       "the MySQL metadata tests and the release report's browser test will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
if [ ! -e /usr/sbin/policy-rc.d ]; then  # keep the package from starting the system service
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
echo "test-services: installed ${missing[*]}"
