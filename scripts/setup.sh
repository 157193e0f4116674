#!/usr/bin/env bash
# Set up everything on a fresh machine and run the main job: sample the embedded default model.
# TORCH_SPEC picks the PyTorch build (default: the CPU wheel this project's machines carry on disk;
# on a CUDA machine use e.g. TORCH_SPEC="torch>=2.2").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check "${TORCH_SPEC:-torch==2.13.0}"
"$PY" -m pip install -q --disable-pip-version-check -e ".[test]"
# the embedded class-conditional model: a row of 8 per digit, guided, 20 DPM-Solver++ steps
"$PY" -m ddim sample --ckpt digits-cond --class all --n 80 --guidance 2 --solver dpm++2m --skip trailing --steps 20 \
    --out samples --overwrite
echo "Wrote samples/grid.png (a row per digit; and samples/images/*.png, samples/samples.npz)."
