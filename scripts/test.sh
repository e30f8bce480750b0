#!/usr/bin/env bash
# Install the engine with its test, Slicer-testing and web extras (CPU torch from this machine's disk), then run pytest.
# The web extra (trame-slicer 2.0) pins slicer-core 5.11; the browser tests also need Debian's chromium (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test,slicer,web]"
python -m pytest -q -n 2 --dist loadfile --durations=25 Testing "$@"
