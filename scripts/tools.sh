#!/usr/bin/env bash
# Make sure the tools the tests drive are installed (Debian packages): chromium for the dashboard
# test in a real headless browser, docker-compose to validate compose.yaml. Does nothing when
# they are there.
set -euo pipefail

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v docker-compose >/dev/null || missing+=(docker-compose)
if [ ${#missing[@]} -gt 0 ]; then
  echo "tools: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "tools: chromium and docker-compose are installed" >&2
