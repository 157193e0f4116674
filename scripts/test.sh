#!/usr/bin/env bash
# Install the package with its test extras (fast when already installed) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check "${TORCH_SPEC:-torch==2.13.0}"
"$PY" -m pip install -q --disable-pip-version-check -e ".[test]"
exec "$PY" -m pytest -q "$@"
