#!/usr/bin/env bash
# Create .venv and install atelier with its dev dependencies. Re-runs only when
# pyproject.toml changed. torch/torchvision wheels come from this machine's local
# wheel cache when it has them (pip takes torch 2.14.1 and torchvision 0.29.1 from local disk on
# the development machines); elsewhere pip downloads them.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($PYTHON --version)" >&2
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing dependencies (first run takes a few minutes)" >&2
  start=$(date +%s)
  .venv/bin/python -m pip install -q --upgrade pip 2> >(grep -v "is ignored: it is neither" >&2)
  .venv/bin/python -m pip install -q -e '.[dev]' 2> >(grep -v "is ignored: it is neither" >&2)
  rm -f .venv/.installed-*
  touch "$stamp"
  echo "bootstrap: installed in $(( $(date +%s) - start ))s" >&2
fi
