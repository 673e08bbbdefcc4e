#!/usr/bin/env bash
# Create .venv and install the pinned requirements (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt; then
  echo "error: installing requirements.txt failed (see above)" >&2
  exit 1
fi
