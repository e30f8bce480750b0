#!/usr/bin/env bash
# Install the engine with its test and Slicer-testing extras (CPU torch from this machine's disk), then run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test,slicer]"
python -m pytest -q Testing "$@"
