#!/usr/bin/env bash
# The test command: install what is needed, make sure the services run, run the suite.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -k media).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/services.sh
bash scripts/tools.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
