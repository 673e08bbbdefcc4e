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
# Compile the sampler's and UMAP's code once and cache it on disk (~20 s), so that the first
# demo build and the first run do not wait for it; skipped while the sampler's cache exists.
if ! compgen -G "cellniche_core/__pycache__/sampling_cpu*.nbi" >/dev/null; then
  OMP_NUM_THREADS=1 .venv/bin/python -m cellniche_core.warm || echo "warning: the compile cache was not made" >&2
fi
