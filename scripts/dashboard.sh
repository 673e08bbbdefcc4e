#!/usr/bin/env bash
# Set up .venv and start the dashboard; with no run yet, pages show a progress bar while the demo run is built once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m streamlit run app.py "$@"
