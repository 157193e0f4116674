#!/usr/bin/env bash
# Install the package with its test extras (skipped when this checkout is already installed with the same
# pyproject.toml) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp="build/.installed-$(sha256sum pyproject.toml | cut -c1-16)-$("$PY" -c 'import sys; print(sys.prefix.replace("/", "_"))')"
here=$("$PY" -c 'import ddim, os; print(os.path.dirname(os.path.dirname(os.path.abspath(ddim.__file__))))' 2>/dev/null || true)
if [[ ! -f "$stamp" || "$here" != "$PWD" ]]; then
    "$PY" -m pip install -q --disable-pip-version-check "${TORCH_SPEC:-torch==2.13.0}"
    "$PY" -m pip install -q --disable-pip-version-check -e ".[test]"
    mkdir -p build && touch "$stamp"
fi
exec "$PY" -m pytest -q "$@"
