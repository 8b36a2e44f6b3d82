#!/usr/bin/env bash
# The embedded demo: no servers. Pass a folder of images, or let it generate a few.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/atelier demo "$@"
