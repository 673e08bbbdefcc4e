#!/usr/bin/env bash
# Set up .venv and start the dashboard; the first launch builds the demo run (about 25 s on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m streamlit run app.py "$@"
